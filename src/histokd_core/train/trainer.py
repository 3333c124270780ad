"""The trainer every method uses: mini-batches of bags, gradient accumulation, Adam, early stopping
and model selection on the validation task loss (Cox NLL / discrete-time NLL / cross-entropy; by
default) or the validation C-index / AUC, callbacks, cancellation, resumable atomic checkpoints.
Library code: reports through callbacks and ``logging`` only.
"""

from __future__ import annotations

import logging
import math
import os
import random
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from histokd_core.bag import Bag
from histokd_core.cancel import CancelToken
from histokd_core.devices import resolve_device
from histokd_core.errors import ConfigError, TrainingError
from histokd_core.methods.base import BagModel
from histokd_core.train.callbacks import Callback, EarlyStopping, Progress
from histokd_core.train.checkpoint import (
    frozen_prefixes,
    load_model_state,
    load_optimizer_tensors,
    model_state,
    optimizer_tensors,
    read_checkpoint,
    save_checkpoint,
)
from histokd_core.train.evaluation import predict_bags, score, task_loss

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Optimisation settings shared by every stage.

    Attributes
    ----------
    epochs : maximum epochs (100).
    batch_size : cases per loss call; None = 16 for survival (the Cox partial likelihood needs
        several cases) and 1 for classification.
    grad_accum : loss calls (micro-batches) accumulated per optimizer step.
    lr, weight_decay : Adam (5e-5, 1e-5; DESIGN.md).
    patience : epochs without validation improvement before stopping; min_epochs : never stop
        before this epoch.
    grad_clip : max gradient norm, or None.
    seed : seeds Python, numpy and torch; epoch ``e`` shuffles and draws dropout from
        ``seed + e``, so a resumed run repeats an uninterrupted one.
    device : "auto" (CUDA when present, else CPU), "cpu", "cuda", "cuda:1", "mps".
    num_threads : cap on torch CPU threads (None = torch's default).
    monitor : what early stopping and the choice of the kept epoch follow on the validation set:
        ``"loss"`` (default), the task's loss over all validation cases at once
        (:func:`~histokd_core.train.evaluation.task_loss`: Cox NLL, discrete-time NLL or
        cross-entropy; never distillation terms), or ``"metric"``, the C-index (survival) / AUC
        (classification). With ~24 validation cases the C-index's standard error (~0.07) exceeds
        the effects being selected for; the loss uses every risk value, not only their order.
    """

    epochs: int = 100
    batch_size: int | None = None
    grad_accum: int = 1
    lr: float = 5e-5
    weight_decay: float = 1e-5
    patience: int = 10
    min_epochs: int = 0
    grad_clip: float | None = None
    seed: int = 0
    device: str = "auto"
    num_threads: int | None = None
    monitor: str = "loss"

    def __post_init__(self) -> None:
        if self.monitor not in ("loss", "metric"):
            raise ConfigError(f"monitor must be 'loss' or 'metric', got {self.monitor!r}")
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.grad_accum < 1:
            raise ConfigError(f"grad_accum must be >= 1, got {self.grad_accum}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")

    def cases_per_batch(self, task: str) -> int:
        if self.batch_size is not None:
            return self.batch_size
        return 16 if task == "survival" else 1


@dataclass
class FitResult:
    """What :meth:`Trainer.fit` did: best epoch and validation score (``monitor``), epochs run,
    whether early stopping ended it, per-epoch history (list of metric dicts)."""

    best_epoch: int
    best_score: float
    monitor: str
    epochs_run: int
    stopped_early: bool
    history: list[dict[str, float]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def stage_seed(seed: int, fold: int, stream: str) -> int:
    """Seed of one stage's random stream in one fold: a function of the run's seed, the fold and
    the stream's name only (CRC-32 of the name, so it is the same in every Python process)."""
    return (seed * 1_000_003 + fold * 10_007 + zlib.crc32(stream.encode())) % 2**31


def make_batches(n: int, batch_size: int, generator: torch.Generator, task: str) -> list[list[int]]:
    """Shuffled index batches; for survival a last batch of a single case (no Cox pair) is merged
    into the previous one."""
    order = torch.randperm(n, generator=generator).tolist()
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if task == "survival" and len(batches) > 1 and len(batches[-1]) < 2:
        batches[-2].extend(batches.pop())
    return batches


class Trainer:
    """Fits one :class:`BagModel`. Stateless between fits: all settings come with :meth:`fit`."""

    def fit(
        self,
        model: BagModel,
        train_bags: Sequence[Bag],
        val_bags: Sequence[Bag],
        config: TrainConfig | None = None,
        callbacks: Sequence[Callback] = (),
        *,
        cancel: threading.Event | Callable[[], bool] | CancelToken | None = None,
        state_path: str | os.PathLike | None = None,
        state_meta: dict | None = None,
        progress: Progress | None = None,
    ) -> FitResult:
        """Train ``model`` on ``train_bags``; keep the weights of the best validation epoch.

        Parameters
        ----------
        model : a fresh model (or one being resumed); frozen BagModel submodules (a teacher) stay
            in eval mode and out of the optimizer.
        train_bags, val_bags : cases; ``val_bags`` may be empty (then the last epoch is kept).
        config : :class:`TrainConfig` (defaults when None).
        callbacks : :class:`Callback` s receiving progress and metrics.
        cancel : Event / callable checked before every step; raises
            :class:`~histokd_core.errors.Cancelled`, keeping the last checkpoint.
        state_path : where the resumable training state is written after every epoch
            (``.safetensors``, atomic); when the file exists the fit resumes from it.
        state_meta : extra JSON metadata for the state file (method, stage, config ...).
        progress : fold/stage to report (a stage "model" outside cross-validation).

        Returns
        -------
        :class:`FitResult`; ``model`` holds the best weights, in eval mode, on the device.

        Notes
        -----
        Optional model hooks: ``prepare(train_bags, seed=...)`` runs once before training (not on
        resume); ``set_epoch(epoch)`` (0-based) before each training epoch; ``after_backward(batch)``
        after the backward pass(es) and before each optimizer step (gradient surgery);
        ``epoch_end() -> dict[str, float]`` after each training epoch, its values join the epoch's
        metrics and history.
        """
        config = config or TrainConfig()
        token = CancelToken.of(cancel)
        if not train_bags:
            raise TrainingError("no training cases")
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        device = resolve_device(config.device)
        task = model.task
        metric = "c_index" if task == "survival" else "auc"
        monitor = "loss" if config.monitor == "loss" else metric
        bsz = config.cases_per_batch(task)
        progress = progress or Progress(stage="model", epoch=0, n_epochs=config.epochs)
        progress.n_epochs = config.epochs

        seed_everything(config.seed)
        model.to(device)
        state_path = Path(state_path) if state_path is not None else None
        resuming = state_path is not None and state_path.exists()
        if not resuming and hasattr(model, "prepare"):
            # once per fit, before the optimizer sees the parameters (e.g. k-means memory init)
            model.prepare(train_bags, seed=config.seed)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = (
            torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
            if params
            else None
        )
        stopper = EarlyStopping(config.patience, min_epochs=config.min_epochs)
        history: list[dict[str, float]] = []
        best_state = model_state(model)
        start_epoch = 1
        if resuming:
            start_epoch, history, best_state = self._resume(model, optimizer, stopper, state_path)
            log.info("resuming %s from epoch %d (%s)", progress.stage, start_epoch, state_path)
        for cb in callbacks:
            cb.on_stage_start(progress)

        n_batches = math.ceil(len(train_bags) / bsz)
        stopped_early = False
        epoch = start_epoch - 1
        warned = False
        for epoch in range(start_epoch, config.epochs + 1):
            if history and stopper.should_stop(epoch - 1):
                stopped_early = True
                epoch -= 1
                break
            progress.epoch = epoch
            seed_everything(config.seed + epoch)
            gen = torch.Generator().manual_seed(config.seed + epoch)
            batches = make_batches(len(train_bags), bsz, gen, task)
            progress.n_steps = len(batches) or n_batches
            sums: dict[str, float] = {}
            self._train_mode(model)
            if hasattr(model, "set_epoch"):
                model.set_epoch(epoch - 1)
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
            for step, idx in enumerate(batches, start=1):
                token.check(f"{progress.stage} epoch {epoch} step {step}")
                progress.step = step
                batch = [train_bags[i].to(device) for i in idx]
                out = model.loss(batch)
                loss = out["loss"]
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"{progress.stage}: loss is {float(loss)} at epoch {epoch} step {step}; "
                        "lower the learning rate or check the inputs"
                    )
                if loss.requires_grad:
                    (loss / config.grad_accum).backward()
                if optimizer is not None and (
                    step % config.grad_accum == 0 or step == len(batches)
                ):
                    if hasattr(model, "after_backward"):
                        model.after_backward(batch)
                    if config.grad_clip:
                        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                logs = {
                    k: float(v.detach())
                    for k, v in out.items()
                    if torch.is_tensor(v) and v.numel() == 1
                }
                for k, v in logs.items():
                    sums[k] = sums.get(k, 0.0) + v
                for cb in callbacks:
                    cb.on_step(progress, logs)
            metrics = {f"train_{k}": v / max(len(batches), 1) for k, v in sums.items()}
            if hasattr(model, "epoch_end"):
                metrics.update({k: float(v) for k, v in model.epoch_end().items()})
            if val_bags:
                val_out = predict_bags(model, val_bags, device)
                metrics.update({f"val_{k}": v for k, v in score(val_out, task).items()})
                metrics["val_loss"] = task_loss(val_out, task)
            value = metrics.get(f"val_{monitor}", math.nan)
            if monitor == "loss":
                value = -value
            if not math.isfinite(value):
                if val_bags and not warned:
                    log.warning(
                        "%s: validation %s undefined (too few events/classes); monitoring the "
                        "training loss instead",
                        progress.stage,
                        monitor,
                    )
                    warned = True
                value = -metrics.get("train_loss", 0.0) if val_bags else float(epoch)
            metrics["epoch"] = float(epoch)
            history.append(metrics)
            if stopper.update(epoch, value):
                best_state = model_state(model)
            if state_path is not None:
                self._save_state(
                    model, optimizer, stopper, history, best_state, epoch, state_path, state_meta
                )
            for cb in callbacks:
                cb.on_epoch_end(progress, metrics)
        load_model_state(model, best_state, "best epoch weights")
        model.eval()
        result = FitResult(
            best_epoch=stopper.best_epoch,
            best_score=stopper.best_score,
            monitor=f"val_{monitor}",
            epochs_run=epoch,
            stopped_early=stopped_early,
            history=history,
        )
        for cb in callbacks:
            cb.on_stage_end(progress, result)
        return result

    @staticmethod
    def _train_mode(model: BagModel) -> None:
        model.train()
        for prefix in frozen_prefixes(model):
            model.get_submodule(prefix[:-1]).eval()

    @staticmethod
    def _save_state(model, optimizer, stopper, history, best_state, epoch, path, meta) -> None:
        tensors = {f"model.{k}": v for k, v in model_state(model).items()}
        tensors.update({f"best.{k}": v for k, v in best_state.items()})
        optim_json = None
        if optimizer is not None:
            opt_tensors, optim_json = optimizer_tensors(optimizer)
            tensors.update({f"optim.{k}": v for k, v in opt_tensors.items()})
        state = {
            **(meta or {}),
            "kind": "train_state",
            "epoch": epoch,
            "history": history,
            "early_stopping": stopper.state(),
            "optimizer": optim_json,
        }
        save_checkpoint(path, tensors, state)

    @staticmethod
    def _resume(model, optimizer, stopper, path) -> tuple[int, list, dict]:
        tensors, meta = read_checkpoint(path)
        if meta.get("kind") != "train_state":
            raise TrainingError(f"{path}: not a training-state checkpoint")
        groups: dict[str, dict[str, torch.Tensor]] = {"model": {}, "best": {}, "optim": {}}
        for key, value in tensors.items():
            head, rest = key.split(".", 1)
            groups[head][rest] = value
        load_model_state(model, groups["model"], str(path))
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        if optimizer is not None and meta.get("optimizer"):
            opt = {
                k: v.to(device) if k.endswith(("exp_avg", "exp_avg_sq")) else v
                for k, v in groups["optim"].items()
            }
            load_optimizer_tensors(optimizer, opt, meta["optimizer"])
        es = meta["early_stopping"]
        es["best_score"] = -math.inf if es["best_score"] is None else es["best_score"]
        stopper.load_state(es)
        return int(meta["epoch"]) + 1, list(meta["history"]), groups["best"]
