"""The pipeline's entry points: what the ``histokd`` commands and the napari docks run.

Each workflow takes plain arguments (paths, names, numbers), reports through one callback,
``progress(ProgressEvent)`` (:mod:`histokd_core.progress`), and stops through one
:class:`~histokd_core.cancel.CancelToken` (raising :class:`~histokd_core.errors.Cancelled`).

- :func:`train_cohort`: cross-validate a method on a cohort (``histokd train``, Train dock);
- :func:`evaluate_run`: score an external cohort with a run's slide-only models
  (``histokd evaluate``);
- :func:`analyse_slide`: one slide through a checkpoint, features stored or extracted now
  (Analyse dock, ``histokd demo``'s overlays);
- :func:`predict_slide`: one slide's prediction and per-patch maps as CSV + JSON
  (``histokd predict --slide-id``), :func:`predict_cohort`: every slide of a feature store
  (``histokd predict --all-slides``);
- :func:`fine_maps_slide`: fine heatmaps from overlapping patches, averaged per pixel
  (Analyse dock's fine option);
- :func:`run_in_process`: run any of them in a child process that reports through a queue
  (the Train dock's subprocess mode).
"""

from histokd_core.workflows.analyse import Analysis, analyse_slide
from histokd_core.workflows.evaluate import evaluate_run
from histokd_core.workflows.fine_maps import FineMaps, fine_maps_slide
from histokd_core.workflows.predict import SlidePrediction, predict_cohort, predict_slide
from histokd_core.workflows.process import run_in_process
from histokd_core.workflows.train import train_cohort

__all__ = [
    "Analysis",
    "FineMaps",
    "SlidePrediction",
    "analyse_slide",
    "evaluate_run",
    "fine_maps_slide",
    "predict_cohort",
    "predict_slide",
    "run_in_process",
    "train_cohort",
]
