"""Training engine shared by every method: trainer, callbacks, checkpoints, cross-validation."""

from histokd_core.train.callbacks import (
    Callback,
    CancelToken,
    EarlyStopping,
    LoggingCallback,
    Progress,
    TrainingCancelled,
)
from histokd_core.train.checkpoint import load_model, read_checkpoint, save_checkpoint
from histokd_core.train.cv import RunDirError, RunResult, run_cv
from histokd_core.train.evaluation import Outputs, predict_bags, score
from histokd_core.train.metrics import classification_metrics
from histokd_core.train.trainer import (
    FitResult,
    TrainConfig,
    Trainer,
    TrainingError,
    resolve_device,
)

__all__ = [
    "Callback",
    "CancelToken",
    "EarlyStopping",
    "FitResult",
    "LoggingCallback",
    "Outputs",
    "Progress",
    "RunDirError",
    "RunResult",
    "TrainConfig",
    "Trainer",
    "TrainingCancelled",
    "TrainingError",
    "classification_metrics",
    "load_model",
    "predict_bags",
    "read_checkpoint",
    "resolve_device",
    "run_cv",
    "save_checkpoint",
    "score",
]
