"""Cross-validation runner: every stage of a method on every fold, checkpoints, metrics, KM plot.

Run directory layout::

    RUN_DIR/config.yaml                 method, method config, train config, folds, task
    RUN_DIR/fold_<i>/<stage>.safetensors  trained weights (+ <stage>.json metadata)
    RUN_DIR/fold_<i>/<stage>.state.safetensors  resumable state while a stage trains
    RUN_DIR/fold_<i>/<stage>_inner<k>.safetensors  inner teacher k of a cross-fit stage
    RUN_DIR/fold_<i>/predictions.csv    test predictions of every reported stage
    RUN_DIR/metrics.json                test metrics per fold and their summary
    RUN_DIR/history.json                per-epoch training/validation history
    RUN_DIR/history.png                 training curves (loss, validation metric, memory diagnostics)
    RUN_DIR/km.png                      Kaplan-Meier of the student's pooled test risk (survival)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from histokd_core import __version__
from histokd_core.cancel import CancelToken
from histokd_core.devices import resolve_device
from histokd_core.errors import ConfigError, DataError, HistoKDError, RunDirError
from histokd_core.io import atomic_write_text, to_jsonable
from histokd_core.methods import registry
from histokd_core.methods.base import BagModel
from histokd_core.methods.crossfit import CrossFitTeachers, inner_folds
from histokd_core.train.callbacks import Callback, Progress
from histokd_core.train.checkpoint import (
    load_model_state,
    model_state,
    read_checkpoint,
    save_checkpoint,
)
from histokd_core.train.evaluation import Outputs, predict_bags, score
from histokd_core.train.swap import model_swap_diagnostic, summarize_swaps
from histokd_core.train.plots import plot_history
from histokd_core.train.results import pick_km_model, pooled_km, summarize, write_predictions
from histokd_core.train.trainer import TrainConfig, Trainer, seed_everything, stage_seed

log = logging.getLogger(__name__)

#: train-config fields that may differ when a run is resumed (they do not change the result).
_RESUME_FREE = ("device", "num_threads")


@dataclass
class RunResult:
    """``run_dir`` and the content of its ``metrics.json``."""

    run_dir: Path
    metrics: dict


def read_run_config(run_dir: str | os.PathLike) -> dict:
    """The ``config.yaml`` of a run directory written by :func:`run_cv` (method, method config,
    task, train config, folds); :class:`DataError` when ``run_dir`` holds none."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise DataError(f"{run_dir}: not a run directory (no config.yaml)")
    return yaml.safe_load(path.read_text())


def _run_config(
    method: str, config, task: str, train_config: TrainConfig, folds: list[int]
) -> dict:
    return to_jsonable(
        {
            "method": method,
            "method_config": config,
            "task": task,
            "train_config": train_config,
            "folds": folds,
            "package_version": __version__,
        }
    )


def _same_run(old: dict, new: dict) -> bool:
    def strip(c: dict) -> dict:
        c = dict(c)
        c.pop("package_version", None)
        try:
            c["method"] = registry.method_name(str(c.get("method")))
        except ConfigError:
            pass
        c["train_config"] = {k: v for k, v in c["train_config"].items() if k not in _RESUME_FREE}
        return c

    return strip(old) == strip(new)


def prepare_run_dir(out_dir: Path, run_config: dict, resume: bool) -> None:
    """Create ``out_dir`` or accept it as a resumable run of the same configuration."""
    cfg_path = out_dir / "config.yaml"
    if out_dir.exists() and any(out_dir.iterdir()):
        if not cfg_path.is_file():
            raise RunDirError(
                f"{out_dir} exists and is not a histokd run directory; choose another --out"
            )
        try:
            old = yaml.safe_load(cfg_path.read_text())
        except yaml.YAMLError as exc:
            raise RunDirError(f"{cfg_path}: unreadable ({exc})") from None
        if not isinstance(old, dict) or not _same_run(old, run_config):
            raise RunDirError(
                f"{out_dir} holds a run with another configuration ({cfg_path}); "
                "refusing to overwrite it: choose another --out"
            )
        if not resume:
            raise RunDirError(f"{out_dir} already holds this run; pass --resume to continue it")
        log.info("resuming run in %s", out_dir)
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cfg_path, yaml.safe_dump(run_config, sort_keys=False))


def _stage_meta(method: str, config, stage: str, fold: int, info, train_config) -> dict:
    return {
        "method": method,
        "method_config": config,
        "stage": stage,
        "fold": fold,
        "task": info.task,
        "data_info": info,
        "encoder_id": info.encoder_id,
        "train_config": train_config,
    }


def run_cv(
    method_name: str,
    method_config: Any,
    data,
    out_dir: str | os.PathLike,
    train_config: TrainConfig | None = None,
    folds: Sequence[int] | None = None,
    callbacks: Sequence[Callback] = (),
    *,
    cancel: CancelToken | threading.Event | Callable[[], bool] | None = None,
    resume: bool = False,
    swap_diagnostic: bool = False,
) -> RunResult:
    """Cross-validate a method: for each fold, train its stages in order and test the reported ones.

    Parameters
    ----------
    method_name : a name in :mod:`histokd_core.methods.registry` (``amkd``, ``momkd``,
        ``subspace``, ``baselines``).
    method_config : the method's ``Config`` or a dict of its fields (None = defaults).
    data : a ``CohortData``-like object: ``fold(i) -> FoldData(train, val, test, info)`` and
        ``n_folds``.
    out_dir : run directory (created; an existing one must be this run and ``resume`` set).
    train_config : :class:`TrainConfig` (defaults when None).
    folds : fold indices to run (default all).
    callbacks, cancel : as :meth:`Trainer.fit`; cancelling keeps finished stages and the last
        epoch state, so ``resume=True`` continues where it stopped.
    swap_diagnostic : run :func:`~histokd_core.train.swap.model_swap_diagnostic` on the test cases
        for every trained stage with ``distillation_targets`` (the teachers) and write it into
        ``metrics.json`` (``folds[i]["swap"][stage][target]`` and ``"swap"`` means over folds).
        A cross-fit stage (:class:`~histokd_core.methods.crossfit.CrossFitTeachers`) trains its
        inner teachers here, each without one inner fold of the training cases.

    Returns
    -------
    :class:`RunResult` with the ``metrics.json`` content.
    """
    train_config = train_config or TrainConfig()
    token = CancelToken.of(cancel)
    method_name = registry.method_name(method_name)
    config = registry.make_config(method_name, method_config)
    stage_list = registry.method_stages(method_name, config)
    folds = list(range(int(data.n_folds))) if folds is None else [int(f) for f in folds]
    if not folds:
        raise ConfigError("no folds to run")
    first = data.fold(folds[0])
    task = registry.check_task(method_name, first.info.task)
    out_dir = Path(out_dir)
    prepare_run_dir(out_dir, _run_config(method_name, config, task, train_config, folds), resume)
    device = resolve_device(train_config.device)

    fold_entries: list[dict] = []
    history: dict[str, dict[str, list]] = {}
    km_outputs: list[Outputs] = []
    km_name = None
    trainer = Trainer()
    for fold_no, fold in enumerate(folds):
        fd = first if fold_no == 0 else data.fold(fold)
        fold_dir = out_dir / f"fold_{fold}"
        fold_dir.mkdir(exist_ok=True)
        for cb in callbacks:
            cb.on_fold_start(fold, len(folds))
        trained: dict[str, BagModel] = {}
        test: dict[str, dict[str, float]] = {}
        outputs: dict[str, Outputs] = {}
        history[f"fold_{fold}"] = {}
        for stage_no, stage in enumerate(stage_list):
            missing = [r for r in stage.requires if r not in trained]
            if missing:
                raise HistoKDError(
                    f"stage {stage.name!r} requires {missing}, not trained before it"
                )
            # initial weights depend only on (seed, fold, stage stream), not on the stages before:
            # a resumed run rebuilds them alike, and adding a stage leaves the others unchanged
            seed_everything(stage_seed(train_config.seed, fold, stage.stream))
            model = stage.build(fd.info, dict(trained))
            stage_config = model.train_config(train_config)
            meta = _stage_meta(method_name, config, stage.name, fold, fd.info, stage_config)
            final = fold_dir / f"{stage.name}.safetensors"
            state = fold_dir / f"{stage.name}.state.safetensors"
            if isinstance(model, CrossFitTeachers):
                history[f"fold_{fold}"][stage.name] = _fit_inner_teachers(
                    trainer, model, fd, fold, fold_dir, stage.name, meta, train_config, callbacks,
                    token, device, task,
                )
            elif final.exists():
                tensors, done = read_checkpoint(final)
                load_model_state(model, tensors, str(final))
                model.to(device)
                history[f"fold_{fold}"][stage.name] = done.get("history", [])
                log.info("fold %d %s: already trained (%s)", fold, stage.name, final)
            else:
                progress = Progress(
                    stage=stage.name,
                    epoch=0,
                    n_epochs=stage_config.epochs,
                    fold=fold,
                    n_folds=len(folds),
                    stage_index=stage_no,
                    n_stages=len(stage_list),
                    fold_index=fold_no,
                )
                result = trainer.fit(
                    model,
                    fd.train,
                    fd.val,
                    stage_config,
                    callbacks,
                    cancel=token,
                    state_path=state,
                    state_meta=meta,
                    progress=progress,
                )
                history[f"fold_{fold}"][stage.name] = result.history
                save_checkpoint(
                    final,
                    model_state(model),
                    {
                        **meta,
                        "kind": "model",
                        "epoch": result.best_epoch,
                        "epochs_run": result.epochs_run,
                        "best_score": result.best_score,
                        "monitor": result.monitor,
                        "history": result.history,
                    },
                )
                state.unlink(missing_ok=True)
                state.with_suffix(".json").unlink(missing_ok=True)
            model.eval()
            model.requires_grad_(False)
            trained[stage.name] = model
            if stage.report:
                token.check(f"fold {fold} testing {stage.name}")
                outputs[stage.name] = predict_bags(model, fd.test, device)
                test[stage.name] = score(outputs[stage.name], task)
        if outputs:
            write_predictions(fold_dir / "predictions.csv", outputs, task)
        if task == "survival":
            km_name = pick_km_model(list(outputs), {n: trained[n].needs_omics for n in outputs})
            if km_name is not None:
                km_outputs.append(outputs[km_name])
        entry = {"fold": fold, "test": test}
        if swap_diagnostic:
            entry["swap"] = {
                name: {
                    k: dataclasses.asdict(v) for k, v in model_swap_diagnostic(m, fd.test).items()
                }
                for name, m in trained.items()
                if hasattr(m, "distillation_targets")
            }
        fold_entries.append(entry)
        for cb in callbacks:
            cb.on_fold_end(fold, test)

    metrics = {
        "method": method_name,
        "task": task,
        "folds": fold_entries,
        "summary": summarize(task, fold_entries),
        "data_warnings": list(getattr(data, "warnings", [])),
    }
    if swap_diagnostic:
        metrics["swap"] = summarize_swaps([f["swap"] for f in fold_entries])
    metrics = to_jsonable(metrics)
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    history = to_jsonable(history)
    atomic_write_text(out_dir / "history.json", json.dumps(history, indent=1) + "\n")
    plot_history(history, out_dir / "history.png")
    if km_outputs:
        p = pooled_km(km_outputs, out_dir / "km.png", f"{method_name} {km_name}: pooled test folds")
        log.info("KM plot written (%s, log-rank p = %.3g)", km_name, p)
    return RunResult(out_dir, metrics)


def _fit_inner_teachers(
    trainer: Trainer,
    model: CrossFitTeachers,
    fd,
    fold: int,
    fold_dir: Path,
    name: str,
    meta: dict,
    train_config: TrainConfig,
    callbacks: Sequence[Callback],
    token: CancelToken,
    device,
    task: str,
) -> list[dict]:
    """Train (or load) the inner teachers of a cross-fit stage: inner teacher ``k`` on the
    fold's training cases outside inner fold ``k`` (:func:`~histokd_core.methods.crossfit.
    inner_folds`, seeded by the train seed and fold), validated on the fold's validation cases;
    each saved as ``<name>_inner<k>.safetensors`` (resumable). Sets ``model.held_out``; returns
    the inner histories (one list, ``inner`` added to each epoch)."""
    held_out = inner_folds(fd.train, model.k, train_config.seed + 1000 * fold, task)
    model.held_out = held_out
    history: list[dict] = []
    for k, teacher in enumerate(model.teachers):
        final = fold_dir / f"{name}_inner{k}.safetensors"
        state = fold_dir / f"{name}_inner{k}.state.safetensors"
        inner_meta = {**meta, "inner_fold": k, "inner_cases": sorted(
            c for c, f in held_out.items() if f == k
        )}
        if final.exists():
            tensors, done = read_checkpoint(final)
            if sorted(done.get("inner_cases", [])) != inner_meta["inner_cases"]:
                raise RunDirError(
                    f"{final}: written for other inner-fold cases; remove it to retrain"
                )
            load_model_state(teacher, tensors, str(final))
            teacher.to(device)
            hist = done.get("history", [])
        else:
            train = [b for b in fd.train if held_out[b.case_id] != k]
            progress = Progress(stage=f"{name}[{k}]", epoch=0, n_epochs=train_config.epochs,
                                fold=fold)
            result = trainer.fit(
                teacher, train, fd.val, train_config, callbacks, cancel=token,
                state_path=state, state_meta=inner_meta, progress=progress,
            )
            hist = result.history
            save_checkpoint(final, model_state(teacher), {
                **inner_meta, "kind": "model", "epoch": result.best_epoch,
                "best_score": result.best_score, "monitor": result.monitor, "history": hist,
            })
            state.unlink(missing_ok=True)
            state.with_suffix(".json").unlink(missing_ok=True)
        teacher.eval().requires_grad_(False)
        history.extend({**h, "inner": float(k)} for h in hist)
    return history
