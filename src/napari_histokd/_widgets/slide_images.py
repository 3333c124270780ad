"""Slide images dock widget: show a slide's macro, thumbnail or label beside it, on request.

De-identification is on by default and then the label is never read or shown; a site can lock
it on with ``HISTOKD_DEIDENTIFY=1`` (:mod:`histokd_core.slide.associated`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from histokd_core.errors import HistoKDError
from histokd_core.slide import open_slide
from histokd_core.slide.associated import DEIDENTIFY_ENV, deidentify_locked, read_for_display
from napari_histokd._widgets._common import notify_error, slide_layers

if TYPE_CHECKING:
    import napari

NAMES = ("macro", "thumbnail", "label")


def load_associated(path: str, name: str, deidentify: bool) -> np.ndarray | str:
    """Open the slide and read one associated image for display (runs in a worker thread).

    Returns the image, or the message of a :class:`HistoKDError` (withheld label, damaged file)
    to show to the user.
    """
    try:
        with open_slide(path) as slide:
            return read_for_display(slide, name, deidentify)
    except HistoKDError as exc:
        return str(exc)


def associated_layer_data(
    image: np.ndarray, name: str, slide_layer, gap_fraction: float = 0.05
) -> tuple[np.ndarray, dict[str, Any], str]:
    """An RGB image layer placed to the right of ``slide_layer``, as tall as the slide.

    Associated images have no physical scale relation to the slide; they are shown beside it,
    scaled to the slide's world height, so they never cover tissue.
    """
    lo, hi = slide_layer.extent.world  # (ndim,) world minimum and maximum corners
    y0, y1, x1 = float(lo[-2]), float(hi[-2]), float(hi[-1])
    height = y1 - y0
    scale = height / image.shape[0]
    kwargs = {
        "name": f"{slide_layer.name} {name}",
        "rgb": True,
        "scale": (scale, scale),
        "translate": (y0, x1 + gap_fraction * height),
        "units": tuple(str(u) for u in slide_layer.units[-2:]),
        "metadata": {"histokd_kind": "associated", "associated": name, "slide": slide_layer.name},
    }
    return image, kwargs, "image"


class SlideImagesWidget(QWidget):
    """Buttons that show the selected slide's macro, thumbnail or label (label: see above)."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = viewer
        self.worker = None
        self.layer_combo = QComboBox()
        self.deidentify = QCheckBox("De-identify: never show the slide label")
        self.deidentify.setChecked(True)
        if deidentify_locked():
            self.deidentify.setEnabled(False)
            self.deidentify.setToolTip(f"locked on by the site ({DEIDENTIFY_ENV})")
        self.buttons = {name: QPushButton(f"Show {name}") for name in NAMES}
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("slide layer"))
        layout.addWidget(self.layer_combo)
        layout.addWidget(self.deidentify)
        row = QHBoxLayout()
        for name, button in self.buttons.items():
            row.addWidget(button)
            button.clicked.connect(lambda _=False, n=name: self.show_image(n))
        layout.addLayout(row)
        layout.addWidget(self.status)
        layout.addStretch()
        self.deidentify.toggled.connect(self._refresh_buttons)
        self.layer_combo.currentTextChanged.connect(self._refresh_buttons)
        viewer.layers.events.inserted.connect(self._refresh_layers)
        viewer.layers.events.removed.connect(self._refresh_layers)
        self._refresh_layers()

    def _refresh_layers(self, event=None) -> None:
        current = self.layer_combo.currentText()
        names = [layer.name for layer in slide_layers(self.viewer) if layer.metadata.get("path")]
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        self.layer_combo.addItems(names)
        if current in names:
            self.layer_combo.setCurrentText(current)
        self.layer_combo.blockSignals(False)
        self._refresh_buttons()

    def _available(self) -> list[str]:
        name = self.layer_combo.currentText()
        if not name or name not in self.viewer.layers:
            return []
        return list(self.viewer.layers[name].metadata.get("associated_images", []))

    def _refresh_buttons(self, *_) -> None:
        available = self._available()
        deid = self.deidentify.isChecked() or deidentify_locked()
        for name, button in self.buttons.items():
            withheld = name == "label" and deid
            button.setEnabled(name in available and not withheld)
            button.setToolTip(
                "withheld: de-identification is on" if withheld
                else ("" if name in available else f"this slide has no {name} image")
            )

    def show_image(self, name: str):
        """Read the associated image ``name`` in a worker and add it beside the slide."""
        from napari.qt.threading import create_worker

        slide_name = self.layer_combo.currentText()
        if not slide_name or slide_name not in self.viewer.layers:
            self.status.setText("Open a slide first.")
            return None
        layer = self.viewer.layers[slide_name]
        deid = self.deidentify.isChecked() or deidentify_locked()
        self.worker = create_worker(load_associated, layer.metadata["path"], name, deid)
        self.worker.returned.connect(lambda image: self._add(image, name, layer))
        self.worker.errored.connect(
            lambda exc: self.status.setText(notify_error(exc, f"Show {name}"))
        )
        self.status.setText(f"Reading the {name} image of {slide_name}...")
        self.worker.start()
        return self.worker

    def _add(self, image: np.ndarray | str, name: str, slide_layer) -> None:
        if isinstance(image, str):
            from napari.utils.notifications import show_warning

            self.status.setText(image)
            show_warning(image)
            return
        data, kwargs, _ = associated_layer_data(image, name, slide_layer)
        if kwargs["name"] in self.viewer.layers:
            self.viewer.layers.remove(kwargs["name"])
        self.viewer.add_image(data, **kwargs)
        self.status.setText(f"{name}: {image.shape[1]} x {image.shape[0]} px, beside the slide.")
