"""Integer cluster maps (tumor / TME clusters, memory-component assignments) on a grid.

Cluster id ``k >= 0`` becomes label ``k + 1`` so that 0 is the background (napari Labels'
convention); patches with id ``-1`` (no cluster) stay background.
"""

from __future__ import annotations

import numpy as np

from histokd_core.errors import DataError
from histokd_core.explain.raster import (
    MAX_CELLS,
    PatchRaster,
    _check,
    _grid_shape,
    _layout,
    covered_cells,
    make_raster,
)

#: tab10 colours, RGB 0..255 (colour-blind-safe enough for <= 10 clusters, cycled beyond).
PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]  # fmt: skip


def rasterize_labels(
    coords: np.ndarray,
    labels: np.ndarray,
    patch_size: int,
    stride: int | None = None,
    max_cells: int = MAX_CELLS,
) -> PatchRaster:
    """Paint per-patch cluster ids onto a grid (same layout rules as :func:`rasterize`).

    Parameters
    ----------
    coords : ``(n, 2)`` level-0 top-left ``(x, y)``.
    labels : ``(n,)`` int cluster id per patch, -1 for none.
    patch_size : patch side in level-0 pixels.

    Returns
    -------
    PatchRaster whose grid is int32 with ``id + 1`` per cell and 0 as background. Where patch
    footprints overlap (fine mode), a cell takes the label of the patch whose centre is nearest.
    """
    lab = np.asarray(labels).ravel()
    if lab.size and not np.issubdtype(lab.dtype, np.integer):
        if not np.all(np.equal(np.mod(lab, 1), 0)):
            raise DataError("labels: expected integer cluster ids per patch")
        lab = lab.astype(np.int64)
    c = _check(coords, lab.size, patch_size)
    patch_size = int(patch_size)
    mode, exact, cell, foot, origin, cells = _layout(c, patch_size, stride, max_cells)
    shape = _grid_shape(c, patch_size, origin, cell, mode, cells)
    grid = np.zeros(shape, dtype=np.int32)
    if mode == "lattice":
        grid[cells[:, 1], cells[:, 0]] = lab + 1
    else:
        idx, rows, cols = covered_cells(c, patch_size, origin, cell, shape)
        centre = c[idx] + patch_size / 2.0
        cx = origin[0] + (cols + 0.5) * cell
        cy = origin[1] + (rows + 0.5) * cell
        dist = (cx - centre[:, 0]) ** 2 + (cy - centre[:, 1]) ** 2
        order = np.argsort(-dist, kind="stable")  # nearest written last wins
        grid[rows[order], cols[order]] = lab[idx[order]] + 1
    return make_raster(grid, origin, cell, foot, mode, exact, cells)


def cluster_sizes(labels: np.ndarray) -> dict[int, int]:
    """Number of patches per cluster id (ids >= 0 only), sorted by id."""
    lab = np.asarray(labels).ravel().astype(np.int64)
    ids, counts = np.unique(lab[lab >= 0], return_counts=True)
    return {int(i): int(n) for i, n in zip(ids, counts)}


def label_color(cluster_id: int) -> tuple[int, int, int]:
    """RGB 0..255 colour of a cluster id (the same in the viewer and in exported GeoJSON)."""
    return PALETTE[int(cluster_id) % len(PALETTE)]
