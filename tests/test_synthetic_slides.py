"""Synthetic slides: pyramidal JPEG TIFFs with mpp, deterministic, planted tunable morphology."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import tifffile
import tiffslide

from histokd_core.synthetic import PlantedRegion, default_regions, write_synthetic_slide
from histokd_core.synthetic.slides import level_shapes


def _level(path, level=0):
    with tifffile.TiffFile(path) as tf:
        return tf.series[0].levels[level].asarray()


def _mean_rgb(image, r: PlantedRegion, ds=1):
    return image[r.y0 // ds : r.y1 // ds, r.x0 // ds : r.x1 // ds].reshape(-1, 3).mean(0)


def test_file_is_a_tiled_jpeg_pyramid_with_mpp(tmp_path):
    s = write_synthetic_slide(tmp_path / "a.tif", (1000, 1300), mpp=0.5, tile=256, workers=1)
    with tifffile.TiffFile(s.path) as tf:
        series = tf.series[0]
        shapes = [(1000, 1300, 3), (500, 650, 3), (250, 325, 3), (125, 162, 3)]
        assert [lvl.shape for lvl in series.levels] == shapes
        page = series.levels[0].pages[0]
        assert page.is_tiled and page.tilewidth == 256
        assert page.compression == tifffile.COMPRESSION.JPEG
    ts = tiffslide.TiffSlide(s.path)
    assert ts.properties["tiffslide.mpp-x"] == pytest.approx(0.5)
    assert ts.level_dimensions == s.level_dimensions == tuple((w, h) for h, w, _ in shapes)
    ts.close()
    assert level_shapes((100_000, 100_000), 256)[-1] == (195, 195)  # 10 levels for 100k


def test_same_seed_same_pixels_other_seed_differs(tmp_path):
    a = write_synthetic_slide(tmp_path / "a.tif", (512, 512), seed=5, workers=1)
    b = write_synthetic_slide(tmp_path / "b.tif", (512, 512), seed=5, workers=2)
    c = write_synthetic_slide(tmp_path / "c.tif", (512, 512), seed=6, workers=1)
    assert a.regions == b.regions
    np.testing.assert_array_equal(_level(a.path), _level(b.path))
    assert np.abs(_level(a.path).astype(int) - _level(c.path)).mean() > 5


def test_regions_look_like_he_and_intensity_is_a_knob(tmp_path):
    regions = [
        PlantedRegion("tumor", 100, 100, 400, 400, 1.0),
        PlantedRegion("tumor", 100, 600, 400, 900, 0.0),  # intensity 0 == normal tissue
        PlantedRegion("immune", 600, 100, 900, 400, 1.0),
        PlantedRegion("stroma", 600, 600, 900, 900, 1.0),
    ]
    s = write_synthetic_slide(tmp_path / "r.tif", (1024, 1024), regions=regions, seed=2, workers=1)
    img = _level(s.path)
    tumor, weak, immune, stroma = (_mean_rgb(img, r) for r in regions)
    # H&E: tissue is pink/purple (blue and red above green); nuclei-rich regions are darker
    for rgb in (tumor, weak, immune, stroma):
        assert rgb[0] > rgb[1] and rgb[2] > rgb[1]
    assert tumor.sum() < weak.sum() - 60 and immune.sum() < weak.sum() - 60
    assert stroma.sum() > tumor.sum()
    # a half-intensity tumour lies between the two
    half_region = PlantedRegion("tumor", 100, 100, 400, 400, 0.5)
    half = write_synthetic_slide(
        tmp_path / "h.tif", (1024, 1024), regions=[half_region], seed=2, workers=1
    )
    mid = _mean_rgb(_level(half.path), regions[0])
    assert tumor.sum() < mid.sum() < weak.sum()


def test_tissue_false_leaves_white_glass_outside_regions(tmp_path):
    r = PlantedRegion("immune", 200, 300, 500, 700)
    s = write_synthetic_slide(tmp_path / "w.tif", (768, 1024), regions=[r], tissue=False, workers=1)
    img = _level(s.path).astype(float)
    outside = np.ones(img.shape[:2], bool)
    outside[r.y0 - 8 : r.y1 + 8, r.x0 - 8 : r.x1 + 8] = False
    assert img[outside].min(0).min() > 220  # glass
    assert _mean_rgb(img, r).mean() < 170  # dense dark nuclei
    low = _level(s.path, 1).astype(float)  # the lower level shows the same region
    assert _mean_rgb(low, r, ds=2).mean() == pytest.approx(_mean_rgb(img, r).mean(), abs=15)


def test_overlap_fraction_hand_values():
    r = PlantedRegion("tumor", y0=10, x0=20, y1=30, x1=40)
    coords = np.array([[20, 10], [30, 20], [0, 0], [15, 10]])  # (x, y) top-left, patch 10
    np.testing.assert_allclose(r.overlap_fraction(coords, 10), [1.0, 1.0, 0.0, 0.5])
    np.testing.assert_allclose(r.overlap_fraction(np.array([[35, 25]]), 10), [0.25])


def test_default_regions_are_inside_and_returned(tmp_path):
    s = write_synthetic_slide(tmp_path / "d.tif", (600, 800), workers=1)
    assert s.regions == default_regions((600, 800), 0)
    assert {r.kind for r in s.regions} == {"tumor", "immune"}
    for r in s.regions:
        assert 0 <= r.y0 < r.y1 <= 600 and 0 <= r.x0 < r.x1 <= 800


def test_bad_arguments_and_no_silent_overwrite(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        PlantedRegion("bone", 0, 0, 10, 10)
    with pytest.raises(ValueError, match="empty"):
        PlantedRegion("tumor", 10, 0, 10, 10)
    with pytest.raises(ValueError, match="outside"):
        outside = PlantedRegion("tumor", 50, 50, 150, 90)
        write_synthetic_slide(tmp_path / "x.tif", (100, 100), regions=[outside])
    path = tmp_path / "y.tif"
    write_synthetic_slide(path, (64, 64), workers=1)
    with pytest.raises(Exception, match="already exists"):
        write_synthetic_slide(path, (64, 64))


def _peak_write_bytes(path, size_hw):
    tracemalloc.start()
    try:
        write_synthetic_slide(path, size_hw, seed=0, workers=1)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_stays_bounded_while_writing(tmp_path):
    """Peak allocation does not grow with the slide: 4x the pixels, the same few tiles in memory."""
    # both pyramids include the costliest levels (downsample 16); the large one's level 0
    # alone is 24 MiB decoded
    small = _peak_write_bytes(tmp_path / "s.tif", (512, 4096))
    large = _peak_write_bytes(tmp_path / "l.tif", (512, 16384))
    assert large < 1.15 * small + 2**20, (small, large)
    assert large < 20 * 2**20
