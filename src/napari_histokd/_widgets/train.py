"""Train dock: the options of ``histokd train`` as a form, running
:func:`histokd_core.workflows.train_cohort` in a worker thread or a child process.

Thread mode caps torch's CPU threads (cores - 1) and releases the GIL at every progress report so
the viewer stays responsive (micro-sam's slowdown came from torch saturating every core from a
QThread); subprocess mode runs the same workflow in a spawned process
(:func:`histokd_core.workflows.run_in_process`), for long runs. Both report structured
:class:`~histokd_core.progress.ProgressEvent` s (fraction done, stage, epoch, metrics). Cancel
stops at the next step and keeps the last epoch's checkpoint (continue with "resume").
"""

from __future__ import annotations

import os
import queue
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QTimer
from qtpy.QtGui import QPixmap
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from histokd_core.cancel import CancelToken
from histokd_core.errors import Cancelled, HistoKDError
from histokd_core.methods.registry import available_methods
from napari_histokd._widgets._common import WorkerSignals, notify_error

if TYPE_CHECKING:
    import napari


@dataclass
class TrainOptions:
    """The ``histokd train`` options (paths as strings; empty = not given)."""

    cohort: str
    features: str
    out: str
    method: str = "amkd"
    omics: str = ""
    gene_sets: str = ""
    task: str = ""
    label_column: str = ""
    folds: int = 5
    only_folds: list[int] = field(default_factory=list)
    epochs: int = 100
    batch_size: int = 0
    lr: float = 5e-5
    patience: int = 10
    seed: int = 0
    device: str = "auto"
    threads: int = max(1, (os.cpu_count() or 2) - 1)
    resume: bool = False

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`histokd_core.workflows.train_cohort` for these options."""
        return {
            "method": self.method, "cohort": self.cohort, "features": self.features, "out": self.out,
            "omics": self.omics or None, "gene_sets": self.gene_sets or None, "task": self.task or None,
            "label_column": self.label_column or None, "n_folds": self.folds,
            "only_folds": list(self.only_folds) or None, "epochs": self.epochs,
            "batch_size": self.batch_size or None, "lr": self.lr, "patience": self.patience,
            "seed": self.seed, "device": self.device, "threads": self.threads, "resume": self.resume,
        }


class LinePlot(QWidget):
    """A minimal live line plot drawn with QPainter: a repaint costs well under a millisecond,
    unlike a matplotlib canvas, which would block the event loop for 100+ ms per update."""

    COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")

    def __init__(self, title: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.title = title
        self.series: dict[str, list[float]] = {}
        self.setMinimumHeight(150)

    def set_series(self, series: dict[str, list[float]]) -> None:
        self.series = series
        self.update()

    def paintEvent(self, event):  # noqa: N802 - Qt API
        from qtpy.QtCore import QPointF, Qt
        from qtpy.QtGui import QColor, QPainter, QPen

        p = QPainter(self)
        p.fillRect(self.rect(), QColor("#262930"))
        p.setPen(QColor("#d0d0d0"))
        p.drawText(6, 14, self.title)
        vals = [v for ys in self.series.values() for v in ys if v == v]
        if not vals:
            p.end()
            return
        lo, hi = min(vals), max(vals)
        hi = hi if hi > lo else lo + 1e-9
        left, top, w, h = 40, 22, max(self.width() - 50, 10), max(self.height() - 44, 10)
        p.drawText(2, top + 10, f"{hi:.3g}")
        p.drawText(2, top + h, f"{lo:.3g}")
        n = max(len(ys) for ys in self.series.values())
        for k, (name, ys) in enumerate(self.series.items()):
            color = QColor(self.COLORS[k % len(self.COLORS)])
            p.setPen(QPen(color, 1.5))
            pts = [QPointF(left + (i / max(n - 1, 1)) * w, top + (1 - (y - lo) / (hi - lo)) * h)
                   for i, y in enumerate(ys) if y == y]
            for a, b in zip(pts, pts[1:]):
                p.drawLine(a, b)
            if len(pts) == 1:
                p.drawEllipse(pts[0], 2, 2)
            p.drawText(left + 4 + 110 * k, top + h + 18, name)
        p.setPen(Qt.PenStyle.NoPen)
        p.end()


class SignalProgress:
    """A progress function for the worker thread: forwards each event to the GUI thread as a
    dict (queued signal) and yields the GIL."""

    def __init__(self, signals: WorkerSignals):
        self.signals = signals

    def __call__(self, event) -> None:
        self.signals.metrics.emit(event.as_dict())
        time.sleep(0)  # let the GUI thread take the GIL


class TrainWidget(QWidget):
    """Form + progress + live loss/metric plot + results table and KM plot."""

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.worker = None
        self.process = None  # multiprocessing.Process in subprocess mode
        self.metrics: dict | None = None
        self.history: list[dict] = []
        self._cancel = CancelToken()
        self._stages: list[str] = []
        self.signals = WorkerSignals()
        self.signals.metrics.connect(self._on_event)

        self.paths = {k: QLineEdit(self) for k in ("cohort", "features", "omics", "gene_sets", "out")}
        self.method = QComboBox(self)
        self.method.addItems(available_methods())
        self.task = QComboBox(self)
        self.task.addItems(["(method default)", "survival", "classification"])
        self.folds = QSpinBox(self)
        self.folds.setRange(2, 20)
        self.folds.setValue(5)
        self.only_fold = QSpinBox(self)
        self.only_fold.setRange(-1, 19)
        self.only_fold.setValue(-1)
        self.only_fold.setSpecialValueText("all")
        self.epochs = QSpinBox(self)
        self.epochs.setRange(1, 10000)
        self.epochs.setValue(100)
        self.lr = QDoubleSpinBox(self)
        self.lr.setDecimals(6)
        self.lr.setRange(1e-6, 1.0)
        self.lr.setValue(5e-5)
        self.device = QComboBox(self)
        self.device.addItems(["auto", "cpu", "cuda"])
        self.threads = QSpinBox(self)
        self.threads.setRange(1, os.cpu_count() or 1)
        self.threads.setValue(max(1, (os.cpu_count() or 2) - 1))
        self.subprocess = QCheckBox("run in a subprocess (long runs)", self)
        self.resume = QCheckBox("resume an interrupted run", self)
        self.run_btn = QPushButton("Train", self)
        self.cancel_btn = QPushButton("Cancel", self)
        self.cancel_btn.setEnabled(False)
        self.bar = QProgressBar(self)
        self.bar.setRange(0, 1000)
        self.status = QLabel("", self)
        self.status.setWordWrap(True)
        self.table = QTableWidget(0, 4, self)
        self.table.setHorizontalHeaderLabels(["model", "metric", "mean", "std"])
        self.km = QLabel(self)

        self.loss_plot = LinePlot("train loss", self)
        self.val_plot = LinePlot("validation metric", self)
        plots = QHBoxLayout()
        plots.addWidget(self.loss_plot)
        plots.addWidget(self.val_plot)

        form = QFormLayout()
        for key, label in (("cohort", "cohort CSV"), ("features", "features"), ("omics", "omics table"),
                           ("gene_sets", "gene sets"), ("out", "run folder")):
            form.addRow(label, self.paths[key])
        form.addRow("method", self.method)
        form.addRow("task", self.task)
        form.addRow("folds", self.folds)
        form.addRow("only fold", self.only_fold)
        form.addRow("epochs", self.epochs)
        form.addRow("learning rate", self.lr)
        form.addRow("device", self.device)
        form.addRow("CPU threads", self.threads)
        form.addRow(self.subprocess)
        form.addRow(self.resume)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_btn)
        buttons.addWidget(self.cancel_btn)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.bar)
        layout.addWidget(self.status)
        layout.addLayout(plots)
        layout.addWidget(self.table)
        layout.addWidget(self.km)
        self.run_btn.clicked.connect(self.start)
        self.cancel_btn.clicked.connect(self.cancel)

    def options(self) -> TrainOptions:
        """The form's values."""
        task = self.task.currentText()
        return TrainOptions(
            cohort=self.paths["cohort"].text().strip(), features=self.paths["features"].text().strip(),
            out=self.paths["out"].text().strip(), method=self.method.currentText(),
            omics=self.paths["omics"].text().strip(), gene_sets=self.paths["gene_sets"].text().strip(),
            task="" if task.startswith("(") else task, folds=self.folds.value(),
            only_folds=[] if self.only_fold.value() < 0 else [self.only_fold.value()],
            epochs=self.epochs.value(), lr=self.lr.value(), device=self.device.currentText(),
            threads=self.threads.value(), resume=self.resume.isChecked(),
        )

    # -- run ----------------------------------------------------------------------------------
    def start(self):
        """Start training (a thread worker, or a child process in subprocess mode); returns it."""
        opts = self.options()
        missing = [k for k in ("cohort", "features", "out") if not getattr(opts, k)]
        if missing:
            notify_error(ValueError(f"fill in {', '.join(missing)}"), "Train")
            return None
        self.history.clear()
        self._stages.clear()
        self.bar.setValue(0)
        self._cancel.reset()
        self.run_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.status.setText("starting")
        if self.subprocess.isChecked():
            return self._start_process(opts)
        from napari.qt.threading import create_worker

        from histokd_core.workflows import train_cohort

        self.worker = create_worker(
            train_cohort, **opts.kwargs(), progress=SignalProgress(self.signals), cancel=self._cancel,
            _start_thread=False,
            _connect={"returned": lambda r: self._on_done(r.metrics, opts.out), "errored": self._on_error,
                      "finished": self._on_finished},
        )
        self.worker.start()
        return self.worker

    def _start_process(self, opts: TrainOptions):
        import multiprocessing

        from histokd_core.workflows import run_in_process, train_cohort

        ctx = multiprocessing.get_context("spawn")
        self._queue, self._process_cancel = ctx.Queue(), ctx.Event()
        self.process = ctx.Process(target=run_in_process, daemon=True,
                                   args=(self._queue, self._process_cancel, train_cohort, opts.kwargs()))
        self.process.start()
        self._poll = QTimer(self)
        self._poll.timeout.connect(lambda: self._drain_process(opts.out))
        self._poll.start(100)
        return self.process

    def _drain_process(self, out: str):
        """Handle the child's messages (progress events, then its outcome)."""
        while True:
            try:
                kind, payload = self._queue.get_nowait()
            except queue.Empty:
                break
            if kind == "progress":
                self._on_event(payload)
                continue
            self._stop_polling()
            if kind == "done":
                self._on_done(payload, out)
            elif kind == "cancelled":
                self._on_error(Cancelled(payload))
            else:
                error = (HistoKDError if payload["histokd"] else RuntimeError)(payload["message"])
                self.status.setText(notify_error(error, "Train"))
            return
        if not self.process.is_alive():
            self._stop_polling()
            self.status.setText(notify_error(RuntimeError(f"training process exited with code "
                                                          f"{self.process.exitcode}"), "Train"))

    def _stop_polling(self):
        self._poll.stop()
        self.process.join(timeout=5)
        self._on_finished()

    def cancel(self):
        """Stop at the next step (thread or child process); the last epoch's state is kept."""
        self._cancel.cancel()
        if self.process is not None and self.process.is_alive():
            self._process_cancel.set()
        self.status.setText("cancelling...")

    # -- feedback -----------------------------------------------------------------------------
    def _on_event(self, event: dict):
        """One :class:`~histokd_core.progress.ProgressEvent` (as a dict) from the run."""
        self.bar.setValue(max(self.bar.value(), int(min(event["fraction"], 1.0) * 1000)))
        self.status.setText(event["message"])
        stage = event.get("stage")
        if stage is not None and stage not in self._stages:
            self._stages.append(stage)
        if event["kind"] == "epoch":
            self.history.append({"stage": stage, "fold": event["fold"], "epoch": event["epoch"],
                                 **event["metrics"]})
            self._plot()

    def _plot(self):
        loss, val = {}, {}
        for stage in self._stages:
            rows = [h for h in self.history if h["stage"] == stage]
            if rows and rows[-1].get("train_loss") is not None:
                loss[stage] = [h.get("train_loss", float("nan")) for h in rows]
            vkey = next((k for k in rows[-1] if k.startswith("val_") and k != "val_loss"), None) if rows else None
            if vkey:
                val[f"{stage} {vkey[4:]}"] = [h.get(vkey, float("nan")) for h in rows]
        self.loss_plot.set_series(loss)
        self.val_plot.set_series(val)

    def _on_error(self, exc: BaseException):
        if isinstance(exc, Cancelled):
            self.status.setText("cancelled; the last epoch checkpoint is kept (tick 'resume' to continue)")
            return
        self.status.setText(notify_error(exc, "Train"))

    def _on_finished(self):
        self.run_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)

    def _on_done(self, metrics: dict, out: str):
        from histokd_core.train.results import summary_rows

        self.metrics = metrics
        self.bar.setValue(1000)
        self.status.setText(f"done: {out}")
        rows = summary_rows(metrics)
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, text in enumerate(row):
                self.table.setItem(r, c, QTableWidgetItem(text))
        km = Path(out) / "km.png"
        if km.is_file():
            self.km.setPixmap(QPixmap(str(km)).scaledToWidth(380))
