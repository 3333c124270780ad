"""Export dock: Shapes and thresholded heatmaps -> QuPath GeoJSON; a heatmap's patches -> QuPath
detections; QuPath annotations -> Shapes on the slide; top-k patches -> CSV + PNG crops."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from histokd_core.errors import HistoKDError
from histokd_core.explain import threshold_regions
from histokd_core.export import (
    read_annotations,
    regions_to_annotations,
    save_patch_crops,
    top_patches_table,
    write_geojson,
    write_top_patches_csv,
)
from histokd_core.slide.geometry import qupath_to_world
from napari_histokd._geojson import annotations_to_shapes, shapes_to_annotations, slide_scale
from napari_histokd._layers import layer_raster
from napari_histokd._widgets._common import notify_error

if TYPE_CHECKING:
    import napari

HEATMAP_KINDS = ("contribution", "attention", "pathway", "memory")


class ExportWidget(QWidget):
    """Three exports; each asks before replacing an existing file."""

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.shapes = QComboBox(self)
        self.heatmap = QComboBox(self)
        self.threshold = QDoubleSpinBox(self)
        self.threshold.setDecimals(6)
        self.threshold.setRange(-1e9, 1e9)
        self.quantile = QPushButton("set to 90th percentile", self)
        self.top_k = QSpinBox(self)
        self.top_k.setRange(1, 10000)
        self.top_k.setValue(20)
        self.level = QSpinBox(self)
        self.level.setRange(0, 20)
        self.out = QLineEdit(self)
        self.out.setPlaceholderText("output file (.geojson / .csv) or folder")
        self.status = QLabel("", self)
        self.status.setWordWrap(True)
        save_shapes = QPushButton("Shapes -> GeoJSON", self)
        save_regions = QPushButton("Threshold heatmap -> regions + GeoJSON", self)
        save_top = QPushButton("Top-k patches -> CSV + PNG crops", self)
        save_detections = QPushButton("Heatmap patches -> QuPath detections", self)
        load_annotations = QPushButton("Import QuPath annotations", self)
        form = QFormLayout()
        form.addRow("shapes layer", self.shapes)
        form.addRow("heatmap layer", self.heatmap)
        form.addRow("threshold", self.threshold)
        form.addRow("", self.quantile)
        form.addRow("top k", self.top_k)
        form.addRow("crop level", self.level)
        form.addRow("output", self.out)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        for b in (save_shapes, save_regions, save_top, save_detections, load_annotations):
            layout.addWidget(b)
        layout.addWidget(self.status)
        layout.addStretch(1)
        save_shapes.clicked.connect(lambda: self._guard(self.export_shapes))
        save_regions.clicked.connect(lambda: self._guard(self.export_regions))
        save_top.clicked.connect(lambda: self._guard(self.export_top_patches))
        save_detections.clicked.connect(lambda: self._guard(self.export_detections))
        load_annotations.clicked.connect(lambda: self._guard(self.import_annotations))
        self.quantile.clicked.connect(self.set_quantile)
        self.viewer.layers.events.inserted.connect(self.refresh)
        self.viewer.layers.events.removed.connect(self.refresh)
        self.refresh()

    def refresh(self, *_):
        for combo, pick in ((self.shapes, lambda ly: ly._type_string == "shapes"),
                            (self.heatmap, lambda ly: ly.metadata.get("histokd_kind") in HEATMAP_KINDS)):
            current = combo.currentText()
            combo.clear()
            combo.addItems([ly.name for ly in self.viewer.layers if pick(ly)])
            if current:
                combo.setCurrentText(current)

    def confirm_overwrite(self, path: Path) -> bool:
        """Ask before replacing ``path`` (tests replace this method)."""
        answer = QMessageBox.question(self, "Replace file?", f"{path} exists. Replace it?")
        return answer == QMessageBox.StandardButton.Yes

    def _target(self, default_suffix: str) -> tuple[Path, bool] | None:
        text = self.out.text().strip()
        if not text:
            text, _ = QFileDialog.getSaveFileName(self, "Export to", "", f"*{default_suffix}")
            if not text:
                return None
        path = Path(text)
        if default_suffix and not path.suffix:
            path = path.with_suffix(default_suffix)
        overwrite = False
        if path.exists():
            if not self.confirm_overwrite(path):
                self.status.setText(f"kept {path} (not replaced)")
                return None
            overwrite = True
        return path, overwrite

    def _guard(self, fn):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - any failure becomes a notification, never a crash
            self.status.setText(notify_error(exc, "Export"))
        return None

    def _heatmap_layer(self):
        name = self.heatmap.currentText()
        if not name:
            raise HistoKDError("no heatmap layer: run Analyse first")
        return self.viewer.layers[name]

    def _component(self, layer) -> int:
        """The memory component a memory layer shows (0 for other maps)."""
        return int(layer.metadata.get("component", 0))

    def set_quantile(self):
        layer = self._heatmap_layer()
        grid = layer_raster(layer, self._component(layer)).grid
        self.threshold.setValue(float(np.nanpercentile(grid, 90)))

    def export_shapes(self):
        """The chosen Shapes layer -> QuPath GeoJSON."""
        name = self.shapes.currentText()
        if not name:
            raise HistoKDError("no Shapes layer to export")
        target = self._target(".geojson")
        if target is None:
            return None
        data, attrs, _ = self.viewer.layers[name].as_layer_data_tuple()
        meta = attrs.get("metadata") or {}
        if meta.get("histokd_mpp"):
            mpp, physical = float(meta["histokd_mpp"]), bool(meta.get("histokd_physical", True))
        else:
            mpp, physical = slide_scale(self.viewer) or (1.0, False)
        anns = shapes_to_annotations(list(data), attrs, mpp, physical)
        path = write_geojson(target[0], anns, overwrite=target[1])
        self.status.setText(f"{len(anns)} annotations written to {path}")
        return path

    def export_regions(self):
        """Threshold the chosen heatmap, add the regions as Shapes, write them as GeoJSON."""
        layer = self._heatmap_layer()
        world_mpp = float(layer.metadata["world_mpp"])
        raster = layer_raster(layer, self._component(layer))
        regions = threshold_regions(raster, self.threshold.value())
        if not regions:
            raise HistoKDError(f"no patch of {layer.name} reaches {self.threshold.value():.4g}")
        target = self._target(".geojson")
        if target is None:
            return None
        mpp = layer.metadata.get("slide_mpp")  # the slide's microns per pixel; None: no areas
        label = layer.name.split(" ", 1)[-1]
        anns = regions_to_annotations(regions, mpp, classification=label)
        path = write_geojson(target[0], anns, overwrite=target[1])
        polys = []
        for r in regions:
            geoms = r.polygon.geoms if r.polygon.geom_type == "MultiPolygon" else [r.polygon]
            polys += [qupath_to_world(np.asarray(g.exterior.coords)[:-1], world_mpp) for g in geoms]
        self.viewer.add_shapes(polys, shape_type="polygon", name=f"{layer.name} regions", edge_color="cyan",
                               face_color="transparent", edge_width=2 * world_mpp * raster.cell / 64,
                               units=tuple(str(u) for u in layer.units[-2:]),
                               metadata={"histokd_kind": "regions", "histokd_mpp": world_mpp,
                                         "histokd_physical": mpp is not None})
        self.status.setText(f"{len(regions)} regions written to {path}")
        return path

    def export_top_patches(self):
        """Top-k patches of the chosen heatmap -> CSV (+ PNG crops when the slide file is known)."""
        layer = self._heatmap_layer()
        expl = layer.metadata.get("explanation")
        if expl is None:
            raise HistoKDError(f"{layer.name} was not made by Analyse (no per-patch scores)")
        kind = layer.metadata["histokd_kind"]
        if kind == "pathway":
            scores = {layer.metadata["pathway"]: expl.pathway_maps[layer.metadata["pathway"]]}
        elif kind == "memory":
            k = self._component(layer)
            scores = {layer.metadata["memory_names"][k]: expl.memory[k]}
        elif kind == "contribution":
            scores = {"contribution": expl.contribution}
        else:
            scores = {"attention": expl.attention}
        rank_by = next(iter(scores))
        if expl.attention is not None:
            scores.setdefault("attention", expl.attention)
        table = top_patches_table(expl.coords, scores, rank_by, k=self.top_k.value(), clusters=expl.clusters,
                                  patch_size=expl.patch_size)
        target = self._target(".csv")
        if target is None:
            return None
        path = write_top_patches_csv(target[0], table, overwrite=target[1])
        slide_path = layer.metadata.get("slide_path")
        n_png = 0
        if slide_path:
            from histokd_core.slide import open_slide

            with open_slide(slide_path) as slide:
                files = save_patch_crops(slide, expl.coords, expl.patch_size, table["patch_index"].tolist(),
                                         path.with_suffix(""), level=min(self.level.value(), slide.level_count - 1),
                                         overwrite=target[1])
            n_png = len(files)
        self.status.setText(f"{len(table)} patches written to {path}" + (f" and {n_png} PNG crops" if n_png else ""))
        return path

    def export_detections(self):
        """One QuPath detection per patch of the analysis behind the chosen heatmap (every map in
        its measurements, cluster classes with colours; :func:`histokd_core.workflows.predict.
        write_qupath`)."""
        from histokd_core.workflows.predict import write_qupath

        layer = self._heatmap_layer()
        expl = layer.metadata.get("explanation")
        if expl is None:
            raise HistoKDError(f"{layer.name} was not made by Analyse (no per-patch scores)")
        target = self._target(".geojson")
        if target is None:
            return None
        path = write_qupath(expl, target[0], overwrite=target[1])
        self.status.setText(f"{len(expl.coords)} QuPath detections written to {path}")
        return path

    def import_annotations(self, path: str | None = None):
        """QuPath annotations (detections skipped) -> a Shapes layer on this viewer's slide."""
        if path is None:
            path, _ = QFileDialog.getOpenFileName(self, "QuPath GeoJSON", "", "*.geojson *.json")
            if not path:
                return None
        anns = read_annotations(path)
        if not anns:
            raise HistoKDError(f"{path}: no annotations (detections are not imported here)")
        mpp, physical = slide_scale(self.viewer) or (1.0, False)
        data, kwargs, _ = annotations_to_shapes(anns, mpp, name=Path(path).name, physical=physical)
        layer = self.viewer.add_shapes(data, **kwargs)
        self.status.setText(f"{len(anns)} QuPath annotations added as {layer.name}")
        return layer
