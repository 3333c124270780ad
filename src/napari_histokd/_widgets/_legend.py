"""Colour bars: one in the dock (the shown map's colour table, its range and its unit, drawn with
Qt), and napari's own on the canvas (``layer.colorbar``, ticks only) with a caption above it
(napari's text overlay, above the colour bar in the top-right corner) naming the map, its unit
and its range, so a screenshot of the canvas alone still says what the colours mean.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QRectF, Qt
from qtpy.QtGui import QColor, QLinearGradient, QPainter, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

#: what a signed or similarity map's sign means, added to the canvas caption.
SIGN_HINTS = {"signed": "+ raises the prediction, - lowers it",
              "contribution": "+ raises it, - lowers it; patches add up to it - bias",
              "similarity": "1 same as the component, 0 unrelated, -1 opposite"}


def canvas_caption(title: str, scale: dict) -> str:
    """The caption over napari's colour bar: the map, then its unit and range (a layer's
    ``metadata["scale"]``, see :func:`napari_histokd._layers.scale_metadata`), then the sign's
    meaning for signed maps, e.g. ``"attention\nx uniform (1/n): 0 to 2 (slide scale)"``."""
    lines = [title, scale["label"]]
    if scale.get("kind") in SIGN_HINTS:
        lines.append(SIGN_HINTS[scale["kind"]])
    return "\n".join(lines)


def show_canvas_caption(viewer, text: str | None) -> None:
    """Show ``text`` in the canvas's top-right corner, beside the layers' colour bars (None hides
    it). It is the canvas's text overlay: the dock owns it while an analysis is shown."""
    canvas = getattr(viewer, "canvas", None)  # napari >= 0.9; before, viewer.text_overlay
    overlay = canvas.overlays.text if canvas is not None else viewer.text_overlay
    if text is None:
        overlay.visible = False
        return
    if canvas is not None:
        # the caption above the bar: side by side, napari's text width estimate runs a few
        # percent short and a long caption overlaps the bar's ticks
        canvas.overlay_tiling.top_right = "vertical"
    overlay.visible = False  # napari re-tiles a corner when an overlay shows, not when its text changes
    overlay.text = text
    overlay.position = "top_right"
    overlay.font_size = 10
    overlay.visible = True

#: light H&E-like background drawn behind the bar, so transparency reads as it does on a slide.
BACKGROUND = QColor(236, 214, 226)


class ColourBar(QWidget):
    """Horizontal gradient of an RGBA table over a pink background, with low / middle / high
    ticks and the unit underneath."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.table = np.zeros((2, 4))
        self.low, self.high, self.unit = 0.0, 1.0, ""
        self.setMinimumHeight(46)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def set_scale(self, table: np.ndarray, low: float, high: float, unit: str) -> None:
        """Show ``table`` (``(n, 4)`` RGBA 0..1, low end first) from ``low`` to ``high`` ``unit``."""
        self.table = np.asarray(table, dtype=np.float64)
        self.low, self.high, self.unit = float(low), float(high), str(unit)
        self.update()

    def tick_labels(self) -> list[str]:
        """The three tick labels (low, middle, high)."""
        mid = (self.low + self.high) / 2
        return [f"{v:.3g}" for v in (self.low, mid, self.high)]

    def caption(self) -> str:
        """What is written under the bar: ``"x uniform (1/n)"``."""
        return self.unit

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt's name
        p = QPainter(self)
        w, h = self.width(), self.height()
        bar = QRectF(6, 2, w - 12, 14)
        p.fillRect(bar, BACKGROUND)
        gradient = QLinearGradient(bar.left(), 0, bar.right(), 0)
        n = len(self.table)
        for i, (r, g, b, a) in enumerate(self.table):
            gradient.setColorAt(i / max(n - 1, 1), QColor.fromRgbF(r, g, b, a))
        p.fillRect(bar, gradient)
        p.setPen(QPen(self.palette().text().color()))
        p.drawRect(bar)
        align = (Qt.AlignmentFlag.AlignLeft, Qt.AlignmentFlag.AlignHCenter, Qt.AlignmentFlag.AlignRight)
        for frac, text, flag in zip((0.0, 0.5, 1.0), self.tick_labels(), align):
            x = bar.left() + frac * bar.width()
            p.drawLine(int(x), int(bar.bottom()), int(x), int(bar.bottom()) + 3)
            box = QRectF(x - 120 * frac, bar.bottom() + 3, 120, 14)
            p.drawText(box, int(flag | Qt.AlignmentFlag.AlignTop), text)
        p.drawText(QRectF(0, bar.bottom() + 16, w, 14), int(Qt.AlignmentFlag.AlignHCenter), self.caption())
        p.end()
