"""Fine heatmaps: overlap-averaged per-pixel maps (explain.fine)."""

from __future__ import annotations

import numpy as np
import pytest

from histokd_core.errors import DataError
from histokd_core.explain.fine import fine_map, heatmap_coords, heatmap_grid, paint_tile
from histokd_core.slide import TissueMask, open_slide
from histokd_core.synthetic import PlantedRegion, write_synthetic_slide

NAN = np.nan


def brute_force(coords, values, patch, dims, ds):
    """Per pixel: mean of the values of every patch whose footprint holds the pixel's centre."""
    w, h = dims
    rows, cols = int(np.ceil(h / ds)), int(np.ceil(w / ds))
    cy, cx = np.meshgrid((np.arange(rows) + 0.5) * ds, (np.arange(cols) + 0.5) * ds, indexing="ij")
    x, y = coords[:, 0], coords[:, 1]
    inside = ((x <= cx[..., None]) & (cx[..., None] < x + patch)
              & (y <= cy[..., None]) & (cy[..., None] < y + patch))  # (rows, cols, n)
    count = inside.sum(-1)
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, (inside * values).sum(-1) / count, np.nan)


def test_fine_map_against_a_hand_computed_average():
    # 8 x 6 px slide, 4 px patches, one output pixel per 2 x 2 px:
    # A (0,0)=1 covers cols 0-1 rows 0-1; B (2,0)=3 cols 1-2 rows 0-1; C (4,2)=8 cols 2-3 rows 1-2.
    coords = np.array([[0, 0], [2, 0], [4, 2]])
    fm = fine_map(coords, [1.0, 3.0, 8.0], patch_size=4, slide_dimensions=(8, 6), downsample=2)
    expected = np.array([
        [1.0, 2.0, 3.0, NAN],
        [1.0, 2.0, 5.5, 8.0],
        [NAN, NAN, 8.0, 8.0],
    ])
    np.testing.assert_allclose(fm.compute(0), expected, equal_nan=True)
    assert fm.levels[0].dtype == np.float32
    assert fm.downsamples == [2.0]


def test_fine_map_of_a_quarter_stride_lattice_matches_brute_force_across_tiles_and_levels():
    rng = np.random.default_rng(0)
    dims, patch, stride = (200, 150), 32, 8
    coords = heatmap_coords(dims, patch, stride)
    coords = coords[rng.random(len(coords)) < 0.7]  # holes, as tissue selection leaves
    values = rng.normal(size=len(coords))
    fm = fine_map(coords, values, patch, dims, tile=16, min_level_side=8)
    assert fm.downsamples[0] == 2.0  # the edge patches (x = 168, y = 118) set the exact cell
    assert len(fm.levels) >= 3
    for k, ds in enumerate(fm.downsamples[:3]):
        np.testing.assert_allclose(
            fm.compute(k), brute_force(coords, values, patch, dims, ds), rtol=1e-5, atol=1e-6,
            equal_nan=True,
        )
    # the same map in one chunk
    one = fine_map(coords, values, patch, dims, tile=4096)
    np.testing.assert_array_equal(one.compute(0), fm.compute(0))


def test_fine_map_ignores_nan_values_and_checks_its_inputs():
    coords = np.array([[0, 0], [2, 0]])
    fm = fine_map(coords, [1.0, np.nan], 4, (8, 4), downsample=2)
    np.testing.assert_allclose(fm.compute(0), [[1.0, 1.0, NAN, NAN], [1.0, 1.0, NAN, NAN]],
                               equal_nan=True)
    with pytest.raises(DataError, match="values"):
        fine_map(coords, [1.0], 4, (8, 4))
    with pytest.raises(DataError, match="coords"):
        fine_map(np.zeros((0, 2)), [], 4, (8, 4))
    with pytest.raises(DataError, match="patch_size"):
        fine_map(coords, [1.0, 2.0], 0, (8, 4))


def test_fine_map_blanks_pixels_off_tissue():
    mask = TissueMask(mask=np.array([[True, False]]), level=0, downsample_yx=(4.0, 4.0), threshold=0.1)
    fm = fine_map(np.array([[0, 0]]), [5.0], 8, (8, 4), downsample=2, tissue=mask)
    np.testing.assert_allclose(fm.compute(0), [[5, 5, NAN, NAN], [5, 5, NAN, NAN]], equal_nan=True)


def test_a_100k_slide_is_computed_one_chunk_at_a_time():
    # a 100k x 100k px slide at 256 px patches, stride 64: the lazy pyramid builds instantly and
    # one 1024 x 1024 chunk is computed on its own
    coords = heatmap_coords((100_000, 100_000), 256, 64)[:: 97]
    fm = fine_map(coords, np.arange(len(coords), dtype=float), 256, (100_000, 100_000))
    # the edge column / row at 100 000 - 256 = 99 744 (half a stride off the lattice) halves
    # the exact pixel to 32 px
    assert fm.downsamples[0] == 32.0 and fm.shape == (3125, 3125)
    assert fm.levels[0].chunksize == (1024, 1024)
    block = fm.levels[0].blocks[0, 0].compute()
    assert block.shape == (1024, 1024) and np.isfinite(block).any()
    assert paint_tile(np.zeros((0, 4), np.int64), np.zeros(0), (0, 3), (0, 2)).shape == (3, 2)


def test_transform_centres_pixels_on_their_footprint():
    fm = fine_map(np.array([[0, 0]]), [1.0], 8, (8, 8), downsample=4)
    t = fm.transform(0.5)
    assert t.scale == (2.0, 2.0)
    # pixel 0 covers level-0 px 0..3 (napari centres 0..3, mean 1.5) -> 0.75 um
    assert t.translate == (0.75, 0.75)


def test_heatmap_coords_add_the_edge_strip():
    c = heatmap_coords((10, 7), 4, 2)
    assert sorted(set(c[:, 0].tolist())) == [0, 2, 4, 6]
    assert sorted(set(c[:, 1].tolist())) == [0, 2, 3]
    assert heatmap_coords((3, 3), 4, 2).tolist() == [[0, 0]]


@pytest.fixture(scope="module")
def corner_slide(tmp_path_factory):
    """Tissue only in a 70 px strip along the bottom edge."""
    path = tmp_path_factory.mktemp("fine") / "edge.tif"
    regions = [PlantedRegion("tumor", y0=930, x0=50, y1=1000, x1=1450)]
    return write_synthetic_slide(path, (1000, 1500), mpp=0.5, regions=regions, seed=2,
                                 tissue=False, workers=1)


def test_heatmap_grid_keeps_the_bottom_strip_and_partial_tissue(corner_slide):
    from histokd_core.slide import patch_grid

    with open_slide(corner_slide.path) as slide:
        train = patch_grid(slide, target_mpp=0.5, patch_px=256, min_tissue=0.5)
        heat = heatmap_grid(slide, target_mpp=0.5, patch_px=256, stride_div=4, min_tissue=0.1)
    assert len(train) == 0  # the training lattice ends at y = 768 and needs half a patch of tissue
    assert len(heat) > 0
    assert (heat.coords[:, 1] + 256 > 930).all() and (heat.coords[:, 1] == 1000 - 256).any()
    assert heat.stride_level0 == 64 and heat.attrs["stride_div"] == 4
    with pytest.raises(DataError, match="stride_div"):
        with open_slide(corner_slide.path) as slide:
            heatmap_grid(slide, stride_div=3)


# -- the workflow: overlapping-stride features through a trained model ----------------------


@pytest.fixture(scope="module")
def hed_model(tmp_path_factory):
    """An ABMIL checkpoint trained (one epoch) on hed-texture features: the encoder is cheap and
    the checkpoint names it, so the workflow extracts with it."""
    from types import SimpleNamespace

    import torch

    from histokd_core.bag import Bag, DataInfo
    from histokd_core.features import get_encoder
    from histokd_core.train import TrainConfig, run_cv

    root = tmp_path_factory.mktemp("finewf")
    enc = get_encoder("hed-texture", device="cpu")
    info = DataInfo(task="classification", feat_dim=enc.dim, n_classes=2, encoder_id=enc.id)
    rng = np.random.default_rng(0)
    coords = torch.from_numpy(heatmap_coords((1024, 1024), 256, 256))
    bags = [Bag(case_id=f"h{i}", feats=torch.from_numpy(rng.normal(size=(len(coords), enc.dim)).astype(np.float32)),
                coords=coords, patch_size=256, label=i % 2) for i in range(8)]
    data = SimpleNamespace(n_folds=1, fold=lambda i: SimpleNamespace(
        train=bags[:4], val=bags[4:6], test=bags[6:], info=info))
    run_cv("baselines", {"models": ["abmil"]}, data, root / "run",
           TrainConfig(epochs=1, batch_size=4, seed=0, device="cpu", num_threads=1), folds=[0])
    slide = write_synthetic_slide(root / "slide.tif", (768, 1024), mpp=0.5,
                                  regions=[PlantedRegion("tumor", y0=100, x0=100, y1=700, x1=900)],
                                  seed=3, tissue=False, workers=1)
    return SimpleNamespace(checkpoint=root / "run" / "fold_0" / "abmil.safetensors", slide=slide,
                           root=root)


def test_fine_maps_workflow_extracts_overlapping_patches_and_averages(hed_model, tmp_path):
    from histokd_core.features import open_features
    from histokd_core.workflows.fine_maps import fine_maps_slide

    events = []
    res = fine_maps_slide(hed_model.checkpoint, hed_model.slide.path, tmp_path / "heat",
                          stride_div=2, device="cpu", num_workers=0, progress=events.append)
    sf = open_features(tmp_path / "heat", res.slide_id)
    c = sf.coords("20x")
    assert sf.mag_attrs("20x")["stride_level0"] == 128 and len(c) == len(res.explanation.coords)
    assert set(np.unique(c[:, 1]).tolist()) <= {0, 128, 256, 384, 512}  # 768 - 256 = 512 on the lattice
    fm = res.maps["attention"]
    assert fm.shape == (6, 8) and fm.downsamples[0] == 128.0
    expected = brute_force(c, res.explanation.attention, 256, (1024, 768), 128.0)
    got = fm.compute(0)
    # pixels off tissue are masked; elsewhere the map is the per-pixel average
    on = np.isfinite(got)
    assert on.sum() > 0
    np.testing.assert_allclose(got[on], expected[on], rtol=1e-5)
    assert events[-1].fraction == 1.0
    # a second call reuses the stored heatmap features (no "extracting" step)
    events.clear()
    fine_maps_slide(hed_model.checkpoint, hed_model.slide.path, tmp_path / "heat", stride_div=2,
                    device="cpu", num_workers=0, progress=events.append)
    assert not any("extracting" in e.message for e in events)
    with pytest.raises(DataError, match="other features"):
        fine_maps_slide(hed_model.checkpoint, hed_model.slide.path, tmp_path / "heat", stride_div=4,
                        device="cpu", num_workers=0)
