"""Train dock: the options of ``histokd train`` as a form, run in a worker thread or a subprocess.

Thread mode caps torch's CPU threads (cores - 1) and releases the GIL after every step so the
viewer stays responsive (micro-sam's slowdown came from torch saturating every core from a
QThread); subprocess mode runs ``python -m histokd_core.cli train`` in a child process and
follows its log, for long runs. Cancel stops at the next step and keeps the last epoch's
checkpoint (continue with "resume").
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from qtpy.QtCore import QProcess
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

from histokd_core.errors import Cancelled
from histokd_core.methods.registry import available_methods
from histokd_core.train.callbacks import Callback, Progress
from napari_histokd._widgets._common import WorkerSignals, notify_error

if TYPE_CHECKING:
    import napari

EPOCH_LINE = re.compile(r"(?:fold (?P<fold>\d+) )?(?P<stage>\S+) epoch (?P<epoch>\d+)/(?P<n>\d+) ?(?P<rest>.*)")


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

    def argv(self) -> list[str]:
        """Command-line arguments of ``histokd train`` for these options."""
        a = ["train", "--method", self.method, "--cohort", self.cohort, "--features", self.features,
             "--out", self.out, "--folds", str(self.folds), "--epochs", str(self.epochs), "--lr", str(self.lr),
             "--patience", str(self.patience), "--seed", str(self.seed), "--device", self.device,
             "--threads", str(self.threads)]
        for flag, value in (("--omics", self.omics), ("--gene-sets", self.gene_sets), ("--task", self.task),
                            ("--label-column", self.label_column)):
            if value:
                a += [flag, value]
        if self.batch_size:
            a += ["--batch-size", str(self.batch_size)]
        if self.only_folds:
            a += ["--only-folds", ",".join(map(str, self.only_folds))]
        if self.resume:
            a.append("--resume")
        return a


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


class SignalCallback(Callback):
    """Forwards trainer events to Qt signals (queued to the GUI thread) and yields the GIL."""

    def __init__(self, signals: WorkerSignals, every_s: float = 0.1):
        self.signals, self.every_s, self._last = signals, every_s, 0.0

    def on_step(self, progress: Progress, logs: dict[str, float]) -> None:
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self.signals.metrics.emit({"event": "step", "stage": progress.stage, "fold": progress.fold,
                                       "epoch": progress.epoch, "n_epochs": progress.n_epochs,
                                       "step": progress.step, "n_steps": progress.n_steps, **logs})
        time.sleep(0)  # let the GUI thread take the GIL between steps

    def on_epoch_end(self, progress: Progress, metrics: dict[str, float]) -> None:
        self.signals.metrics.emit({"event": "epoch", "stage": progress.stage, "fold": progress.fold,
                                   "epoch": progress.epoch, "n_epochs": progress.n_epochs, **metrics})


def run_training(opts: TrainOptions, signals: WorkerSignals, cancel: threading.Event) -> dict:
    """Build the cohort data and cross-validate, as ``histokd train`` does; returns metrics.json."""
    import torch

    from histokd_core.cohort import load_cohort
    from histokd_core.dataset import CohortData
    from histokd_core.methods.registry import check_task
    from histokd_core.train import TrainConfig, run_cv

    torch.set_num_threads(max(1, int(opts.threads)))
    task = check_task(opts.method, opts.task or None)
    cohort = load_cohort(opts.cohort, task=task, label_column=opts.label_column or None)
    data = CohortData(cohort, opts.features, omics=opts.omics or None, gene_sets=opts.gene_sets or None,
                      n_folds=opts.folds, seed=opts.seed)
    config = TrainConfig(epochs=opts.epochs, batch_size=opts.batch_size or None, lr=opts.lr,
                         patience=opts.patience, seed=opts.seed, device=opts.device, num_threads=opts.threads)
    result = run_cv(opts.method, None, data, opts.out, config, folds=opts.only_folds or None,
                    callbacks=[SignalCallback(signals)], cancel=cancel, resume=opts.resume)
    return result.metrics


class TrainWidget(QWidget):
    """Form + progress + live loss/metric plot + results table and KM plot."""

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.worker = None
        self.process: QProcess | None = None
        self.metrics: dict | None = None
        self.history: list[dict] = []
        self._cancel = threading.Event()
        self._stages: list[str] = []
        self.signals = WorkerSignals()
        self.signals.metrics.connect(self._on_metrics)

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
        """Start training (a thread worker, or a QProcess in subprocess mode); returns it."""
        opts = self.options()
        missing = [k for k in ("cohort", "features", "out") if not getattr(opts, k)]
        if missing:
            notify_error(ValueError(f"fill in {', '.join(missing)}"), "Train")
            return None
        self.history.clear()
        self._stages.clear()
        self._n_folds = len(opts.only_folds) or opts.folds
        self._cancel.clear()
        self.run_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.status.setText("starting")
        if self.subprocess.isChecked():
            return self._start_process(opts)
        from napari.qt.threading import create_worker

        self.worker = create_worker(
            run_training, opts, self.signals, self._cancel, _start_thread=False,
            _connect={"returned": lambda m: self._on_done(m, opts.out), "errored": self._on_error,
                      "finished": self._on_finished},
        )
        self.worker.start()
        return self.worker

    def _start_process(self, opts: TrainOptions) -> QProcess:
        proc = QProcess(self)
        proc.setProcessChannelMode(QProcess.ProcessChannelMode.MergedChannels)
        proc.readyReadStandardOutput.connect(self._read_process)
        proc.finished.connect(lambda code, _status: self._process_done(code, opts.out))
        self.process = proc
        self._proc_tail = ""
        proc.start(sys.executable, ["-m", "histokd_core.cli", *opts.argv()])
        return proc

    def _read_process(self):
        text = bytes(self.process.readAllStandardOutput()).decode("utf-8", "replace")
        self._proc_tail = (self._proc_tail + text)[-4000:]
        for line in text.splitlines():
            m = EPOCH_LINE.search(line)
            if not m:
                continue
            metrics = {}
            for item in m.group("rest").split():
                k, _, v = item.partition("=")
                try:
                    metrics[k] = float(v)
                except ValueError:
                    pass
            self._on_metrics({"event": "epoch", "stage": m.group("stage"),
                              "fold": int(m.group("fold")) if m.group("fold") else None,
                              "epoch": int(m.group("epoch")), "n_epochs": int(m.group("n")), **metrics})

    def _process_done(self, code: int, out: str):
        self._on_finished()
        if self._cancel.is_set():
            self.status.setText("cancelled; the last epoch checkpoint is kept (tick 'resume' to continue)")
        elif code == 0:
            self._on_done(json.loads((Path(out) / "metrics.json").read_text()), out)
        else:
            last = self._proc_tail.strip().splitlines()[-1:] or [f"exit code {code}"]
            notify_error(RuntimeError(last[0]), "Train")
            self.status.setText(f"failed: {last[0]}")

    def cancel(self):
        """Stop at the next step (thread) or terminate the child (subprocess); checkpoints stay."""
        self._cancel.set()
        if self.process is not None and self.process.state() != QProcess.ProcessState.NotRunning:
            self.process.terminate()
        self.status.setText("cancelling...")

    # -- feedback -----------------------------------------------------------------------------
    def _on_metrics(self, m: dict):
        if m["stage"] not in self._stages:
            self._stages.append(m["stage"])
        n_stages = max(len(self._stages), 1)
        fold_no = 0 if m.get("fold") is None else m["fold"]
        within = (m["epoch"] - 1 + (m.get("step", 0) / max(m.get("n_steps", 0), 1) if m["event"] == "step" else 1))
        frac_fold = (self._stages.index(m["stage"]) + within / max(m["n_epochs"], 1)) / n_stages
        frac = (min(fold_no, self._n_folds - 1) + frac_fold) / self._n_folds
        self.bar.setValue(int(max(self.bar.value() / 1000, min(frac, 1.0)) * 1000))
        where = f"fold {m['fold']} " if m.get("fold") is not None else ""
        self.status.setText(f"{where}{m['stage']} epoch {m['epoch']}/{m['n_epochs']}")
        if m["event"] == "epoch":
            self.history.append(m)
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
        self.metrics = metrics
        self.bar.setValue(1000)
        self.status.setText(f"done: {out}")
        rows = [(model, key[:-5], f"{mean:.3f}" if mean is not None else "nan",
                 f"{vals.get(key[:-5] + '_std', float('nan')) or 0:.3f}")
                for model, vals in metrics.get("summary", {}).items()
                for key, mean in vals.items() if key.endswith("_mean")]
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, text in enumerate(row):
                self.table.setItem(r, c, QTableWidgetItem(text))
        km = Path(out) / "km.png"
        if km.is_file():
            self.km.setPixmap(QPixmap(str(km)).scaledToWidth(380))
