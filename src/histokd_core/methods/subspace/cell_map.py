"""Arrange a bag's patch features on their spatial grid (for deformable sampling).

The public DML code reshapes exactly 2500 patches, in list order, into a 50 x 50 map. Here the
map comes from the patches' level-0 coordinates: ``col = round((x - x_min) / patch_size)``,
``row = round((y - y_min) / patch_size)`` per slide, so any tissue shape works; cells without a
patch are padding (mask False, feature 0). Several slides of one case are placed side by side
(left to right, in ``slide_index`` order, top-aligned) with one empty column between them, so
one case is one map. Patches that fall in the same cell (overlapping tiling) share the cell,
whose feature is their mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from histokd_core.errors import DataError


@dataclass
class CellMap:
    """Cell of every patch on a ``(height, width)`` map.

    Attributes
    ----------
    rows, cols : ``(n,)`` int64 cell of each patch; height, width : map size in cells.
    """

    rows: torch.Tensor
    cols: torch.Tensor
    height: int
    width: int

    @property
    def flat(self) -> torch.Tensor:
        """``(n,)`` row-major cell index ``row * width + col`` of every patch."""
        return self.rows * self.width + self.cols

    def mask(self) -> torch.Tensor:
        """``(height, width)`` bool, True where at least one patch lies."""
        m = torch.zeros(self.height * self.width, dtype=torch.bool, device=self.rows.device)
        m[self.flat] = True
        return m.view(self.height, self.width)


def build_cell_map(
    coords: torch.Tensor, patch_size: int, slide_index: torch.Tensor | None = None, gap: int = 1
) -> CellMap:
    """Grid cells of patches from level-0 top-left coords ``(n, 2)`` ``(x, y)`` in pixels.

    ``patch_size`` is the level-0 side (pixels) of one cell; ``slide_index (n,)`` splits the
    patches into slides placed side by side, ``gap`` empty columns apart.
    """
    if coords.dim() != 2 or coords.shape[1] != 2 or coords.shape[0] == 0:
        raise DataError(
            f"bag coords must be a non-empty (n, 2) array of (x, y), got {tuple(coords.shape)}"
        )
    if patch_size <= 0:
        raise DataError(f"bag patch_size must be a positive number of pixels, got {patch_size}")
    coords = coords.long()
    n = coords.shape[0]
    if slide_index is None:
        slide_index = torch.zeros(n, dtype=torch.long, device=coords.device)
    if slide_index.shape[0] != n:
        raise DataError(f"bag slide_index has {slide_index.shape[0]} entries for {n} patches")
    rows = torch.empty(n, dtype=torch.long, device=coords.device)
    cols = torch.empty(n, dtype=torch.long, device=coords.device)
    offset, height = 0, 0
    for s in torch.unique(slide_index).tolist():
        sel = slide_index == s
        c = coords[sel]
        cc = torch.round((c[:, 0] - c[:, 0].min()).double() / patch_size).long()
        rr = torch.round((c[:, 1] - c[:, 1].min()).double() / patch_size).long()
        cols[sel] = cc + offset
        rows[sel] = rr
        offset += int(cc.max()) + 1 + gap
        height = max(height, int(rr.max()) + 1)
    return CellMap(rows, cols, height, offset - gap)


def to_map(feats: torch.Tensor, grid: CellMap) -> tuple[torch.Tensor, torch.Tensor]:
    """Scatter patch features ``(n, d)`` onto the grid.

    Returns
    -------
    feature map ``(d, height, width)`` (mean of the patches in a cell, 0 in padding) and
    mask ``(height, width)`` bool.
    """
    n, d = feats.shape
    cells = grid.height * grid.width
    flat = grid.flat
    total = torch.zeros(cells, d, dtype=feats.dtype, device=feats.device).index_add(0, flat, feats)
    count = torch.zeros(cells, dtype=feats.dtype, device=feats.device).index_add(
        0, flat, torch.ones(n, dtype=feats.dtype, device=feats.device)
    )
    fmap = total / count.clamp_min(1)[:, None]
    return fmap.t().reshape(d, grid.height, grid.width), (count > 0).view(grid.height, grid.width)
