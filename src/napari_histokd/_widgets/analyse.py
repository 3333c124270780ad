"""Analyse dock: a slide + a trained checkpoint -> attention, pathway, cluster and memory overlays."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from histokd_core.cancel import CancelToken
from histokd_core.errors import Cancelled
from histokd_core.workflows import Analysis, analyse_slide
from napari_histokd._layers import explanation_layers, prediction_text
from napari_histokd._widgets._common import WorkerSignals, notify_error, slide_layers

if TYPE_CHECKING:
    import napari


def _path_row(edit: QLineEdit, pick, parent: QWidget) -> QWidget:
    row = QWidget(parent)
    lay = QHBoxLayout(row)
    lay.setContentsMargins(0, 0, 0, 0)
    lay.addWidget(edit)
    btn = QPushButton("...", row)
    btn.setFixedWidth(28)
    btn.clicked.connect(pick)
    lay.addWidget(btn)
    return row


def add_analysis_layers(
    viewer: napari.Viewer,
    analysis: Analysis,
    world_mpp: float,
    units: tuple[str, str] | None = None,
    slide_mpp: float | None = None,
) -> dict[str, Any]:
    """Add every overlay of ``analysis`` to ``viewer``; returns layers by their histokd kind.

    ``world_mpp`` is the slide layer's world units per level-0 pixel (its scale); ``slide_mpp``
    the slide's microns per pixel, None when the slide does not record it (kept in each layer's
    metadata for exports, which then give no physical areas)."""
    added: dict[str, Any] = {}
    prefix = analysis.slide_id
    for data, kwargs, kind in explanation_layers(analysis.explanation, world_mpp, prefix=prefix, units=units):
        name = kwargs["name"]
        if name in viewer.layers:
            viewer.layers.remove(name)
        kwargs["metadata"].update(explanation=analysis.explanation, slide_path=analysis.slide_path,
                                  slide_mpp=slide_mpp)
        layer = getattr(viewer, f"add_{kind}")(data, **kwargs)
        key = kwargs["metadata"]["histokd_kind"]
        added[key if key != "clusters" else f"clusters:{kwargs['metadata']['clusters']}"] = layer
    return added


class AnalyseWidget(QWidget):
    """Choose a slide layer, a checkpoint and features; run in a thread; show the overlays."""

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.worker = None
        self.layers: dict[str, Any] = {}
        self.analysis: Analysis | None = None
        self._cancel = CancelToken()
        self.signals = WorkerSignals()
        self.signals.progress.connect(self._on_progress)

        self.slide = QComboBox(self)
        self.checkpoint = QLineEdit(self)
        self.checkpoint.setPlaceholderText("fold_0/student.safetensors")
        self.features = QLineEdit(self)
        self.features.setPlaceholderText("feature store folder or .zarr/.h5/.pt")
        self.slide_id = QLineEdit(self)
        self.slide_id.setPlaceholderText("default: slide file name")
        self.extract_now = QCheckBox("extract now with the checkpoint's encoder", self)
        self.extract_to = QLineEdit(self)
        self.extract_to.setPlaceholderText("folder for extracted features")
        self.device = QComboBox(self)
        self.device.addItems(["auto", "cpu", "cuda"])
        self.run_btn = QPushButton("Analyse", self)
        self.cancel_btn = QPushButton("Cancel", self)
        self.cancel_btn.setEnabled(False)
        self.bar = QProgressBar(self)
        self.bar.setRange(0, 1000)
        self.status = QLabel("", self)
        self.status.setWordWrap(True)
        self.prediction = QLabel("", self)
        self.prediction.setWordWrap(True)
        self.pathways = QListWidget(self)
        self.clusters_legend = QLabel("", self)
        self.clusters_legend.setWordWrap(True)
        self.component = QComboBox(self)

        form = QFormLayout()
        form.addRow("slide layer", self.slide)
        form.addRow("checkpoint", _path_row(self.checkpoint, self._pick_checkpoint, self))
        form.addRow("features", _path_row(self.features, self._pick_features, self))
        form.addRow("slide id", self.slide_id)
        form.addRow(self.extract_now)
        form.addRow("extract to", self.extract_to)
        form.addRow("device", self.device)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_btn)
        buttons.addWidget(self.cancel_btn)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.bar)
        layout.addWidget(self.status)
        layout.addWidget(QLabel("<b>prediction</b>", self))
        layout.addWidget(self.prediction)
        layout.addWidget(QLabel("<b>pathways</b> (ranked; click to show)", self))
        layout.addWidget(self.pathways)
        layout.addWidget(QLabel("<b>clusters</b> (patches per cluster)", self))
        layout.addWidget(self.clusters_legend)
        layout.addWidget(QLabel("<b>memory component</b>", self))
        layout.addWidget(self.component)
        layout.addStretch(1)

        self.run_btn.clicked.connect(self.start)
        self.cancel_btn.clicked.connect(self.cancel)
        self.pathways.currentTextChanged.connect(self._show_pathway_item)
        self.component.currentIndexChanged.connect(self.show_component)
        self.viewer.layers.events.inserted.connect(self._refresh_slides)
        self.viewer.layers.events.removed.connect(self._refresh_slides)
        self._refresh_slides()

    # -- inputs -------------------------------------------------------------------------------
    def _refresh_slides(self, *_):
        current = self.slide.currentText()
        self.slide.clear()
        self.slide.addItems([layer.name for layer in slide_layers(self.viewer)])
        if current:
            self.slide.setCurrentText(current)

    def _pick_checkpoint(self):
        path, _ = QFileDialog.getOpenFileName(self, "Checkpoint", "", "safetensors (*.safetensors)")
        if path:
            self.checkpoint.setText(path)

    def _pick_features(self):
        path = QFileDialog.getExistingDirectory(self, "Feature store")
        if path:
            self.features.setText(path)

    def _slide_layer(self):
        name = self.slide.currentText()
        if not name or name not in self.viewer.layers:
            return None
        return self.viewer.layers[name]

    # -- run ----------------------------------------------------------------------------------
    def start(self):
        """Start the analysis worker (returns it, for tests)."""
        from napari.qt.threading import create_worker

        layer = self._slide_layer()
        if layer is None:
            notify_error(ValueError("open a slide first (File > Open)"), "Analyse")
            return None
        world_mpp = float(layer.scale[-1])
        slide_mpp = layer.metadata.get("mpp")
        units = tuple(str(u) for u in layer.units[-2:])
        slide_path = layer.metadata.get("path")
        kwargs = dict(
            checkpoint=self.checkpoint.text().strip(),
            features=None if self.extract_now.isChecked() else (self.features.text().strip() or None),
            slide_id=self.slide_id.text().strip() or (Path(slide_path).stem if slide_path else None),
            slide_path=slide_path,
            extract_to=self.extract_to.text().strip() or None,
            device=self.device.currentText(),
        )
        self._cancel.reset()
        worker = create_worker(
            analyse_slide, **kwargs,
            progress=lambda event: self.signals.progress.emit(event.fraction, event.message),
            cancel=self._cancel,
            _start_thread=False,
            _connect={"errored": self._on_error, "finished": self._on_finished,
                      "returned": lambda a: self._on_done(a, world_mpp, units, slide_mpp)},
        )
        self.worker = worker
        self.run_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.status.setText("starting")
        worker.start()
        return worker

    def cancel(self):
        """Stop at the next step (the worker raises Cancelled)."""
        self._cancel.cancel()
        self.status.setText("cancelling...")

    def _on_progress(self, frac: float, msg: str):
        self.bar.setValue(int(frac * 1000))
        self.status.setText(msg)

    def _on_error(self, exc: BaseException):
        if isinstance(exc, Cancelled):
            self.status.setText("cancelled")
            return
        self.status.setText(notify_error(exc, "Analyse"))

    def _on_finished(self):
        self.run_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)

    def _on_done(self, analysis: Analysis, world_mpp: float, units: tuple[str, str] | None = None,
                 slide_mpp: float | None = None):
        self.analysis = analysis
        self.layers = add_analysis_layers(self.viewer, analysis, world_mpp, units, slide_mpp)
        self.show_results()
        self.status.setText(f"{analysis.slide_id}: {len(analysis.explanation.coords)} patches")

    # -- results ------------------------------------------------------------------------------
    def show_results(self):
        """Fill the prediction line, pathway list, cluster legend and component selector."""
        expl = self.analysis.explanation
        self.prediction.setText(prediction_text(expl, self.analysis.method))
        self.pathways.clear()
        layer = self.layers.get("pathway")
        if layer is not None:
            scores = layer.metadata["pathway_scores"]
            self.pathways.addItems([f"{n}  ({s:.3g})" for n, s in scores.items()])
        legend = []
        for key, lyr in self.layers.items():
            if key.startswith("clusters:"):
                sizes = lyr.metadata["legend"]
                legend.append(f"{key[9:]}: " + ", ".join(f"#{k}: {v}" for k, v in sizes.items()))
        self.clusters_legend.setText("\n".join(legend) or "none")
        self.component.blockSignals(True)
        self.component.clear()
        self.component.addItems(list(expl.memory_names) if expl.memory is not None else [])
        self.component.blockSignals(False)
        if expl.memory is not None:
            self.show_component(0)

    def _show_pathway_item(self, text: str):
        if text:
            self.show_pathway(text.rsplit("  (", 1)[0])

    def show_pathway(self, name: str):
        """Swap the pathway layer's data to ``name``'s precomputed grid (no recomputation)."""
        layer = self.layers["pathway"]
        grid = layer.metadata["pathway_grids"][name]
        from napari_histokd._layers import contrast_limits

        layer.data = grid
        layer.contrast_limits = contrast_limits(grid)
        layer.metadata["pathway"] = name
        layer.name = f"{self.analysis.slide_id} pathway: {name}"

    def show_component(self, index: int):
        """Show memory component ``index`` and highlight its top patches."""
        if index < 0 or "memory" not in self.layers:
            return
        self.viewer.dims.set_point(0, index)
        points = self.layers.get("top_patches")
        names = self.layers["memory"].metadata["memory_names"]
        if points is not None and index < len(names):
            maps = np.asarray(points.features["map"])
            if np.isin(names[index], maps):
                mask = maps == names[index]
                points.shown = mask
                # napari skips ``shown`` when every axis of a Points layer is displayed (2D points
                # in a 2D view draw all points), so hide the other outlines through their width
                width = points.metadata.setdefault("border_width", float(np.max(points.border_width)))
                points.border_width = np.where(mask, width, 0.0)
