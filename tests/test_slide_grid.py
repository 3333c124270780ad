"""Tissue masks, patch grids, napari geometry and the ``histokd tile`` command."""

from __future__ import annotations

import numpy as np
import pytest

from histokd_core.cli import main
from histokd_core.errors import DataError, HistoKDError
from histokd_core.slide import (
    PatchGrid,
    TissueMask,
    box_world,
    grid_transform,
    lattice,
    level_transform,
    open_slide,
    patch_centres_world,
    patch_grid,
    patch_rectangles_world,
    saturation_mask,
    slide_transform,
    tissue_mask,
    world_to_level0,
)
from histokd_core.synthetic import PlantedRegion, write_synthetic_slide

REGION = PlantedRegion("tumor", y0=600, x0=1000, y1=1400, x1=1900)


@pytest.fixture(scope="module")
def region_only(tmp_path_factory):
    """White glass with one planted tumour region and no other tissue."""
    path = tmp_path_factory.mktemp("grid") / "region.tif"
    return write_synthetic_slide(
        path, (2048, 3072), mpp=0.5, regions=[REGION], seed=1, tissue=False, workers=1
    )


# -- tissue -------------------------------------------------------------------------------


def test_saturation_mask_finds_a_pink_disk_on_white():
    yy, xx = np.mgrid[:200, :300]
    disk = (yy - 100) ** 2 + (xx - 140) ** 2 < 60**2
    rgb = np.full((200, 300, 3), 242, np.uint8)
    rgb[disk] = (230, 150, 200)
    rgb = np.clip(rgb + np.random.default_rng(0).normal(0, 3, rgb.shape), 0, 255).astype(np.uint8)
    mask, threshold = saturation_mask(rgb, min_object_px=30, min_hole_px=30)
    iou = (mask & disk).sum() / (mask | disk).sum()
    assert iou > 0.97
    assert 0.05 <= threshold < 0.35


def test_saturation_mask_of_blank_glass_is_empty():
    rgb = np.full((64, 64, 3), 240, np.uint8)
    assert not saturation_mask(rgb)[0].any()


def test_box_fractions_against_hand_computed_values():
    m = np.zeros((4, 4), bool)
    m[:2, :2] = True  # tissue covers level-0 [0, 16) x [0, 16) at downsample 8
    tm = TissueMask(mask=m, level=0, downsample_yx=(8.0, 8.0), threshold=0.1)
    coords = np.array([[0, 0], [8, 8], [16, 16], [12, 0], [4, 4]])
    # box of 16 level-0 px: full, quarter (8x8 of 16x16), none, half, (12*12)/256
    expect = [1.0, 0.25, 0.0, 0.25, 144 / 256]
    np.testing.assert_allclose(tm.box_fractions(coords, 16), expect, atol=1e-6)
    assert tm.fraction == 0.25


def test_tissue_mask_matches_the_planted_region(region_only):
    with open_slide(region_only.path) as slide:
        tm = tissue_mask(slide)
    dy, dx = tm.downsample_yx
    truth = np.zeros_like(tm.mask)
    rows = slice(int(REGION.y0 / dy), int(REGION.y1 / dy))
    truth[rows, int(REGION.x0 / dx) : int(REGION.x1 / dx)] = True
    iou = (tm.mask & truth).sum() / (tm.mask | truth).sum()
    assert iou > 0.97


# -- patch grid ---------------------------------------------------------------------------


def test_lattice_hand_example():
    got = lattice((10, 7), patch_size_level0=4, stride_level0=3)
    # x in {0, 3, 6}, y in {0, 3}: whole patches only
    expect = [[0, 0], [3, 0], [6, 0], [0, 3], [3, 3], [6, 3]]
    np.testing.assert_array_equal(got, expect)


def test_patch_grid_lands_on_the_planted_region(region_only):
    with open_slide(region_only.path) as slide:
        grid = patch_grid(slide, target_mpp=0.5, patch_px=128, min_tissue=0.5)
    assert grid.patch_size_level0 == 128 and grid.stride_level0 == 128
    all_coords = lattice((3072, 2048), 128, 128)
    overlap = REGION.overlap_fraction(all_coords, 128)
    expected = {tuple(c) for c in all_coords[overlap >= 0.5]}
    got = {tuple(c) for c in grid.coords}
    assert got == expected
    fully_inside = REGION.overlap_fraction(grid.coords, 128) == 1.0
    assert grid.tissue_fraction[fully_inside].min() > 0.99


def test_patch_size_follows_target_mpp(region_only):
    with open_slide(region_only.path, mpp=0.25) as slide:  # pretend 40x
        g20 = patch_grid(slide, target_mpp=0.5, patch_px=256, min_tissue=0)
        g10 = patch_grid(slide, target_mpp=1.0, patch_px=256, min_tissue=0.0)
        g_overlap = patch_grid(slide, target_mpp=0.5, patch_px=256, min_tissue=0, overlap_px=64)
    assert g20.patch_size_level0 == 512 and g20.read_level == 1  # read at 2x down, no resize
    assert g10.patch_size_level0 == 1024 and g10.read_level == 2
    assert g_overlap.stride_level0 == 384
    assert len(g20) == (3072 // 512) * (2048 // 512)


def test_patch_grid_rejects_bad_parameters(region_only):
    with open_slide(region_only.path) as slide:
        bad = ({"target_mpp": 0}, {"patch_px": 0}, {"min_tissue": 1.5}, {"overlap_px": 256})
        for kwargs in bad:
            with pytest.raises(DataError):
                patch_grid(slide, **kwargs)


@pytest.mark.parametrize("suffix", [".csv", ".npz"])
def test_patch_grid_save_load_roundtrip(region_only, tmp_path, suffix):
    with open_slide(region_only.path) as slide:
        grid = patch_grid(slide, patch_px=128)
    path = grid.save(tmp_path / f"grid{suffix}")
    back = PatchGrid.load(path)
    np.testing.assert_array_equal(back.coords, grid.coords)
    np.testing.assert_allclose(back.tissue_fraction, grid.tissue_fraction, atol=1e-4)
    assert back.info() == grid.info()
    with pytest.raises(HistoKDError, match="already exists"):
        grid.save(path)
    with pytest.raises(DataError, match=".txt"):
        grid.save(tmp_path / "grid.txt")
    (tmp_path / "junk.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="junk.csv"):
        PatchGrid.load(tmp_path / "junk.csv")


# -- geometry -----------------------------------------------------------------------------


def test_grid_transform_hand_values():
    t = grid_transform(stride_level0=256, patch_size_level0=256, mpp=0.5, origin_xy=(100, 40))
    assert t.scale == (128.0, 128.0)
    assert t.translate == ((40 + 127.5) * 0.5, (100 + 127.5) * 0.5)
    # cell (row 2, col 3) centre == centre of the patch at (100 + 3*256, 40 + 2*256)
    centre = patch_centres_world(np.array([[100 + 3 * 256, 40 + 2 * 256]]), 256, 0.5)[0]
    np.testing.assert_allclose(t.data_to_world(np.array([[2, 3]]))[0], centre)
    np.testing.assert_allclose(t.world_to_data(centre[None])[0], [2, 3])


def test_level_transform_centres_coarse_pixels_on_their_footprint():
    t = level_transform(downsample=4, mpp=0.5)
    # level pixel 0 covers level-0 pixels 0..3, whose centres average to 1.5
    np.testing.assert_allclose(t.data_to_world(np.array([[0, 0]])), [[0.75, 0.75]])
    assert slide_transform(None).scale == (1.0, 1.0)


def test_patch_rectangles_and_boxes_use_outer_pixel_edges():
    rect = patch_rectangles_world(np.array([[10, 20]]), 4, 2.0)[0]
    np.testing.assert_allclose(rect, [[39, 19], [39, 27], [47, 27], [47, 19]])
    np.testing.assert_allclose(box_world(10, 20, 14, 24, 2.0), rect)
    np.testing.assert_allclose(world_to_level0(np.array([[40.0, 20.0]]), 2.0), [[10, 20]])


# -- CLI ----------------------------------------------------------------------------------


def test_cli_tile_writes_the_grid(region_only, tmp_path, capsys):
    out = tmp_path / "g.csv"
    assert main(["tile", str(region_only.path), "--patch-px", "128", "--out", str(out)]) == 0
    assert "patches" in capsys.readouterr().out
    grid = PatchGrid.load(out)
    assert len(grid) > 0 and grid.patch_px == 128
    assert main(["tile", str(region_only.path), "--out", str(out)]) == 2  # no silent overwrite
    assert "already exists" in capsys.readouterr().err


def test_cli_tile_without_mpp_is_a_clear_error(shared_data, tmp_path, capsys):
    slide = shared_data / "slides" / "TCGA-CR-7395-01A-01-TS1.svs"
    with pytest.warns(UserWarning):
        code = main(["tile", str(slide), "--out", str(tmp_path / "t.csv")])
    assert code == 2
    err = capsys.readouterr().err
    assert "--mpp" in err and slide.name in err and "Traceback" not in err
    assert main(["tile", str(slide), "--mpp", "0.25", "--out", str(tmp_path / "t.npz")]) == 0
    assert len(PatchGrid.load(tmp_path / "t.npz")) > 0
