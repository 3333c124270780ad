"""Helpers shared by the dock widgets: worker signals, error notifications, slide layers."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QHBoxLayout, QLineEdit, QPushButton, QWidget

from histokd_core.errors import HistoKDError
from napari_histokd._reader import NO_MPP_SUFFIX

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)


class WorkerSignals(QObject):
    """Thread-safe progress reports from a worker thread to the GUI (queued connections)."""

    progress = Signal(float, str)
    metrics = Signal(dict)


def path_row(edit: QLineEdit, pick, parent: QWidget) -> QWidget:
    """``edit`` with a "..." button beside it that calls ``pick`` (a file or folder dialog)."""
    row = QWidget(parent)
    lay = QHBoxLayout(row)
    lay.setContentsMargins(0, 0, 0, 0)
    lay.addWidget(edit)
    btn = QPushButton("...", row)
    btn.setFixedWidth(28)
    btn.clicked.connect(pick)
    lay.addWidget(btn)
    return row


def notify_error(exc: BaseException, what: str) -> str:
    """Show ``exc`` as a napari notification (never a traceback dialog); returns the message."""
    from napari.utils.notifications import show_error

    if isinstance(exc, HistoKDError):
        msg = f"{what}: {exc}"
    else:
        log.error("%s failed", what, exc_info=exc)
        msg = f"{what} failed: {type(exc).__name__}: {exc}"
    show_error(msg)
    return msg


def slide_layers(viewer: napari.Viewer) -> list:
    """Image layers that hold slides opened by this plugin's reader (or any RGB image)."""
    out = [layer for layer in viewer.layers if layer.metadata.get("histokd_kind") == "slide"]
    return out or [layer for layer in viewer.layers if getattr(layer, "rgb", False)]


def mpp_hint(metadata: dict) -> str:
    """One line next to an mpp field: where the slide's mpp comes from, or what to enter."""
    mpp, power = metadata.get("mpp"), metadata.get("magnification")
    if mpp:
        src = metadata.get("mpp_source") or "file"
        src = {"file": "from the file", "metadata": "from the file", "user": "given when opened"}.get(src, src)
        extra = f", objective {power:g}x" if power and not metadata.get("magnification_estimated") else ""
        return f"{mpp:g} um/px {src}{extra}"
    if power:
        return (f"not in the file; objective {power:g}x suggests about {10.0 / power:g} um/px "
                "(check the scanner)")
    return "not in the file: enter it (0.25 um/px = 40x scan, 0.5 um/px = 20x scan)"


def apply_mpp(viewer: napari.Viewer, layer, mpp: float) -> None:
    """Give a slide layer the user's ``mpp`` (microns per level-0 pixel): it and every overlay in
    the viewer (placed for the slide's previous scale: pixels when its file had no mpp) are
    rescaled, so overlays, the scale bar and exports carry microns and areas. No-op when the
    layer already has this mpp in microns."""
    mpp = float(mpp)
    if layer.metadata.get("mpp") == mpp and _in_microns(layer):
        return
    factor = mpp / float(layer.scale[-1])
    for other in viewer.layers:
        if other is layer or other.metadata.get("histokd_kind") == "slide":
            continue
        other.scale = (*other.scale[:-2], *(np.asarray(other.scale[-2:]) * factor))
        other.translate = (*other.translate[:-2], *(np.asarray(other.translate[-2:]) * factor))
        other.units = (*other.units[:-2], "um", "um")
        for key in ("world_mpp", "histokd_mpp"):
            if other.metadata.get(key):
                other.metadata[key] = float(other.metadata[key]) * factor
    layer.scale = (*layer.scale[:-2], mpp, mpp)
    layer.units = (*layer.units[:-2], "um", "um")
    layer.metadata.update(mpp=mpp, mpp_y=mpp, mpp_source="entered in the viewer", mpp_missing=False)
    if layer.name.endswith(NO_MPP_SUFFIX):
        layer.name = layer.name[: -len(NO_MPP_SUFFIX)]


def _in_microns(layer) -> bool:
    return str(layer.units[-1]) in ("micrometer", "um", "µm")
