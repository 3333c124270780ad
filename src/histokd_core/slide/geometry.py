"""Slide and patch-grid transforms for napari, in microns, with napari's pixel-centre convention.

napari puts the *centre* of data pixel ``i`` at ``i * scale + translate`` (pixel 0 spans
``-0.5 .. 0.5`` in data units). A slide layer uses ``scale = (mpp, mpp)``, so level-0 pixel
``(x, y)`` has its centre at world ``(y * mpp, x * mpp)`` um and the slide covers
``[-0.5 * mpp, (h - 0.5) * mpp]``. Every overlay transform here follows from that (see
docs/architecture.md, "Coordinates"). Points and transforms are ``(y, x)`` like napari; patch
coordinates are level-0 top-left ``(x, y)`` like QuPath, CLAM and TRIDENT.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Transform:
    """napari ``scale`` and ``translate`` for a 2-D layer, ``(y, x)`` order, in microns."""

    scale: tuple[float, float]
    translate: tuple[float, float]

    def as_kwargs(self) -> dict[str, tuple[float, float]]:
        """``{"scale": ..., "translate": ...}`` to pass to ``viewer.add_*``."""
        return {"scale": self.scale, "translate": self.translate}

    def data_to_world(self, points_yx: np.ndarray) -> np.ndarray:
        """Map ``(n, 2)`` data coordinates to world coordinates."""
        return np.asarray(points_yx, dtype=np.float64) * self.scale + np.asarray(self.translate)

    def world_to_data(self, points_yx: np.ndarray) -> np.ndarray:
        """Map ``(n, 2)`` world coordinates back to data coordinates."""
        return (np.asarray(points_yx, dtype=np.float64) - np.asarray(self.translate)) / self.scale


def slide_transform(mpp: float | None) -> Transform:
    """The slide layer: level-0 px at ``mpp`` um/px (1.0, i.e. pixel units, when mpp is unknown)."""
    m = float(mpp) if mpp else 1.0
    return Transform(scale=(m, m), translate=(0.0, 0.0))


def level_transform(downsample: float, mpp: float | None) -> Transform:
    """A layer holding one pyramid level alone, aligned with the level-0 slide layer."""
    m = float(mpp) if mpp else 1.0
    s = float(downsample) * m
    t = (float(downsample) - 1.0) / 2.0 * m
    return Transform(scale=(s, s), translate=(t, t))


def grid_transform(
    stride_level0: float,
    patch_size_level0: float,
    mpp: float | None,
    origin_xy: tuple[float, float] = (0.0, 0.0),
) -> Transform:
    """A per-patch raster (one data pixel per patch, first patch top-left at ``origin_xy``).

    ``scale = s * mpp`` and ``translate = (origin + (P - 1) / 2) * mpp``, so each cell's centre
    lands on the centre of its patch's footprint.
    """
    m = float(mpp) if mpp else 1.0
    s = float(stride_level0) * m
    half = (float(patch_size_level0) - 1.0) / 2.0
    x0, y0 = origin_xy
    return Transform(scale=(s, s), translate=((y0 + half) * m, (x0 + half) * m))


def patch_centres_world(
    coords_xy: np.ndarray, patch_size_level0: float, mpp: float | None
) -> np.ndarray:
    """World ``(n, 2)`` ``(y, x)`` um of the centres of patches with level-0 top-left ``(x, y)``."""
    m = float(mpp) if mpp else 1.0
    c = np.asarray(coords_xy, dtype=np.float64).reshape(-1, 2)
    half = (float(patch_size_level0) - 1.0) / 2.0
    return np.stack([(c[:, 1] + half) * m, (c[:, 0] + half) * m], axis=1)


def patch_rectangles_world(
    coords_xy: np.ndarray, patch_size_level0: float, mpp: float | None
) -> np.ndarray:
    """World ``(n, 4, 2)`` ``(y, x)`` um corners of patch footprints (outer pixel edges).

    Patch ``(x, y)`` covers level-0 pixels ``x .. x + P - 1``, whose outer edges are at
    ``x - 0.5`` and ``x + P - 0.5`` in data units.
    """
    m = float(mpp) if mpp else 1.0
    c = np.asarray(coords_xy, dtype=np.float64).reshape(-1, 2)
    y0, x0 = (c[:, 1] - 0.5) * m, (c[:, 0] - 0.5) * m
    y1, x1 = (c[:, 1] + patch_size_level0 - 0.5) * m, (c[:, 0] + patch_size_level0 - 0.5) * m
    corners = [(y0, x0), (y0, x1), (y1, x1), (y1, x0)]
    return np.stack([np.stack(c, axis=1) for c in corners], axis=1)


def box_world(x0: float, y0: float, x1: float, y1: float, mpp: float | None) -> np.ndarray:
    """World ``(4, 2)`` ``(y, x)`` um corners of the level-0 pixel box ``[x0, x1) x [y0, y1)``."""
    m = float(mpp) if mpp else 1.0
    top, left, bottom, right = (y0 - 0.5) * m, (x0 - 0.5) * m, (y1 - 0.5) * m, (x1 - 0.5) * m
    return np.array([[top, left], [top, right], [bottom, right], [bottom, left]], dtype=np.float64)


def world_to_level0(points_yx_um: np.ndarray, mpp: float | None) -> np.ndarray:
    """World ``(y, x)`` um to level-0 pixel ``(x, y)`` (pixel centres at integers)."""
    m = float(mpp) if mpp else 1.0
    p = np.asarray(points_yx_um, dtype=np.float64).reshape(-1, 2) / m
    return p[:, ::-1].copy()


def world_to_qupath(points_yx: np.ndarray, mpp: float) -> np.ndarray:
    """World ``(n, 2)`` ``(y, x)`` um -> QuPath level-0 ``(n, 2)`` ``(x, y)`` px.

    QuPath puts the image origin at the top-left *corner* of pixel (0, 0), napari at its centre:
    QuPath coordinates are :func:`world_to_level0` plus 0.5.
    """
    p = np.asarray(points_yx, dtype=np.float64) / float(mpp)
    return p[:, ::-1] + 0.5


def qupath_to_world(points_xy: np.ndarray, mpp: float) -> np.ndarray:
    """QuPath level-0 ``(x, y)`` px -> world ``(y, x)`` um (inverse of :func:`world_to_qupath`)."""
    p = np.asarray(points_xy, dtype=np.float64) - 0.5
    return p[:, ::-1] * float(mpp)


def infer_stride(coords: np.ndarray, default: int | None = None) -> int | None:
    """The most common step between neighbouring patches of one row or one column (level-0 px).

    ``coords`` are ``(n, 2)`` level-0 top-left ``(x, y)``. Overlapping grids (stride < patch size)
    are recognised; offsets *between* lattices (CLAM tiles each tissue contour from its own
    corner) are not mistaken for the stride because only neighbours within a row/column count.
    Isolated patches give ``default``.
    """
    c = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    steps = []
    for along, across in ((0, 1), (1, 0)):
        order = np.lexsort((c[:, along], c[:, across]))
        s = c[order]
        same = s[1:, across] == s[:-1, across]
        d = (s[1:, along] - s[:-1, along])[same]
        steps.append(d[d > 0])
    d = np.concatenate(steps)
    if d.size == 0:
        return None if default is None else int(default)
    vals, counts = np.unique(d, return_counts=True)
    return int(vals[np.argmax(counts)])
