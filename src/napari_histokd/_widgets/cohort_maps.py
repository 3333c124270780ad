""""All slides of this run", a panel of the Analyse dock: every slide of a cohort through the run
of the dock's checkpoint, as ``histokd predict --run RUN --cohort C --features F --maps OUT``
(:func:`histokd_core.workflows.predict_cohort.predict_cohort_maps`, one dask task per slide), in a
worker thread with progress per slide, a cancel that acts at once, and the summary (done / failed
with the reason of each failure) and the output folder shown in the dock.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from histokd_core.cancel import CancelToken
from histokd_core.workflows.predict_cohort import CohortMaps, predict_cohort_maps, run_of_checkpoint
from napari_histokd._widgets._common import WorkerSignals, notify_error, path_row

#: link colour readable on napari's dark and light themes.
LINK = "#5fa8e8"


class CohortMapsPanel(QWidget):
    """Run folder (from the checkpoint), cohort table and output folder; predicts every slide.

    ``checkpoint``, ``features`` and ``device`` are the Analyse dock's own fields (one model,
    one feature store, one device for the slide and for the cohort)."""

    def __init__(self, checkpoint: QLineEdit, features: QLineEdit, device: QComboBox,
                 parent: QWidget | None = None):
        super().__init__(parent)
        self._checkpoint, self._features, self._device = checkpoint, features, device
        self.worker = None
        self.result: CohortMaps | None = None
        self._cancel = CancelToken()
        self.signals = WorkerSignals()
        self.signals.progress.connect(self._on_progress)

        self.run = QLineEdit(self)
        self.run.setPlaceholderText("run folder (config.yaml, fold_<k>/): from the checkpoint")
        self.cohort = QLineEdit(self)
        self.cohort.setPlaceholderText("cohort table (case_id, slide_id, ...)")
        self.maps = QLineEdit(self)
        self.maps.setPlaceholderText("output folder (default: <run>/maps)")
        self.maps.setToolTip("each slide's maps (CSV, zarr, QuPath GeoJSON, PNG), summary.csv and "
                             "colour_scale.json; a rerun skips finished slides. The cohort colour "
                             "scale of the Analyse dock is read from here.")
        self.workers = QSpinBox(self)
        self.workers.setRange(1, max(1, os.cpu_count() or 1))
        self.workers.setValue(min(2, self.workers.maximum()))
        self.workers.setToolTip("dask worker processes (one slide each at a time)")
        self.run_btn = QPushButton("Predict all slides", self)
        self.cancel_btn = QPushButton("Cancel", self)
        self.cancel_btn.setEnabled(False)
        self.bar = QProgressBar(self)
        self.bar.setRange(0, 1000)
        self.status = QLabel("", self)
        self.status.setWordWrap(True)
        self.summary = QLabel("", self)
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.output = QLabel("", self)
        self.output.setWordWrap(True)
        self.output.setOpenExternalLinks(True)

        form = QFormLayout()
        form.addRow("run", path_row(self.run, lambda: self._pick_dir(self.run, "Run folder"), self))
        form.addRow("cohort", path_row(self.cohort, self._pick_cohort, self))
        form.addRow("maps to", path_row(self.maps, lambda: self._pick_dir(self.maps, "Write maps into"), self))
        form.addRow("workers", self.workers)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_btn)
        buttons.addWidget(self.cancel_btn)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.bar)
        layout.addWidget(self.status)
        layout.addWidget(self.summary)
        layout.addWidget(self.output)

        self.run_btn.clicked.connect(self.start)
        self.cancel_btn.clicked.connect(self.cancel)
        self._checkpoint.textChanged.connect(self._on_checkpoint)
        self._on_checkpoint()

    # -- inputs -------------------------------------------------------------------------------
    def _on_checkpoint(self, *_):
        """Fill the run folder from a checkpoint saved in a run (``RUN/fold_<k>/<stage>``)."""
        found = run_of_checkpoint(self._checkpoint.text().strip())
        if found is not None:
            self.run.setText(str(found[0]))

    def _pick_dir(self, edit: QLineEdit, title: str):
        path = QFileDialog.getExistingDirectory(self, title)
        if path:
            edit.setText(path)

    def _pick_cohort(self):
        path, _ = QFileDialog.getOpenFileName(self, "Cohort table", "", "tables (*.csv *.tsv *.parquet)")
        if path:
            self.cohort.setText(path)

    def maps_dir(self) -> Path | None:
        """The output folder: as entered, else ``<run>/maps``; None without a run."""
        if self.maps.text().strip():
            return Path(self.maps.text().strip())
        run = self.run.text().strip()
        return Path(run) / "maps" if run else None

    # -- run ----------------------------------------------------------------------------------
    def start(self):
        """Start the cohort worker (returns it, for tests; None when an input is missing)."""
        from napari.qt.threading import create_worker

        missing = [name for name, edit in (("run", self.run), ("cohort", self.cohort),
                                           ("features", self._features)) if not edit.text().strip()]
        if missing:
            self.status.setText(notify_error(ValueError(f"enter the {', '.join(missing)} first"),
                                             "All slides"))
            return None
        found = run_of_checkpoint(self._checkpoint.text().strip())
        stage = found[1] if found is not None and found[0] == Path(self.run.text().strip()) else None
        out = self.maps_dir()
        self.maps.setText(str(out))
        self._cancel.reset()
        self.summary.setText("")
        self.output.setText("")
        worker = create_worker(
            predict_cohort_maps, self.run.text().strip(), self.cohort.text().strip(),
            self._features.text().strip(), str(out), stage=stage, n_workers=self.workers.value(),
            device=self._device.currentText(),
            progress=lambda event: self.signals.progress.emit(event.fraction, event.message),
            cancel=self._cancel,
            _start_thread=False,
            _connect={"returned": self._on_done, "errored": self._on_error, "finished": self._on_finished},
        )
        self.worker = worker
        self.run_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.status.setText("starting")
        worker.start()
        return worker

    def cancel(self):
        """Stop now: the slides not finished are reported as cancelled (finished ones are kept)."""
        self._cancel.cancel()
        self.status.setText("cancelling...")

    def _on_progress(self, frac: float, msg: str):
        self.bar.setValue(int(frac * 1000))
        self.status.setText(msg)

    def _on_done(self, result: CohortMaps):
        self.result = result
        lines = result.summary().splitlines()
        head = html.escape(lines[0].split(" -> ")[0])
        failed = "".join(f"<br><span style='color:#c05000'>{html.escape(line.strip())}</span>"
                         for line in lines[1:])
        self.summary.setText(head + failed)
        self.status.setText("cancelled: finished slides are kept, a rerun resumes"
                            if self._cancel.cancelled() else "done")
        out = result.out.resolve()
        self.output.setText(f"maps in <a style='color:{LINK}' href='{out.as_uri()}'>{html.escape(str(out))}</a> "
                            "(summary.csv, colour_scale.json, one folder per slide)")

    def _on_error(self, exc: BaseException):
        self.status.setText(notify_error(exc, "All slides"))

    def _on_finished(self):
        self.run_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)
