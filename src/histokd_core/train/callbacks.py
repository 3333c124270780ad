"""Training callbacks: progress reporting and early stopping (cancellation: :mod:`histokd_core.cancel`).

The trainer reports through :class:`Callback` methods (and ``logging``), never by printing, so a
GUI thread worker can forward the events as signals.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from histokd_core.progress import ProgressEvent, ProgressFn

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Where training is. ``epoch`` and ``step`` are 1-based; ``fold`` is the fold's index (None
    outside cross-validation), ``fold_index`` its 0-based position among the ``n_folds`` folds of
    this run, ``stage_index`` the stage's 0-based position among the method's ``n_stages``."""

    stage: str
    epoch: int
    n_epochs: int
    step: int = 0
    n_steps: int = 0
    fold: int | None = None
    n_folds: int | None = None
    stage_index: int = 0
    n_stages: int = 1
    fold_index: int = 0

    def fraction(self, stage_done: bool = False) -> float:
        """How much of the whole run is done, 0..1: folds, then stages within a fold, then epochs
        and steps within a stage (a stage that stops early jumps to its end)."""
        if stage_done:
            within = 1.0
        else:
            steps = self.step / self.n_steps if self.n_steps else 0.0
            within = (max(self.epoch - 1, 0) + steps) / max(self.n_epochs, 1)
        stage = (self.stage_index + min(within, 1.0)) / max(self.n_stages, 1)
        return min((self.fold_index + stage) / max(self.n_folds or 1, 1), 1.0)

    def where(self) -> str:
        """``"fold 2 student epoch 3/100"`` (no fold outside cross-validation)."""
        fold = f"fold {self.fold} " if self.fold is not None else ""
        return f"{fold}{self.stage} epoch {self.epoch}/{self.n_epochs}"


class Callback:
    """Receives training events; override what you need (every method is a no-op)."""

    def on_fold_start(self, fold: int, n_folds: int) -> None: ...

    def on_stage_start(self, progress: Progress) -> None: ...

    def on_step(self, progress: Progress, logs: dict[str, float]) -> None:
        """After every optimisation micro-step; ``logs`` holds the loss terms (floats)."""

    def on_epoch_end(self, progress: Progress, metrics: dict[str, float]) -> None:
        """After each epoch; ``metrics`` holds mean training terms (``train_*``) and validation
        metrics (``val_*``)."""

    def on_stage_end(self, progress: Progress, result) -> None: ...

    def on_fold_end(self, fold: int, test_metrics: dict[str, dict[str, float]]) -> None: ...


class LoggingCallback(Callback):
    """Logs one line per epoch and per stage at INFO level."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or log

    def on_epoch_end(self, progress: Progress, metrics: dict[str, float]) -> None:
        text = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))
        self.log.info("%s %s", progress.where(), text)

    def on_stage_end(self, progress: Progress, result) -> None:
        self.log.info(
            "%s done: best epoch %s, validation %s = %.4g",
            progress.stage,
            result.best_epoch,
            result.monitor,
            result.best_score,
        )


class ProgressCallback(Callback):
    """Trainer events as :class:`~histokd_core.progress.ProgressEvent` s for ``progress``.

    Steps are reported at most every ``every_s`` seconds; every epoch, stage and fold end is
    reported. ``fraction`` is :meth:`Progress.fraction` (the whole run)."""

    def __init__(self, progress: ProgressFn, every_s: float = 0.1) -> None:
        self.progress = progress
        self.every_s = every_s
        self._last_step = -float("inf")
        self._folds_started = 0
        self._n_folds = 1

    def _event(self, kind, p: Progress, message: str, metrics: dict, done: bool = False) -> None:
        self.progress(ProgressEvent(
            kind, p.fraction(stage_done=done), message, stage=p.stage, fold=p.fold,
            n_folds=p.n_folds, epoch=p.epoch, n_epochs=p.n_epochs, step=p.step,
            n_steps=p.n_steps, metrics={k: float(v) for k, v in metrics.items()},
        ))

    def on_step(self, progress: Progress, logs: dict[str, float]) -> None:
        now = time.monotonic()
        if now - self._last_step >= self.every_s:
            self._last_step = now
            self._event("step", progress, progress.where(), logs)

    def on_epoch_end(self, progress: Progress, metrics: dict[str, float]) -> None:
        floats = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        self._event("epoch", progress, progress.where(), floats)

    def on_stage_end(self, progress: Progress, result) -> None:
        self._event("stage", progress, f"{progress.where()}: done", {
            "best_epoch": result.best_epoch, "best_score": result.best_score}, done=True)

    def on_fold_start(self, fold: int, n_folds: int) -> None:
        self._folds_started += 1
        self._n_folds = max(int(n_folds), 1)

    def on_fold_end(self, fold: int, test_metrics: dict[str, dict[str, float]]) -> None:
        metrics = {f"{m}/{k}": v for m, vals in test_metrics.items() for k, v in vals.items()}
        self.progress(ProgressEvent(
            "fold", min(self._folds_started / self._n_folds, 1.0), f"fold {fold} tested",
            fold=fold, n_folds=self._n_folds, metrics=metrics,
        ))


class EarlyStopping:
    """Stop when the monitored score (higher is better) has not improved by more than
    ``min_delta`` for ``patience`` epochs; epochs before ``min_epochs`` never stop training."""

    def __init__(self, patience: int = 10, min_delta: float = 0.0, min_epochs: int = 0) -> None:
        self.patience = patience
        self.min_delta = min_delta
        self.min_epochs = min_epochs
        self.best_score = -math.inf
        self.best_epoch = 0
        self.bad_epochs = 0

    def update(self, epoch: int, score: float) -> bool:
        """Record the score of ``epoch``; returns True when it is the best so far."""
        if score > self.best_score + self.min_delta or self.best_epoch == 0:
            self.best_score = score
            self.best_epoch = epoch
            self.bad_epochs = 0
            return True
        self.bad_epochs += 1
        return False

    def should_stop(self, epoch: int) -> bool:
        return epoch >= self.min_epochs and self.bad_epochs >= self.patience

    def state(self) -> dict[str, float]:
        return {
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
        }

    def load_state(self, state: dict) -> None:
        self.best_score = float(state["best_score"])
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
