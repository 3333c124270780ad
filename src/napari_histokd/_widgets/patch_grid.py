"""Patch-grid dock widget: tissue patches of the selected slide layer, drawn as squares on it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from histokd_core.errors import HistoKDError
from histokd_core.slide import PatchGrid, open_slide, patch_centres_world, patch_grid
from napari_histokd._widgets._common import apply_mpp, mpp_hint

if TYPE_CHECKING:
    import napari


def compute_patch_grid(
    path: str, mpp: float | None, target_mpp: float, patch_px: int, min_tissue: float
) -> PatchGrid:
    """Open the slide, detect tissue and compute its patch grid (runs in a worker thread)."""
    with open_slide(path, mpp=mpp) as slide:
        return patch_grid(slide, target_mpp=target_mpp, patch_px=patch_px, min_tissue=min_tissue)


@dataclass(frozen=True)
class _Failure:
    """A user-facing error from the worker (superqt re-raises returned exceptions)."""

    message: str


def _compute_or_error(*args) -> PatchGrid | _Failure:
    """:func:`compute_patch_grid`, returning (not raising) errors meant for the user."""
    try:
        return compute_patch_grid(*args)
    except HistoKDError as exc:
        return _Failure(str(exc))


def grid_layer_data(
    grid: PatchGrid, name: str = "patch grid", world_mpp: float | None = None
) -> tuple[Any, dict[str, Any], str]:
    """A Points layer with one square per patch, centred on its footprint.

    ``world_mpp`` is the slide layer's world units per level-0 pixel (its ``scale``): the
    grid's mpp for a slide opened in microns, 1.0 for one shown in pixels because its file
    had no mpp. Points (rather than Shapes) stay fast for 100k patches; ``features`` hold the
    level-0 ``x, y`` and the tissue fraction of each patch.
    """
    unit = grid.mpp if world_mpp is None else world_mpp
    centres = patch_centres_world(grid.coords, grid.patch_size_level0, unit)
    kwargs = {
        "name": name,
        "symbol": "square",
        "size": grid.patch_size_level0 * unit,
        "face_color": [1.0, 0.85, 0.0, 0.15],
        "border_color": [1.0, 0.85, 0.0, 0.9],
        "border_width": 0.04,
        "features": {
            "x": grid.coords[:, 0],
            "y": grid.coords[:, 1],
            "tissue_fraction": grid.tissue_fraction,
        },
        "metadata": {**grid.info(), "histokd_kind": "patch_grid"},
    }
    if world_mpp is None or world_mpp == grid.mpp:
        kwargs["units"] = ("um", "um")
    return centres, kwargs, "points"


class PatchGridWidget(QWidget):
    """Compute the patch grid of a slide layer in a background thread and overlay it."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = viewer
        self.worker = None
        self.layer_combo = QComboBox()
        self.target_mpp = QDoubleSpinBox(
            minimum=0.05, maximum=64.0, value=0.5, singleStep=0.25, decimals=3
        )
        self.target_mpp.setToolTip("microns per pixel of the patches: 0.5 = 20x, 1.0 = 10x")
        self.patch_px = QSpinBox(minimum=8, maximum=8192, value=256, singleStep=32)
        self.min_tissue = QDoubleSpinBox(minimum=0.0, maximum=1.0, value=0.5, singleStep=0.05)
        self.mpp = QDoubleSpinBox(
            minimum=0.0, maximum=100.0, value=0.0, decimals=4, singleStep=0.05
        )
        self.mpp.setSpecialValueText("required")
        self.mpp.setToolTip("microns per level-0 pixel of the slide (prefilled from the file; "
                            "0.25 = 40x scan, 0.5 = 20x scan)")
        self.mpp_hint = QLabel("")
        self.mpp_hint.setWordWrap(True)
        self.run_button = QPushButton("Compute patch grid")
        self.status = QLabel("")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("slide layer", self.layer_combo)
        form.addRow("target um/px", self.target_mpp)
        form.addRow("patch px", self.patch_px)
        form.addRow("min tissue", self.min_tissue)
        form.addRow("slide um/px", self.mpp)
        form.addRow("", self.mpp_hint)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.run_button)
        layout.addWidget(self.status)
        layout.addStretch()

        self.run_button.clicked.connect(self.start)
        self.layer_combo.currentTextChanged.connect(self._prefill_mpp)
        viewer.layers.events.inserted.connect(self._refresh_layers)
        viewer.layers.events.removed.connect(self._refresh_layers)
        self._refresh_layers()

    def _slide_layers(self) -> list:
        return [
            layer
            for layer in self.viewer.layers
            if layer.metadata.get("histokd_kind") == "slide" and layer.metadata.get("path")
        ]

    def _refresh_layers(self, event=None) -> None:
        current = self.layer_combo.currentText()
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        names = [layer.name for layer in self._slide_layers()]
        self.layer_combo.addItems(names)
        if current in names:
            self.layer_combo.setCurrentText(current)
        elif getattr(getattr(event, "value", None), "name", None) in names:
            self.layer_combo.setCurrentText(event.value.name)
        self.layer_combo.blockSignals(False)
        if self.layer_combo.currentText() != current:
            self._prefill_mpp()

    def _prefill_mpp(self, *_) -> None:
        """The slide's mpp (0 = "required" when its file has none) and where it comes from."""
        name = self.layer_combo.currentText()
        if not name or name not in self.viewer.layers:
            self.mpp_hint.setText("")
            return
        meta = self.viewer.layers[name].metadata
        self.mpp.setValue(float(meta.get("mpp") or 0.0))
        self.mpp_hint.setText(mpp_hint(meta))

    def start(self):
        """Start the computation for the selected layer; returns the worker (or None)."""
        from napari.qt.threading import create_worker

        name = self.layer_combo.currentText()
        if not name or name not in self.viewer.layers:
            self.status.setText("Open a slide first (File > Open, or the sample slide).")
            return None
        layer = self.viewer.layers[name]
        mpp = self.mpp.value() or None
        if mpp is None:
            self.status.setText(
                f"Error: {name} has no microns per pixel in its file; enter it in 'slide um/px' "
                "(0.25 = 40x scan, 0.5 = 20x scan), or run `histokd tile SLIDE --mpp 0.25`."
            )
            return None
        apply_mpp(self.viewer, layer, mpp)
        name = layer.name
        self.worker = create_worker(
            _compute_or_error,
            layer.metadata["path"],
            mpp,
            self.target_mpp.value(),
            self.patch_px.value(),
            self.min_tissue.value(),
        )
        world_mpp = float(layer.scale[-1])
        self.worker.returned.connect(lambda result: self._show(result, name, world_mpp))
        self.worker.finished.connect(lambda: self.run_button.setEnabled(True))
        self.run_button.setEnabled(False)
        self.status.setText(f"Computing the patch grid of {name}...")
        self.worker.start()
        return self.worker

    def _show(self, result: PatchGrid | _Failure, slide_name: str, world_mpp: float) -> None:
        if isinstance(result, _Failure):
            from napari.utils.notifications import show_warning

            self.status.setText(f"Error: {result.message}")
            show_warning(result.message)
            return
        grid = result
        data, kwargs, _ = grid_layer_data(grid, f"{slide_name} patches", world_mpp)
        if kwargs["name"] in self.viewer.layers:
            self.viewer.layers.remove(kwargs["name"])
        self.viewer.add_points(data, **kwargs)
        self.status.setText(
            f"{len(grid)} patches of {grid.patch_px} px at {grid.target_mpp:g} um/px "
            f"({grid.patch_size_level0} level-0 px)."
        )
