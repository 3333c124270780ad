"""Per-patch values -> a small 2-D grid aligned to the slide (level-0 pixels).

Two cases:

* **lattice** (TRIDENT, our own ``patch_grid``): every ``(x - x0)`` and ``(y - y0)`` is a multiple
  of the stride, so one grid cell per lattice position is exact. Cell ``(r, c)`` stands for the
  patch whose top-left is ``(x0 + c * stride, y0 + r * stride)``; its centre is the patch centre.
* **fine** (CLAM starts a lattice at each tissue contour's bounding box, so patches of different
  contours are offset by arbitrary amounts): the grid cell is the greatest common divisor of all
  offsets, the stride and the patch size, and each patch *footprint* ``[x, x + P) x [y, y + P)``
  is painted onto that finer grid; cells covered by several patches take the mean. When the gcd
  would give more than ``max_cells`` cells, the cell is enlarged and a cell is painted when its
  centre lies inside a footprint (error below half a cell; ``exact`` is then False).

Either way :attr:`PatchRaster.cell` and :attr:`PatchRaster.footprint` feed
:func:`histokd_core.slide.geometry.grid_transform` to place the grid in napari.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import reduce
from typing import Literal

import numpy as np

from histokd_core.errors import DataError
from histokd_core.slide.geometry import Transform, grid_transform, infer_stride

#: grids larger than this switch the fine mode to an approximate, coarser cell.
MAX_CELLS = 16_000_000


@dataclass
class PatchRaster:
    """A per-patch map on a regular grid.

    Attributes
    ----------
    grid : ``(rows, cols)`` float64 (NaN where no patch) or int (labels, 0 where no patch).
    origin_xy : level-0 ``(x, y)`` of the top-left corner of cell ``(0, 0)``'s footprint.
    cell : grid step in level-0 pixels.
    footprint : side in level-0 pixels of the square that one cell represents (the patch size
        in lattice mode, ``cell`` in fine mode).
    mode : "lattice" or "fine".
    exact : False only when the fine grid was coarsened to stay under ``max_cells``.
    patch_cells : ``(n, 2)`` int ``(row, col)`` of the cell holding each patch's top-left corner.
    """

    grid: np.ndarray
    origin_xy: tuple[float, float]
    cell: float
    footprint: float
    mode: Literal["lattice", "fine"]
    exact: bool
    patch_cells: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.grid.shape)  # type: ignore[return-value]

    def transform(self, mpp: float | None) -> Transform:
        """napari ``scale``/``translate`` (microns) placing the grid on a slide layer."""
        return grid_transform(self.cell, self.footprint, mpp, self.origin_xy)

    def cell_box_level0(self, row: int, col: int) -> tuple[float, float, float, float]:
        """Level-0 ``(x0, y0, x1, y1)`` (corner convention) of the stride-sized box centred on a cell.

        Adjacent boxes tile the plane without gaps, which is what region polygons need.
        """
        half_pad = (self.footprint - self.cell) / 2.0
        x0 = self.origin_xy[0] + col * self.cell + half_pad
        y0 = self.origin_xy[1] + row * self.cell + half_pad
        return (x0, y0, x0 + self.cell, y0 + self.cell)


def _check(coords: np.ndarray, n_values: int, patch_size: float) -> np.ndarray:
    c = np.asarray(coords)
    if c.ndim != 2 or c.shape[1] != 2:
        raise DataError(f"coords: expected shape (n, 2) level-0 (x, y), got {c.shape}")
    if c.shape[0] != n_values:
        raise DataError(f"values: expected {c.shape[0]} values (one per patch), got {n_values}")
    if c.shape[0] == 0:
        raise DataError("coords: no patches to rasterise")
    if not patch_size or patch_size <= 0:
        raise DataError(f"patch_size: expected a positive level-0 pixel size, got {patch_size}")
    return np.rint(c).astype(np.int64)


def is_lattice(coords: np.ndarray, stride: int) -> bool:
    """Whether all patches lie on one lattice of step ``stride`` starting at the minimum corner."""
    off = coords - coords.min(axis=0)
    return bool(np.all(off % stride == 0))


def _gcd_cell(coords: np.ndarray, stride: int, patch_size: int) -> int:
    off = (coords - coords.min(axis=0)).ravel()
    vals = np.unique(np.concatenate([off[off > 0], [stride, patch_size]]))
    return int(reduce(math.gcd, (int(v) for v in vals)))


def _footprint_cells(
    coords: np.ndarray, patch_size: int, origin: np.ndarray, cell: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(patch index, row, col) of every fine cell whose centre lies in a patch footprint."""
    start = np.ceil((coords - origin) / cell - 0.5).astype(np.int64)
    stop = np.ceil((coords + patch_size - origin) / cell - 0.5).astype(np.int64)
    span = int((stop - start).max())
    k = np.arange(span)
    cols = start[:, None, 0, None] + k[None, None, :]  # (n, 1, span)
    rows = start[:, None, 1, None] + k[None, :, None]  # (n, span, 1)
    ok = (cols < stop[:, None, 0, None]) & (rows < stop[:, None, 1, None])
    cols = np.broadcast_to(cols, ok.shape)[ok]
    rows = np.broadcast_to(rows, ok.shape)[ok]
    idx = np.broadcast_to(np.arange(len(coords))[:, None, None], ok.shape)[ok]
    return idx, rows, cols


def _layout(coords: np.ndarray, patch_size: int, stride: int | None, max_cells: int):
    stride = int(stride) if stride else infer_stride(coords, patch_size)
    origin = coords.min(axis=0).astype(np.float64)
    if is_lattice(coords, stride):
        cells = (coords - origin).astype(np.int64) // stride
        return "lattice", True, float(stride), float(patch_size), origin, cells
    cell = float(_gcd_cell(coords, stride, patch_size))
    extent = coords.max(axis=0) + patch_size - origin
    exact = True
    n_cells = float(np.prod(np.ceil(extent / cell)))
    if n_cells > max_cells:
        cell = float(np.ceil(cell * math.sqrt(n_cells / max_cells)))
        exact = False
    cells = np.floor((coords - origin) / cell).astype(np.int64)
    return "fine", exact, cell, cell, origin, cells


def _grid_shape(coords, patch_size, origin, cell, mode, cells) -> tuple[int, int]:
    if mode == "lattice":
        return int(cells[:, 1].max()) + 1, int(cells[:, 0].max()) + 1
    far = coords.max(axis=0) + patch_size - origin
    w, h = np.ceil(far / cell).astype(int)
    return int(h), int(w)


def covered_cells(
    coords: np.ndarray, patch_size: int, origin, cell: float, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fine mode: ``(patch index, row, col)`` of every grid cell a patch footprint covers."""
    idx, rows, cols = _footprint_cells(coords, patch_size, origin, cell)
    keep = (rows >= 0) & (rows < shape[0]) & (cols >= 0) & (cols < shape[1])
    return idx[keep], rows[keep], cols[keep]


def make_raster(grid, origin, cell, footprint, mode, exact, cells) -> PatchRaster:
    """A :class:`PatchRaster` from a painted grid and the layout of :func:`rasterize`."""
    return PatchRaster(
        grid=grid,
        origin_xy=(float(origin[0]), float(origin[1])),
        cell=cell,
        footprint=footprint,
        mode=mode,
        exact=exact,
        patch_cells=np.stack([cells[:, 1], cells[:, 0]], axis=1),
    )


def rasterize(
    coords: np.ndarray,
    values: np.ndarray,
    patch_size: int,
    stride: int | None = None,
    max_cells: int = MAX_CELLS,
) -> PatchRaster:
    """Paint per-patch ``values`` onto a grid aligned with the slide.

    Parameters
    ----------
    coords : ``(n, 2)`` level-0 top-left ``(x, y)`` of each patch.
    values : ``(n,)`` float, one value per patch (NaN values stay NaN).
    patch_size : patch side in level-0 pixels.
    stride : lattice step in level-0 pixels; inferred from the coords when None.
    max_cells : upper bound on the fine grid's size (see the module docstring).

    Returns
    -------
    PatchRaster with a float64 grid, NaN where no patch lies. Duplicate or overlapping patches
    are averaged.
    """
    vals = np.asarray(values, dtype=np.float64).ravel()
    c = _check(coords, vals.size, patch_size)
    patch_size = int(patch_size)
    mode, exact, cell, foot, origin, cells = _layout(c, patch_size, stride, max_cells)
    shape = _grid_shape(c, patch_size, origin, cell, mode, cells)
    total = np.zeros(shape)
    count = np.zeros(shape)
    if mode == "lattice":
        idx, rows, cols = np.arange(len(c)), cells[:, 1], cells[:, 0]
    else:
        idx, rows, cols = covered_cells(c, patch_size, origin, cell, shape)
    np.add.at(total, (rows, cols), vals[idx])
    np.add.at(count, (rows, cols), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        grid = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return make_raster(grid, origin, cell, foot, mode, exact, cells)
