"""Heatmap -> regions: threshold a :class:`PatchRaster`, merge cells into polygons.

Polygons are in level-0 pixels with QuPath's convention (``(x, y)``, origin at the top-left
*corner* of pixel ``(0, 0)``). Each selected cell contributes the stride-sized square centred on
its patch (:meth:`PatchRaster.cell_box_level0`); the squares of one 8-connected component are
merged with shapely ``unary_union``, which gives exact rectilinear outlines (contour tracing with
``find_contours`` would cut the corners of every cell by half a cell).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.ops import unary_union
from skimage.measure import label as label_components

from histokd_core.errors import DataError
from histokd_core.explain.raster import PatchRaster


@dataclass
class Region:
    """A connected region of a thresholded heatmap.

    Attributes
    ----------
    polygon : shapely Polygon or MultiPolygon, level-0 px, corner convention.
    mean_score : mean heatmap value over the region's cells.
    n_cells : number of grid cells in the region.
    """

    polygon: Polygon | MultiPolygon
    mean_score: float
    n_cells: int

    def area_um2(self, mpp: float) -> float:
        """Area in square microns at ``mpp`` um per level-0 pixel."""
        return float(self.polygon.area) * float(mpp) ** 2


def threshold_regions(
    raster: PatchRaster,
    threshold: float,
    above: bool = True,
    min_cells: int = 1,
) -> list[Region]:
    """Regions where the heatmap is ``>= threshold`` (or ``<=`` when ``above`` is False).

    Parameters
    ----------
    raster : float heatmap (NaN = no patch, never selected).
    threshold : value in the heatmap's units.
    min_cells : drop components smaller than this many cells.

    Returns
    -------
    Regions sorted by mean score (highest first when ``above``).
    """
    grid = np.asarray(raster.grid, dtype=np.float64)
    if grid.ndim != 2:
        raise DataError(f"raster.grid: expected a 2-D heatmap, got shape {grid.shape}")
    with np.errstate(invalid="ignore"):
        mask = (grid >= threshold) if above else (grid <= threshold)
    mask &= np.isfinite(grid)
    comp, n = label_components(mask, connectivity=2, return_num=True)
    regions = []
    for k in range(1, n + 1):
        rows, cols = np.nonzero(comp == k)
        if rows.size < min_cells:
            continue
        boxes = [box(*raster.cell_box_level0(r, c)) for r, c in zip(rows, cols)]
        poly = shapely.normalize(unary_union(boxes).simplify(0))
        regions.append(Region(polygon=poly, mean_score=float(grid[rows, cols].mean()), n_cells=int(rows.size)))
    regions.sort(key=lambda r: r.mean_score, reverse=above)
    return regions


def mean_in_polygon(raster: PatchRaster, polygon: Polygon | MultiPolygon) -> float:
    """Mean heatmap value over the cells whose centre lies inside ``polygon`` (level-0 px)."""
    grid = np.asarray(raster.grid, dtype=np.float64)
    rows, cols = np.nonzero(np.isfinite(grid))
    if rows.size == 0:
        return float("nan")
    half = raster.footprint / 2.0
    cx = raster.origin_xy[0] + cols * raster.cell + half
    cy = raster.origin_xy[1] + rows * raster.cell + half
    inside = shapely.contains_xy(polygon, cx, cy)
    return float(grid[rows[inside], cols[inside]].mean()) if inside.any() else float("nan")
