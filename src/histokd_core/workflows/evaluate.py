"""Evaluate a run on an external cohort: every fold's slide-only models, and their fold ensemble."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from histokd_core.cancel import CancelToken
from histokd_core.errors import DataError
from histokd_core.progress import ProgressFn, report

log = logging.getLogger(__name__)


def evaluate_run(
    run: str | os.PathLike,
    cohort: str | os.PathLike,
    features: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    label_column: str | None = None,
    models: Sequence[str] | None = None,
    device: str = "auto",
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    cancel: CancelToken | threading.Event | Callable[[], bool] | None = None,
) -> dict:
    """Score an external cohort with a run's trained slide-only models (no omics, no fine-tuning).

    Every fold's checkpoint of every slide-only reported stage predicts every case of ``cohort``;
    features made with another stain normalisation than the checkpoint's are refused
    (:func:`~histokd_core.workflows.inference.check_provenance`).
    Writes ``out/metrics.json`` (per fold, their summary, and the fold ensemble: the mean of
    per-fold rank-normalised risks, or of class probabilities), ``out/predictions.csv`` (the
    ensemble's score per case) and, for survival, ``out/km.png`` of the ensemble's median split.

    Parameters
    ----------
    run : run directory written by ``histokd train``.
    cohort, features : the external cohort table and its features.
    out : output folder (default ``run/external_<cohort file stem>``).
    label_column : classification label column (default ``label``).
    models : stages to evaluate (default every slide-only one).
    device : ``"auto"``, ``"cpu"``, ``"cuda"``.
    overwrite : replace an earlier evaluation in ``out``.

    Returns
    -------
    The content of ``metrics.json``.
    """
    from histokd_core.train.cv import read_run_config

    from histokd_core.cohort import check_evaluable, load_cohort
    from histokd_core.dataset import CohortData
    from histokd_core.devices import resolve_device
    from histokd_core.io import check_writable, write_json
    from histokd_core.survival.km import km_logrank, plot_km
    from histokd_core.train import load_model, predict_bags, score
    from histokd_core.train.results import ensemble_outputs, summarize, write_predictions
    from histokd_core.workflows.inference import check_provenance

    run, cohort = Path(run), Path(cohort)
    token = CancelToken.of(cancel)
    run_cfg = read_run_config(run)
    task = run_cfg["task"]
    out_dir = Path(out) if out is not None else run / f"external_{cohort.stem}"
    check_writable(out_dir / "metrics.json", overwrite=overwrite)
    external = load_cohort(cohort, task=task, label_column=label_column)
    check_evaluable(external, None)
    data = CohortData(external, features, n_folds=2, seed=0)
    fold0 = data.fold(0)
    bags = fold0.train + fold0.val + fold0.test
    dev = resolve_device(device)
    wanted = None if models is None else set(models)

    folds: list[dict] = []
    per_model: dict = {}
    for i, fold in enumerate(run_cfg["folds"]):
        fold_dir = run / f"fold_{fold}"
        test: dict[str, dict[str, float]] = {}
        for ckpt in sorted(fold_dir.glob("*.safetensors")):
            if ckpt.name.endswith(".state.safetensors"):
                continue
            stage = ckpt.name[: -len(".safetensors")]
            if wanted is not None and stage not in wanted:
                continue
            token.check(f"evaluation of {ckpt}")
            report(progress, i / len(run_cfg["folds"]), f"fold {fold}: {stage}")
            model, meta = load_model(ckpt, dev)
            ckpt_task = meta.get("task", model.task)
            if ckpt_task != task or meta.get("method", run_cfg["method"]) != run_cfg["method"]:
                raise DataError(
                    f"{ckpt}: a {ckpt_task} checkpoint of method {meta.get('method')!r} inside "
                    f"a {task} run of method {run_cfg['method']!r} ({run / 'config.yaml'}); it belongs to "
                    "another run: move it out of the run folder, or pick stages with --models")
            if model.needs_omics:
                continue
            if int(meta["data_info"]["feat_dim"]) != data.feat_dim:
                raise DataError(
                    f"{features}: features have d = {data.feat_dim}, {ckpt} expects "
                    f"d = {meta['data_info']['feat_dim']} (encoder {meta.get('encoder_id')})"
                )
            check_provenance(data.stain, data.preprocessing, meta, features, ckpt)
            outputs = predict_bags(model, bags, dev)
            test[stage] = score(outputs, task)
            per_model.setdefault(stage, []).append(outputs)
        if test:
            folds.append({"fold": fold, "test": test})
    if not per_model:
        raise DataError(f"{run}: no trained slide-only model checkpoints found")

    ensembles = {stage: ensemble_outputs(outs, task) for stage, outs in per_model.items()}
    metrics = {
        "method": run_cfg["method"],
        "task": task,
        "cohort": str(cohort),
        "folds": folds,
        "summary": summarize(task, folds),
        "ensemble": {stage: score(ens, task) for stage, ens in ensembles.items()},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "metrics.json", metrics)
    write_predictions(out_dir / "predictions.csv", ensembles, task, value_column="score")
    if task == "survival":
        km_name = "student" if "student" in ensembles else next(iter(ensembles))
        ens = ensembles[km_name]
        km = km_logrank(ens.time, ens.event, ens.risk)
        plot_km(km, out_dir / "km.png", title=f"{cohort.stem}: {km_name} (fold ensemble)")
    report(progress, 1.0, f"external evaluation written to {out_dir}")
    log.info("external evaluation written to %s", out_dir)
    return metrics
