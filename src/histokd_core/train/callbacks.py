"""Training callbacks: progress reporting and early stopping (cancellation: :mod:`histokd_core.cancel`).

The trainer reports through :class:`Callback` methods (and ``logging``), never by printing, so a
GUI thread worker can forward the events as signals.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Where training is. Counts are 1-based; ``fold`` is None outside cross-validation."""

    stage: str
    epoch: int
    n_epochs: int
    step: int = 0
    n_steps: int = 0
    fold: int | None = None
    n_folds: int | None = None


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
        where = f"fold {progress.fold} " if progress.fold is not None else ""
        text = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))
        self.log.info(
            "%s%s epoch %d/%d %s", where, progress.stage, progress.epoch, progress.n_epochs, text
        )

    def on_stage_end(self, progress: Progress, result) -> None:
        self.log.info(
            "%s done: best epoch %s, validation %s = %.4g",
            progress.stage,
            result.best_epoch,
            result.monitor,
            result.best_score,
        )


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
