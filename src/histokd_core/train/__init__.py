"""Training engine shared by every method: trainer, callbacks, checkpoints, cross-validation."""

from histokd_core.train.callbacks import Callback, EarlyStopping, LoggingCallback, Progress
from histokd_core.train.checkpoint import load_model, read_checkpoint, save_checkpoint
from histokd_core.train.cv import RunResult, run_cv
from histokd_core.train.evaluation import Outputs, predict_bags, score
from histokd_core.train.metrics import classification_metrics
from histokd_core.train.trainer import FitResult, TrainConfig, Trainer

__all__ = [
    "Callback",
    "EarlyStopping",
    "FitResult",
    "LoggingCallback",
    "Outputs",
    "Progress",
    "RunResult",
    "TrainConfig",
    "Trainer",
    "classification_metrics",
    "load_model",
    "predict_bags",
    "read_checkpoint",
    "run_cv",
    "save_checkpoint",
    "score",
]
