"""Patch-grid arrangement from coordinates."""

import pytest
import torch

from histokd_core.errors import DataError
from histokd_core.methods.subspace.cell_map import build_cell_map, to_map


def test_irregular_coords_with_padding():
    coords = torch.tensor([[1000, 500], [1256, 500], [1000, 1268], [1768, 1012]])
    grid = build_cell_map(coords, 256)
    assert (grid.height, grid.width) == (4, 4)
    assert grid.rows.tolist() == [0, 0, 3, 2] and grid.cols.tolist() == [0, 1, 0, 3]
    feats = torch.arange(8, dtype=torch.float32).reshape(4, 2)
    fmap, mask = to_map(feats, grid)
    assert fmap.shape == (2, 4, 4) and int(mask.sum()) == 4
    torch.testing.assert_close(fmap[:, 2, 3], feats[3])
    assert float(fmap[:, 1, 1].abs().sum()) == 0.0 and not mask[1, 1]


def test_slides_side_by_side_and_shared_cells():
    coords = torch.tensor([[0, 0], [256, 256], [5000, 9000], [5000, 9000], [5256, 9000]])
    slides = torch.tensor([0, 0, 1, 1, 1])
    grid = build_cell_map(coords, 256, slides)
    assert grid.cols.tolist() == [0, 1, 3, 3, 4] and grid.rows.tolist() == [0, 1, 0, 0, 0]
    assert (grid.height, grid.width) == (2, 5)
    fmap, mask = to_map(torch.tensor([[1.0], [2.0], [3.0], [5.0], [7.0]]), grid)
    assert float(fmap[0, 0, 3]) == 4.0 and not mask[:, 2].any()


def test_bad_input_raises():
    with pytest.raises(DataError, match="coords"):
        build_cell_map(torch.zeros(0, 2), 256)
    with pytest.raises(DataError, match="patch_size"):
        build_cell_map(torch.zeros(3, 2), 0)
