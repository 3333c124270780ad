"""Static PNG overlays of per-patch maps on a slide thumbnail (for reports and the demo).

The map is rasterised with :func:`~histokd_core.explain.raster.rasterize` and drawn with
matplotlib in level-0 pixel coordinates (``extent``), so it lands on the same tissue as the
thumbnail regardless of the thumbnail's downsample. Cells without a patch stay transparent.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from histokd_core.explain.raster import rasterize
from histokd_core.io import atomic_write_bytes


def overlay_png(
    slide,
    coords: np.ndarray,
    values: np.ndarray,
    patch_size: int,
    path: str | os.PathLike,
    title: str = "",
    cmap: str = "inferno",
    alpha: float = 0.6,
    max_side: int = 1024,
    overwrite: bool = True,
) -> Path:
    """Write a PNG of ``values`` painted over the slide's thumbnail.

    Parameters
    ----------
    slide : an open :class:`~histokd_core.slide.Slide`.
    coords : ``(n, 2)`` level-0 top-left ``(x, y)`` of each patch.
    values : ``(n,)`` per-patch scores (attention, pathway map, ...).
    patch_size : patch side in level-0 pixels.
    path : output PNG (written atomically).
    title, cmap, alpha : figure title, matplotlib colormap, overlay opacity.
    max_side : longest side of the thumbnail in pixels.

    Returns
    -------
    The written path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    raster = rasterize(coords, values, patch_size)
    thumb = slide.thumbnail(max_side)
    width, height = slide.dimensions
    rows, cols = raster.shape
    pad = (raster.footprint - raster.cell) / 2.0
    x0 = raster.origin_xy[0] + pad
    y0 = raster.origin_xy[1] + pad

    aspect = height / width
    fig, ax = plt.subplots(figsize=(7.0, max(3.0, 7.0 * aspect)), dpi=120)
    ax.imshow(thumb, extent=(0, width, height, 0))
    shown = ax.imshow(
        np.ma.masked_invalid(raster.grid),
        extent=(x0, x0 + cols * raster.cell, y0 + rows * raster.cell, y0),
        cmap=cmap,
        alpha=alpha,
        interpolation="nearest",
    )
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_xlabel("x (level-0 px)")
    ax.set_ylabel("y (level-0 px)")
    if title:
        ax.set_title(title, fontsize=9)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue(), overwrite=overwrite)
