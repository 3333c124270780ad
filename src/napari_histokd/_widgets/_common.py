"""Helpers shared by the dock widgets: worker signals, error notifications, slide layers."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from qtpy.QtCore import QObject, Signal

from histokd_core.errors import HistoKDError

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)


class WorkerSignals(QObject):
    """Thread-safe progress reports from a worker thread to the GUI (queued connections)."""

    progress = Signal(float, str)
    metrics = Signal(dict)


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
