"""Progress reports of long jobs (training, evaluation, analysis, prediction): one event type.

A job takes ``progress: Callable[[ProgressEvent], None]`` and calls it from the thread (or process)
it runs in; a GUI forwards the events to its own thread, the CLI logs them. Events are plain data
(:meth:`ProgressEvent.as_dict`), so they also cross process boundaries
(:class:`QueueProgress`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

EventKind = Literal["step", "epoch", "stage", "fold", "message"]


@dataclass
class ProgressEvent:
    """One report from a long job.

    Attributes
    ----------
    kind : ``"step"`` (work inside an epoch or a slide), ``"epoch"`` (an epoch ended; ``metrics``
        holds its mean training terms ``train_*`` and validation metrics ``val_*``), ``"stage"``
        (a model finished training), ``"fold"`` (a fold finished; ``metrics`` holds
        ``<stage>/<metric>`` test metrics) or ``"message"`` (anything else).
    fraction : how much of the whole job is done, 0..1.
    message : one line for a status bar.
    stage : the model being trained (``"teacher"``, ``"student"`` ...), or None.
    fold : fold index, or None outside cross-validation; n_folds : folds in this run.
    epoch, n_epochs : 1-based epoch and the maximum; step, n_steps : 1-based step in the epoch.
    metrics : named floats (see ``kind``).
    """

    kind: EventKind
    fraction: float
    message: str = ""
    stage: str | None = None
    fold: int | None = None
    n_folds: int | None = None
    epoch: int | None = None
    n_epochs: int | None = None
    step: int | None = None
    n_steps: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The event as a plain dict (picklable, JSON-able)."""
        return dataclasses.asdict(self)


ProgressFn = Callable[[ProgressEvent], None]


def report(progress: ProgressFn | None, fraction: float, message: str) -> None:
    """Send a ``"message"`` event to ``progress`` when there is one."""
    if progress is not None:
        progress(ProgressEvent("message", float(fraction), message))


class QueueProgress:
    """A progress function that puts :meth:`ProgressEvent.as_dict` on a multiprocessing queue
    (for a job running in a child process; the parent reads the queue)."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def __call__(self, event: ProgressEvent) -> None:
        self.queue.put(("progress", event.as_dict()))
