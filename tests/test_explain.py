"""Rasterisation of per-patch maps, cluster maps and thresholded regions."""

import numpy as np
import pytest
from shapely.geometry import box

from histokd_core.errors import DataError
from histokd_core.explain import (
    cluster_sizes,
    is_lattice,
    mean_in_polygon,
    rasterize,
    rasterize_labels,
    threshold_regions,
)
from histokd_core.slide.geometry import infer_stride, patch_centres_world


def test_lattice_is_exact_and_nan_elsewhere():
    coords = np.array([[100, 50], [356, 50], [100, 562]])  # P = stride = 256, hole at (1, 1)
    r = rasterize(coords, [1.0, 2.0, 3.0], patch_size=256)
    assert r.mode == "lattice" and r.exact
    assert r.origin_xy == (100.0, 50.0) and r.cell == 256 and r.footprint == 256
    assert r.grid.shape == (3, 2)
    assert r.grid[0, 0] == 1.0 and r.grid[0, 1] == 2.0 and r.grid[2, 0] == 3.0
    assert np.isnan(r.grid[1, 0]) and np.isnan(r.grid[2, 1])
    np.testing.assert_array_equal(r.patch_cells, [[0, 0], [0, 1], [2, 0]])


def test_lattice_cell_centres_land_on_patch_centres_in_microns():
    rng = np.random.default_rng(0)
    coords = np.stack(np.meshgrid(np.arange(5) * 128 + 32, np.arange(4) * 128 + 8), -1).reshape(-1, 2)
    coords = coords[rng.permutation(len(coords))[:15]]
    r = rasterize(coords, np.arange(15.0), patch_size=256, stride=128)  # overlapping patches
    t = r.transform(mpp=0.5)
    world = t.data_to_world(r.patch_cells.astype(float))
    np.testing.assert_allclose(world, patch_centres_world(coords, 256, 0.5))


def test_duplicate_patches_are_averaged():
    r = rasterize(np.array([[0, 0], [0, 0], [256, 0]]), [1.0, 3.0, 5.0], patch_size=256)
    np.testing.assert_allclose(r.grid, [[2.0, 5.0]])


def test_clam_style_offsets_fall_back_to_fine_grid():
    # two contours whose lattices start 64 px apart: not one global lattice
    coords = np.array([[0, 0], [256, 0], [1024 + 64, 64], [1024 + 64 + 256, 64]])
    assert not is_lattice(coords, infer_stride(coords, 256))
    r = rasterize(coords, [1.0, 2.0, 3.0, 4.0], patch_size=256)
    assert r.mode == "fine" and r.exact and r.cell == 64 and r.footprint == 64
    # each patch paints exactly its footprint: 4 x 4 cells of 64 px
    assert np.isfinite(r.grid).sum() == 4 * 16
    # level-0 pixel (1088 + 10, 64 + 200) is inside patch 3 only
    col, row = (1098 - r.origin_xy[0]) // r.cell, (264 - r.origin_xy[1]) // r.cell
    assert r.grid[int(row), int(col)] == 3.0
    # and pixel (1000, 10) is in no patch
    assert np.isnan(r.grid[0, int(1000 // 64)])


def test_fine_grid_overlap_is_mean_and_coarsening_flags_inexact():
    coords = np.array([[0, 0], [128, 0], [1000, 3]])
    r = rasterize(coords, [0.0, 1.0, 7.0], patch_size=256)
    assert r.mode == "fine"
    # cells of the overlap [128, 256) get the mean of both patches
    cell_in_overlap = int(130 // r.cell)
    assert r.grid[0, cell_in_overlap] == pytest.approx(0.5)
    r2 = rasterize(coords, [0.0, 1.0, 7.0], patch_size=256, max_cells=200)
    assert not r2.exact and r2.grid.size <= 400
    assert np.nanmax(r2.grid) == 7.0


def test_bad_inputs_raise_data_errors():
    with pytest.raises(DataError, match="coords"):
        rasterize(np.zeros((3, 3)), np.zeros(3), 256)
    with pytest.raises(DataError, match="values"):
        rasterize(np.zeros((3, 2)), np.zeros(2), 256)
    with pytest.raises(DataError, match="patch_size"):
        rasterize(np.zeros((3, 2)), np.zeros(3), 0)


def test_labels_background_and_sizes():
    coords = np.array([[0, 0], [256, 0], [512, 0], [0, 256]])
    lab = np.array([0, 2, -1, 2])
    r = rasterize_labels(coords, lab, 256)
    np.testing.assert_array_equal(r.grid, [[1, 3, 0], [3, 0, 0]])
    assert r.grid.dtype == np.int32
    assert cluster_sizes(lab) == {0: 1, 2: 2}


def test_labels_fine_grid_nearest_centre_wins():
    coords = np.array([[0, 0], [192, 0], [1000, 0]])
    r = rasterize_labels(coords, [0, 1, 2], 256)
    assert r.mode == "fine"
    # x in [192, 224): centre of patch 0 at 128, of patch 1 at 320 -> patch 0 nearer
    assert r.grid[0, int(200 // r.cell)] == 1
    # x in [232, 256): patch 1 nearer
    assert r.grid[0, int(250 // r.cell)] == 2


def test_threshold_regions_polygons_and_scores():
    coords = np.stack(np.meshgrid(np.arange(6) * 256, np.arange(4) * 256), -1).reshape(-1, 2)
    vals = np.zeros(len(coords))
    hot = (coords[:, 0] >= 512) & (coords[:, 0] < 1024) & (coords[:, 1] < 512)
    vals[hot] = 0.9
    vals[(coords[:, 0] == 1280) & (coords[:, 1] == 768)] = 0.7  # a second, single-cell region
    r = rasterize(coords, vals, 256)
    regions = threshold_regions(r, 0.5)
    assert len(regions) == 2
    assert regions[0].polygon.equals(box(512, 0, 1024, 512))
    assert regions[0].mean_score == pytest.approx(0.9) and regions[0].n_cells == 4
    assert regions[1].polygon.equals(box(1280, 768, 1536, 1024))
    assert regions[0].area_um2(0.5) == pytest.approx(512 * 512 * 0.25)
    assert threshold_regions(r, 0.5, min_cells=2)[0].n_cells == 4
    assert mean_in_polygon(r, box(500, 0, 1030, 520)) == pytest.approx(0.9)


def test_regions_from_overlapping_lattice_tile_without_gaps():
    coords = np.stack(np.meshgrid(np.arange(4) * 128, [0]), -1).reshape(-1, 2)
    r = rasterize(coords, [1.0, 1.0, 1.0, 1.0], patch_size=256, stride=128)
    (reg,) = threshold_regions(r, 0.5)
    # stride-sized boxes centred on the patch centres: x from 64 to 64 + 4 * 128
    assert reg.polygon.equals(box(64, 64, 576, 192))
