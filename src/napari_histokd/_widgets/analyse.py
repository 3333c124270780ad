"""Analyse dock: a slide + a trained checkpoint -> per-patch contribution, attention, pathway,
cluster and memory overlays.

After a run only the main map is visible; the "map" selector shows one map at a time with its
colour bar (unit, range, near-uniform note) and its ranked top patches, which the list centres
the camera on. A rerun, or a run on another slide, replaces the layers of the previous run.
The colour scale is the slide's, a fixed one, or the run's cohort-wide scale; "all slides of this
run" (:mod:`napari_histokd._widgets.cohort_maps`) predicts every slide of a cohort with the run.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QSize, Qt
from qtpy.QtGui import QBrush, QColor, QFont
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from histokd_core.cancel import CancelToken
from histokd_core.errors import Cancelled
from histokd_core.explain.colour import PATHWAY_SCORE_UNIT, pathway_score_text, to_display
from histokd_core.slide.geometry import patch_centres_world
from histokd_core.workflows import Analysis, analyse_slide
from napari_histokd._layers import MAIN_MAPS, explanation_layers, prediction_text, top_patch_points
from napari_histokd._widgets._common import (
    WorkerSignals,
    apply_mpp,
    mpp_hint,
    notify_error,
    path_row,
    slide_layers,
)
from napari_histokd._widgets._legend import ColourBar, canvas_caption, show_canvas_caption
from napari_histokd._widgets.cohort_maps import CohortMapsPanel

if TYPE_CHECKING:
    import napari

#: top patches listed per map.
TOP_K = 8
#: going to a top patch zooms so that four patches span this many screen pixels.
ZOOM_SCREEN_PX = 600.0
#: pathway names longer than this are shortened in the list (full name on hover).
NAME_CHARS = 34


def default_extract_dir() -> Path:
    """Where "extract now" writes features unless told otherwise: ``<cache>/features``."""
    from napari_histokd._sample_data import cache_dir

    return cache_dir() / "features"


def remove_analysis_layers(viewer: napari.Viewer) -> int:
    """Remove every layer made by a previous Analyse run (so no stale result stays on screen)."""
    old = [layer for layer in viewer.layers if layer.metadata.get("histokd_analysis")]
    for layer in old:
        viewer.layers.remove(layer)
    if old:
        show_canvas_caption(viewer, None)
    return len(old)


def add_analysis_layers(
    viewer: napari.Viewer,
    analysis: Analysis,
    world_mpp: float,
    units: tuple[str, str] | None = None,
    slide_mpp: float | None = None,
    scale_mode: str = "slide",
    cohort: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Replace the previous run's overlays by those of ``analysis``; returns layers by kind.

    ``world_mpp`` is the slide layer's world units per level-0 pixel (its scale); ``slide_mpp``
    the slide's microns per pixel, None when unknown (kept in each layer's metadata for exports,
    which then give no physical areas). ``cohort``: the run's colour scales by map name, for
    ``scale_mode="cohort"``. Only the main map is visible; cluster layers are read-only, their
    paint tools hidden (:func:`hide_paint_controls`)."""
    remove_analysis_layers(viewer)
    added: dict[str, Any] = {}
    prefix = analysis.slide_id
    for data, kwargs, kind in explanation_layers(analysis.explanation, world_mpp, prefix=prefix, units=units,
                                                 scale_mode=scale_mode, cohort=cohort):
        kwargs["metadata"].update(explanation=analysis.explanation, slide_path=analysis.slide_path,
                                  slide_mpp=slide_mpp, histokd_analysis=True)
        layer = getattr(viewer, f"add_{kind}")(data, **kwargs)
        key = kwargs["metadata"]["histokd_kind"]
        if key == "clusters":
            read_only(layer)
            hide_paint_controls(viewer, layer)
            key = f"clusters:{kwargs['metadata']['clusters']}"
        added[key] = layer
    return added


def analyse_with_fine_maps(stride_div: int, min_tissue: float, progress=None, cancel=None,
                           cohort_maps: str | None = None, **kwargs):
    """:func:`~histokd_core.workflows.analyse_slide`, then (``stride_div`` 2 or 4) the fine
    overlap-averaged maps of :func:`~histokd_core.workflows.fine_maps.fine_maps_slide`, their
    features kept in ``<extract_to>/heatmaps``. Returns ``(Analysis, FineMaps or None, scales)``:
    ``scales`` the run's cohort-wide colour scales read from the cohort-maps folder ``cohort_maps``
    (:func:`~histokd_core.workflows.predict_cohort.run_colour_scales`; read first, so a missing
    folder fails before any work), None without it. Progress fractions are split between the
    analysis and the fine maps."""
    from histokd_core.progress import ProgressEvent
    from histokd_core.workflows.predict_cohort import check_cohort_scales, run_colour_scales

    scales = run_colour_scales(cohort_maps) if cohort_maps else None

    def part(lo: float, hi: float, label: str = ""):
        if progress is None:
            return None
        return lambda e: progress(ProgressEvent("message", lo + (hi - lo) * e.fraction, label + e.message))

    if not stride_div:
        analysis = analyse_slide(progress=progress, cancel=cancel, **kwargs)
        if scales is not None:
            check_cohort_scales(scales, analysis.explanation, cohort_maps)
        return analysis, None, scales
    from histokd_core.workflows.fine_maps import fine_maps_slide

    analysis = analyse_slide(progress=part(0.0, 0.5), cancel=cancel, **kwargs)
    if scales is not None:
        check_cohort_scales(scales, analysis.explanation, cohort_maps)
    if not kwargs.get("slide_path"):
        raise ValueError("fine maps need the slide file (open the slide with this plugin's reader)")
    fine = fine_maps_slide(kwargs["checkpoint"], kwargs["slide_path"], Path(kwargs["extract_to"]) / "heatmaps",
                           stride_div=stride_div, min_tissue=min_tissue, mpp=kwargs.get("mpp"),
                           slide_id=kwargs.get("slide_id"), device=kwargs.get("device", "auto"),
                           progress=part(0.5, 1.0, "fine map: "), cancel=cancel)
    return analysis, fine, scales


def read_only(layer) -> None:
    """Keep a Labels layer non-editable (no paint tools), also after napari resets ``editable``
    when the layer is shown again."""

    def keep(*_):
        if layer.editable:
            layer.editable = False

    layer.events.editable.connect(keep)
    layer.events.visible.connect(keep)
    keep()


#: napari's Labels controls that edit labels (attribute names of its QtLabelsControls, 0.5-0.9).
PAINT_BUTTONS = ("colormap_update", "erase_button", "paint_button", "polygon_button", "fill_button",
                 "pick_button")
PAINT_SETTINGS = ("_label_control", "_brush_size_slider_control", "_ndim_spinbox_control",
                  "_contiguous_checkbox_control", "_preserve_labels_checkbox_control",
                  "_display_selected_label_checkbox_control")


def hide_paint_controls(viewer: napari.Viewer, layer) -> None:
    """Hide the paint tools and their settings (label, brush size, contiguous, ...) of a read-only
    Labels layer in napari's layer controls. napari has no public switch for it: this reaches its
    Qt controls by their attribute names and leaves anything it does not find as it is."""
    qt_viewer = getattr(viewer.window, "_qt_viewer", None)
    controls = getattr(getattr(qt_viewer, "controls", None), "widgets", {}).get(layer)
    if controls is None:
        return
    for name in PAINT_BUTTONS:
        button = getattr(controls, name, None)
        if button is not None:
            button.setVisible(False)
    for name in PAINT_SETTINGS:
        setting = getattr(controls, name, None)
        for row in setting.get_widget_controls() if setting is not None else ():
            for widget in row:
                widget.setVisible(False)


def _swatch(rgb) -> str:
    r, g, b = (int(v) for v in rgb)
    return (f'<span style="background-color:#{r:02x}{g:02x}{b:02x}; color:#{r:02x}{g:02x}{b:02x}">'
            "&#9608;&#9608;</span>")


def memory_label(name: str) -> str:
    """``"C+2"`` -> ``"C+2 (positive-class component 2)"``."""
    if len(name) > 2 and name[0] == "C" and name[1] in "+-" and name[2:].isdigit():
        side = "positive" if name[1] == "+" else "negative"
        return f"{name} ({side}-class component {name[2:]})"
    return name


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
        self.mpp = QDoubleSpinBox(self)
        self.mpp.setRange(0.0, 100.0)
        self.mpp.setDecimals(4)
        self.mpp.setSingleStep(0.05)
        self.mpp.setSpecialValueText("required")
        self.mpp.setToolTip("microns per level-0 pixel of the slide (0.25 = 40x scan, 0.5 = 20x scan)")
        self.mpp_hint = QLabel("", self)
        self.mpp_hint.setWordWrap(True)
        self.checkpoint = QLineEdit(self)
        self.checkpoint.setPlaceholderText("fold_0/student.safetensors")
        self.features = QLineEdit(self)
        self.features.setPlaceholderText("feature store folder or .zarr/.h5/.pt")
        self.slide_id = QLineEdit(self)
        self.slide_id.setPlaceholderText("default: slide file name")
        self.extract_now = QCheckBox("extract now with the checkpoint's encoder", self)
        self.extract_to = QLineEdit(str(default_extract_dir()), self)
        self.extract_to.setToolTip("features extracted now are kept here and reused (and resumed "
                                   "after a cancel) next time")
        self.device = QComboBox(self)
        self.device.addItems(["auto", "cpu", "cuda"])
        self.scale_mode = QComboBox(self)
        self.scale_mode.addItems(["slide", "fixed", "cohort"])
        self.fine = QComboBox(self)
        self.fine.addItem("off: one square per patch", 0)
        self.fine.addItem("overlapping patches, stride patch/2", 2)
        self.fine.addItem("overlapping patches, stride patch/4", 4)
        self.fine.setToolTip("a finer map: every pixel averages the scores of all the overlapping patches "
                             "that cover it (as CLAM's heatmaps); costs 4x (patch/2) or 16x (patch/4) "
                             "the patches to extract")
        self.fine_tissue = QDoubleSpinBox(self)
        self.fine_tissue.setRange(0.0, 1.0)
        self.fine_tissue.setSingleStep(0.05)
        self.fine_tissue.setValue(0.1)
        self.fine_tissue.setToolTip("minimum tissue fraction of a heatmap patch (the training grid keeps 0.5)")
        self.scale_mode.setToolTip("slide: colour range from this slide (never stretched below 2x uniform); "
                                   "fixed: the same range for every slide (attention 0-4x uniform); "
                                   "cohort: the run's range from its test cases, the same for every "
                                   "slide (from 'all slides of this run' below: predict them first)")
        self.run_btn = QPushButton("Analyse", self)
        self.cancel_btn = QPushButton("Cancel", self)
        self.cancel_btn.setEnabled(False)
        self.bar = QProgressBar(self)
        self.bar.setRange(0, 1000)
        self.status = QLabel("", self)
        self.status.setWordWrap(True)
        self.prediction = QLabel("", self)
        self.prediction.setWordWrap(True)
        self.map = QComboBox(self)
        self.map.setToolTip("the map shown on the slide (the others are hidden)")
        self.colourbar = ColourBar(self)
        self.legend_note = QLabel("", self)
        self.legend_note.setWordWrap(True)
        self.top_list = QListWidget(self)
        self.top_list.setToolTip("click a patch to centre the view on it")
        self.top_list.setMaximumHeight(150)
        self.pathways = QListWidget(self)
        self.pathway_unit = QLabel(f"score: {PATHWAY_SCORE_UNIT}", self)
        self.pathway_unit.setWordWrap(True)
        self.clusters_legend = QLabel("", self)
        self.clusters_legend.setWordWrap(True)
        self.clusters_legend.setTextFormat(Qt.TextFormat.RichText)
        self.component = QComboBox(self)
        self.cohort_toggle = QPushButton(self)
        self.cohort_toggle.setCheckable(True)
        self.cohort_toggle.setStyleSheet("text-align: left")
        self.cohort_maps = CohortMapsPanel(self.checkpoint, self.features, self.device, self)

        form = QFormLayout()
        form.addRow("slide layer", self.slide)
        form.addRow("slide um/px", self.mpp)
        form.addRow("", self.mpp_hint)
        form.addRow("checkpoint", path_row(self.checkpoint, self._pick_checkpoint, self))
        form.addRow("features", path_row(self.features, self._pick_features, self))
        form.addRow("slide id", self.slide_id)
        form.addRow(self.extract_now)
        form.addRow("extract to", path_row(self.extract_to, self._pick_extract_to, self))
        form.addRow("device", self.device)
        form.addRow("colour scale", self.scale_mode)
        form.addRow("fine map", self.fine)
        form.addRow("heatmap min tissue", self.fine_tissue)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_btn)
        buttons.addWidget(self.cancel_btn)
        content = QWidget(self)
        layout = QVBoxLayout(content)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.bar)
        layout.addWidget(self.status)
        layout.addWidget(QLabel("<b>prediction</b>", self))
        layout.addWidget(self.prediction)
        maps = QFormLayout()
        maps.addRow("<b>map</b>", self.map)
        layout.addLayout(maps)
        layout.addWidget(self.colourbar)
        layout.addWidget(self.legend_note)
        layout.addWidget(QLabel("<b>top patches</b> of the map (click to go there)", self))
        layout.addWidget(self.top_list)
        #: the parts of the dock shown only for models that have them
        self.sections = {
            "pathways": [QLabel("<b>pathways</b> (ranked by |score|; click to show its map)", self),
                         self.pathway_unit, self.pathways],
            "clusters": [QLabel("<b>clusters</b> (patches per cluster)", self), self.clusters_legend],
            "memory": [QLabel("<b>memory component</b>", self), self.component],
        }
        for widgets in self.sections.values():
            for widget in widgets:
                layout.addWidget(widget)
                widget.setVisible(False)
        about = QLabel("maps of every slide of a cohort with this checkpoint's run, on one colour "
                       "scale (then choose colour scale: cohort)", self)
        about.setWordWrap(True)
        self.cohort_section = QWidget(self)
        section = QVBoxLayout(self.cohort_section)
        section.setContentsMargins(0, 0, 0, 0)
        section.addWidget(about)
        section.addWidget(self.cohort_maps)
        layout.addWidget(self.cohort_toggle)
        layout.addWidget(self.cohort_section)
        layout.addStretch(1)
        # a screen shorter than the dock scrolls it instead of squeezing its fields
        self.scroll = QScrollArea(self)
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.scroll.setWidget(content)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self.scroll)

        self.run_btn.clicked.connect(self.start)
        self.cancel_btn.clicked.connect(self.cancel)
        self.cohort_toggle.toggled.connect(self.show_cohort_maps)
        self.show_cohort_maps(False)
        self.slide.currentTextChanged.connect(self._on_slide_changed)
        self.map.currentIndexChanged.connect(self._on_map_changed)
        self.top_list.itemClicked.connect(lambda item: self.go_to_top_patch(self.top_list.row(item)))
        self.top_list.currentRowChanged.connect(self.go_to_top_patch)
        self.pathways.currentRowChanged.connect(self._on_pathway_row)
        self.component.currentIndexChanged.connect(self.show_component)
        self.viewer.layers.events.inserted.connect(self._refresh_slides)
        self.viewer.layers.events.removed.connect(self._refresh_slides)
        self._refresh_slides()

    def show_cohort_maps(self, shown: bool = True):
        """Unfold (or fold away) the "all slides of this run" section."""
        self.cohort_toggle.setChecked(shown)
        self.cohort_toggle.setText(("\u25be " if shown else "\u25b8 ") + "all slides of this run")
        self.cohort_section.setVisible(shown)

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        """As wide as the dock's content (with room for the scroll bar), as tall as it up to 800 px."""
        hint = self.scroll.widget().sizeHint()
        return QSize(hint.width() + self.scroll.verticalScrollBar().sizeHint().width(), min(hint.height(), 800))

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        """Never narrower than the content (it scrolls vertically, never sideways)."""
        hint = self.scroll.widget().minimumSizeHint()
        return QSize(hint.width() + self.scroll.verticalScrollBar().sizeHint().width(), 200)

    # -- inputs -------------------------------------------------------------------------------
    def _refresh_slides(self, *_):
        current = self.slide.currentText()
        self.slide.blockSignals(True)
        self.slide.clear()
        self.slide.addItems([layer.name for layer in slide_layers(self.viewer)])
        if current:
            self.slide.setCurrentText(current)
        self.slide.blockSignals(False)
        if self.slide.currentText() != current or not self.mpp_hint.text():
            self._on_slide_changed()

    def _on_slide_changed(self, *_):
        """Prefill the mpp from the slide (0 = "required" when the file has none)."""
        layer = self._slide_layer()
        if layer is None:
            self.mpp_hint.setText("")
            return
        self.mpp.setValue(float(layer.metadata.get("mpp") or 0.0))
        self.mpp_hint.setText(mpp_hint(layer.metadata))

    def _pick_checkpoint(self):
        path, _ = QFileDialog.getOpenFileName(self, "Checkpoint", "", "safetensors (*.safetensors)")
        if path:
            self.checkpoint.setText(path)

    def _pick_features(self):
        path = QFileDialog.getExistingDirectory(self, "Feature store")
        if path:
            self.features.setText(path)

    def _pick_extract_to(self):
        path = QFileDialog.getExistingDirectory(self, "Extract features into")
        if path:
            self.extract_to.setText(path)

    def _slide_layer(self):
        name = self.slide.currentText()
        if not name or name not in self.viewer.layers:
            return None
        return self.viewer.layers[name]

    # -- run ----------------------------------------------------------------------------------
    def start(self):
        """Start the analysis worker (returns it, for tests; None when an input is missing)."""
        from napari.qt.threading import create_worker

        layer = self._slide_layer()
        if layer is None:
            notify_error(ValueError("open a slide first (File > Open)"), "Analyse")
            return None
        mpp = self.mpp.value() or None
        if mpp is None:
            self.status.setText(notify_error(ValueError(
                f"{layer.name}: the slide file has no microns per pixel; enter it in 'slide um/px' "
                "(0.25 = 40x scan, 0.5 = 20x scan)"), "Analyse"))
            return None
        apply_mpp(self.viewer, layer, mpp)
        world_mpp = float(layer.scale[-1])
        units = tuple(str(u) for u in layer.units[-2:])
        slide_path = layer.metadata.get("path")
        kwargs = dict(
            checkpoint=self.checkpoint.text().strip(),
            features=None if self.extract_now.isChecked() else (self.features.text().strip() or None),
            slide_id=self.slide_id.text().strip() or (Path(slide_path).stem if slide_path else None),
            slide_path=slide_path,
            extract_to=self.extract_to.text().strip() or str(default_extract_dir()),
            device=self.device.currentText(),
            mpp=mpp,
        )
        scale_mode = self.scale_mode.currentText()
        cohort_maps = None
        if scale_mode == "cohort":
            cohort_maps = self.cohort_maps.maps_dir()
            if cohort_maps is None:
                self.status.setText(notify_error(ValueError(
                    "cohort colour scale: predict all slides of this run first (section below)"), "Analyse"))
                return None
        self._cancel.reset()
        worker = create_worker(
            analyse_with_fine_maps, int(self.fine.currentData() or 0), self.fine_tissue.value(), **kwargs,
            cohort_maps=str(cohort_maps) if cohort_maps else None,
            progress=lambda event: self.signals.progress.emit(event.fraction, event.message),
            cancel=self._cancel,
            _start_thread=False,
            _connect={"errored": self._on_error, "finished": self._on_finished,
                      "returned": lambda a: self._on_done(a, world_mpp, units, mpp, scale_mode)},
        )
        self.worker = worker
        self.run_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.status.setText("starting")
        worker.start()
        return worker

    def cancel(self):
        """Stop at the next check (every ~0.25 s of extraction); extracted patches are kept."""
        self._cancel.cancel()
        self.status.setText("cancelling...")

    def _on_progress(self, frac: float, msg: str):
        self.bar.setValue(int(frac * 1000))
        self.status.setText(msg)

    def _on_error(self, exc: BaseException):
        if isinstance(exc, Cancelled):
            self.status.setText("cancelled; the patches extracted so far are kept and reused next time")
            return
        self.status.setText(notify_error(exc, "Analyse"))

    def _on_finished(self):
        self.run_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)

    def _on_done(self, result, world_mpp: float, units: tuple[str, str] | None = None,
                 slide_mpp: float | None = None, scale_mode: str = "slide"):
        analysis, fine, cohort = result
        self.analysis = analysis
        self.layers = add_analysis_layers(self.viewer, analysis, world_mpp, units, slide_mpp, scale_mode,
                                          cohort)
        if fine is not None:
            self.add_fine_layer(fine, world_mpp, units, scale_mode, cohort)
        self.show_results()
        self.status.setText(f"{analysis.slide_id}: {len(analysis.explanation.coords)} patches")

    def add_fine_layer(self, fine, world_mpp: float, units=None, scale_mode: str = "slide", cohort=None):
        """Add the fine map of the main map (:data:`~napari_histokd._layers.MAIN_MAPS`: the
        per-patch contribution, else attention, else the top pathway, else the first memory
        component) as one multiscale layer; it becomes the shown map, the coarse one is hidden."""
        from napari_histokd._layers import fine_map_layer

        keys = list(fine.maps)
        key = next((k for k in MAIN_MAPS if k in keys), keys[0])
        data, kwargs, _ = fine_map_layer(fine, key, world_mpp, prefix=self.analysis.slide_id, units=units,
                                         scale_mode=scale_mode, cohort=cohort)
        kwargs["metadata"].update(histokd_analysis=True, coarse=key.split(":", 1)[0])
        layer = self.viewer.add_image(data, **kwargs)
        points = self.layers.get("top_patches")
        if points is not None:  # the ranked outlines stay on top of the map
            self.viewer.layers.move(self.viewer.layers.index(layer), self.viewer.layers.index(points))
        for other in self.layers.values():
            other.visible = False
        self.layers = {"fine": layer, **self.layers}
        return layer

    # -- results ------------------------------------------------------------------------------
    def show_results(self):
        """Fill the prediction, map selector, pathway list, cluster legend and component selector."""
        expl = self.analysis.explanation
        self.prediction.setText(prediction_text(expl, self.analysis.method))
        self._fill_pathways()
        legend = []
        for key, lyr in self.layers.items():
            if key.startswith("clusters:"):
                sizes, colors = lyr.metadata["legend"], lyr.metadata["colors"]
                legend.append(f"<b>{html.escape(key[9:])}</b>: " + " &nbsp; ".join(
                    f"{_swatch(colors[k])} #{k}: {v}" for k, v in sizes.items()))
        self.clusters_legend.setText("<br>".join(legend))
        shown = {"pathways": bool(expl.pathway_maps), "clusters": bool(legend),
                 "memory": expl.memory is not None and len(expl.memory) > 0}
        for name, widgets in self.sections.items():
            for widget in widgets:
                widget.setVisible(shown[name])
        self.component.blockSignals(True)
        self.component.clear()
        if expl.memory is not None:
            self.component.addItems([memory_label(n) for n in expl.memory_names])
        self.component.blockSignals(False)
        self.map.blockSignals(True)
        self.map.clear()
        for key in self.layers:
            if key != "top_patches":
                self.map.addItem(self._map_title(key), key)
        self.map.blockSignals(False)
        main = next((k for k, lyr in self.layers.items() if k != "top_patches" and lyr.visible), None)
        if main is not None:
            self.show_map(main)

    def _map_title(self, key: str) -> str:
        if key == "fine":
            return f"{self.layers['fine'].metadata['fine_map']} (fine, overlapping patches)"
        if key.startswith("clusters:"):
            return f"{key[9:]} clusters"
        if key == "memory":
            return "memory components"
        if key == "contribution":
            return "contribution per patch"
        return key

    def _fill_pathways(self):
        self.pathways.blockSignals(True)
        self.pathways.clear()
        layer = self.layers.get("pathway")
        if layer is not None:
            meta = self.analysis.meta.get("data_info", {}) if self.analysis else {}
            drivers = set(meta.get("driver_pathways", []))
            task = meta.get("task", "survival")
            score_unit = self.analysis.explanation.pathway_score_unit or PATHWAY_SCORE_UNIT
            self.pathway_unit.setText(f"score: {score_unit}")
            for rank, (name, score) in enumerate(layer.metadata["pathway_scores"].items(), 1):
                short = name if len(name) <= NAME_CHARS else name[: NAME_CHARS - 1] + "\u2026"
                item = QListWidgetItem(f"{rank}. {short}   {pathway_score_text(score, task)}")
                item.setData(Qt.ItemDataRole.UserRole, name)
                tip = f"{name}\nscore {score:+.4g}: {score_unit}"
                if name in drivers:
                    font = QFont()
                    font.setBold(True)
                    item.setFont(font)
                    item.setText(item.text() + "   [planted driver]")
                    tip += "\nplanted driver of the outcome (the data says so)"
                elif name.upper().startswith("NOISE_"):
                    item.setForeground(QBrush(QColor(140, 140, 140)))
                    tip += "\nnoise pathway (synthetic data: carries no signal)"
                item.setToolTip(tip)
                self.pathways.addItem(item)
        self.pathways.blockSignals(False)

    # -- map selection ------------------------------------------------------------------------
    def _on_map_changed(self, index: int):
        key = self.map.itemData(index)
        if key:
            self.show_map(key)

    def show_map(self, key: str):
        """Show only map ``key`` (a key of :attr:`layers`), its colour bar and its top patches."""
        for k, lyr in self.layers.items():
            if k != "top_patches":
                lyr.visible = k == key
                if hasattr(lyr, "colorbar"):
                    lyr.colorbar.visible = k == key
        index = self.map.findData(key)
        if index >= 0 and self.map.currentIndex() != index:
            self.map.blockSignals(True)
            self.map.setCurrentIndex(index)
            self.map.blockSignals(False)
        layer = self.layers[key]
        scale = layer.metadata.get("scale")
        if scale is not None:
            table = np.asarray(layer.colormap.colors)
            self.colourbar.set_scale(table, scale["low"], scale["high"], scale["unit"])
            self.colourbar.setVisible(True)
            note = f"<i>{html.escape(scale['meaning'])}</i>"
            if scale["note"]:
                note = f"<b style='color:#c05000'>{html.escape(scale['note'])}</b><br>" + note
            self.legend_note.setText(note)
            show_canvas_caption(self.viewer, canvas_caption(self._canvas_title(key), scale))
        else:
            self.colourbar.setVisible(False)
            self.legend_note.setText("cluster ids: see the legend below")
            show_canvas_caption(self.viewer, None)
        self._show_top_for(key)

    def _canvas_title(self, key: str) -> str:
        """The shown map's name for the caption over napari's colour bar (a pathway with its
        signed score in words)."""
        layer = self.layers[key]
        if key == "pathway":
            name = layer.metadata["pathway"]
            task = (self.analysis.meta.get("data_info", {}) if self.analysis else {}).get("task", "survival")
            score = layer.metadata["pathway_scores"].get(name, float("nan"))
            return f"pathway {name}, score {pathway_score_text(score, task)}"
        if key == "memory":
            return f"memory {memory_label(layer.metadata['memory_names'][int(layer.metadata['component'])])}"
        return self._map_title(key)

    def _selected_values(self, key: str) -> tuple[str | None, np.ndarray | None]:
        """(name, per-patch values in display units) of the map shown for ``key``."""
        expl = self.analysis.explanation
        n = len(expl.coords)
        if key == "fine":
            key = self.layers["fine"].metadata["coarse"]
        if key == "attention" and expl.attention is not None:
            return "attention", to_display(expl.attention, "attention", n)
        if key == "contribution" and expl.contribution is not None:
            return "contribution", np.asarray(expl.contribution, dtype=np.float64)
        if key == "pathway":
            name = self.layers["pathway"].metadata["pathway"]
            return name, to_display(expl.pathway_maps[name], expl.pathway_map_kind, n)
        if key == "memory":
            k = int(self.layers["memory"].metadata["component"])
            name = self.layers["memory"].metadata["memory_names"][k]
            return name, np.asarray(expl.memory[k], dtype=np.float64)
        return None, None

    def _show_top_for(self, key: str):
        points = self.layers.get("top_patches")
        name, values = self._selected_values(key)
        self.top_list.blockSignals(True)
        self.top_list.clear()
        self._top: list[int] = []
        if name is not None:
            expl = self.analysis.explanation
            given = expl.top_patches.get(name)
            order = np.argsort(-values, kind="stable")[:TOP_K] if given is None else np.asarray(given)[:TOP_K]
            self._top = [int(i) for i in order]
            unit = self.layers[key].metadata["scale"]["unit"]
            for rank, i in enumerate(self._top, 1):
                x, y = (int(v) for v in expl.coords[i])
                self.top_list.addItem(f"#{rank}  {values[i]:.3g} {unit}   at x={x}, y={y} px")
        self.top_list.blockSignals(False)
        if points is not None:
            world_mpp = float(points.metadata["world_mpp"])
            centres, feats = top_patch_points(self.analysis.explanation, self._top, name or "", world_mpp)
            points.data = centres
            points.features = feats
            points.metadata["map"] = name
            points.visible = bool(self._top)
            points.name = f"{self.analysis.slide_id} top patches: {name}" if name else points.name

    def go_to_top_patch(self, row: int):
        """Centre the camera on the ``row``-th top patch of the shown map and zoom to it."""
        if row < 0 or row >= len(getattr(self, "_top", [])):
            return
        expl = self.analysis.explanation
        world_mpp = float(self.layers["top_patches"].metadata["world_mpp"]) if "top_patches" in self.layers \
            else float(next(iter(self.layers.values())).metadata.get("world_mpp", 1.0))
        centre = patch_centres_world(expl.coords[[self._top[row]]], expl.patch_size, world_mpp)[0]
        self.viewer.camera.center = (*self.viewer.camera.center[:-2], *centre)
        self.viewer.camera.zoom = ZOOM_SCREEN_PX / (4.0 * expl.patch_size * world_mpp)

    # -- pathways and memory --------------------------------------------------------------------
    def _on_pathway_row(self, row: int):
        item = self.pathways.item(row)
        if item is not None:
            self.show_pathway(item.data(Qt.ItemDataRole.UserRole))

    def show_pathway(self, name: str):
        """Swap the pathway layer's data to ``name``'s precomputed grid and show it."""
        from napari_histokd._layers import layer_scale, map_opacity, scale_metadata

        layer = self.layers["pathway"]
        grid = layer.metadata["pathway_grids"][name]
        expl = self.analysis.explanation
        kind = expl.pathway_map_kind
        display = to_display(expl.pathway_maps[name], kind, len(expl.coords))
        scale = layer_scale(display, kind, layer.metadata["scale"]["mode"], f"pathway:{name}",
                            layer.metadata.get("cohort_scales"), expl.pathway_unit)
        layer.data = grid
        layer.contrast_limits = scale.contrast_limits
        layer.opacity = map_opacity(scale)
        layer.metadata["scale"] = scale_metadata(scale)
        layer.metadata["pathway"] = name
        layer.name = f"{self.analysis.slide_id} pathway: {name}"
        self.show_map("pathway")

    def show_component(self, index: int):
        """Show memory component ``index`` (swapping the layer's data), its colour bar and its
        top patches."""
        if index < 0 or "memory" not in self.layers:
            return
        layer = self.layers["memory"]
        layer.data = layer.metadata["memory_grids"][index]
        layer.metadata["component"] = index
        layer.name = f"{self.analysis.slide_id} memory: {layer.metadata['memory_names'][index]}"
        self.show_map("memory")
