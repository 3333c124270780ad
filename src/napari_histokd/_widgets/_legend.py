"""A colour bar for the dock: the shown map's colour table, its range and its unit, drawn with Qt.

napari's own layer colour bar (``layer.colorbar``) is turned on as well, but it has no unit or
title; this one says what the colours mean.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QRectF, Qt
from qtpy.QtGui import QColor, QLinearGradient, QPainter, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

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
