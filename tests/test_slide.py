"""Lazy slide access: real slides against tifffile, dask reads against tiffslide, bad inputs."""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest
import tifffile
import tiffslide

from histokd_core.errors import HistoKDError, MissingMppError, SlideError
from histokd_core.slide import MissingMppWarning, open_slide, patch_grid
from histokd_core.slide.pyramid import downsample_2x, with_overview_levels
from histokd_core.synthetic import PlantedRegion, write_synthetic_slide

CMU = "slides/CMU-1-Small-Region.svs"
TCGA = "slides/TCGA-CR-7395-01A-01-TS1.svs"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    path = tmp_path_factory.mktemp("syn") / "syn.tif"
    region = PlantedRegion("tumor", 300, 500, 700, 900)
    return write_synthetic_slide(path, (1500, 2100), mpp=0.25, regions=[region], seed=3, workers=1)


def _tifffile_levels(path):
    with tifffile.TiffFile(path) as tf:
        levels = tf.series[0].levels
        return [tuple(level.shape) for level in levels], levels[0].asarray()


def test_cmu_single_level_svs_gets_lazy_overview_levels(shared_data):
    path = shared_data / CMU
    shapes, level0 = _tifffile_levels(path)
    assert shapes == [(2967, 2220, 3)]
    with open_slide(path) as slide:
        assert slide.native_level_count == 1
        assert slide.dimensions == (2220, 2967)
        assert slide.mpp == pytest.approx(0.499)
        assert slide.magnification == 20 and not slide.magnification_estimated
        # lazy overview levels were added because the only level is large
        assert slide.level_count == 3
        assert slide.level_dimensions[1:] == [(1110, 1483), (555, 741)]
        assert slide.levels[0].chunksize[:2] == (960, 960)  # 4 x 4 TIFF tiles of 240 px
        np.testing.assert_array_equal(slide.levels[0].compute(), level0)
        # the overview is a 2x2 box mean of level 0, computed independently here
        blocks = level0[:2966, :2220].reshape(1483, 2, 1110, 2, 3).astype(np.float64)
        expect = blocks.mean(axis=(1, 3))
        got = slide.levels[1].compute().astype(np.float64)
        assert np.abs(got - expect).max() <= 0.5 + 1e-9
        assert slide.metadata()["mpp_missing"] is False


def test_tcga_jpeg2000_two_levels_without_mpp(shared_data):
    path = shared_data / TCGA
    shapes, level0 = _tifffile_levels(path)
    assert shapes == [(3567, 4443, 3), (1783, 2221, 3)]
    with pytest.warns(MissingMppWarning, match="no microns-per-pixel"):
        slide = open_slide(path)
    with slide:
        assert slide.native_level_count == 2
        assert [(h, w, 3) for w, h in slide.level_dimensions[:2]] == shapes
        assert slide.level_downsamples[1] == pytest.approx(2.0005, abs=1e-4)
        assert slide.mpp is None and slide.magnification is None
        meta = slide.metadata()
        assert meta["mpp_missing"] is True and meta["mpp"] is None
        window = (slice(1000, 1300), slice(2000, 2400))
        np.testing.assert_array_equal(slide.levels[0][window].compute(), level0[window])
        with pytest.raises(MissingMppError, match="--mpp"):
            slide.require_mpp()
        with pytest.raises(MissingMppError, match=str(path)):
            patch_grid(slide)
    with open_slide(path, mpp=0.25) as slide:  # the user supplies it
        assert slide.mpp == 0.25 and slide.mpp_source == "user"
        assert slide.magnification == 40 and slide.magnification_estimated


def test_dask_read_equals_tiffslide_read_region_on_every_level(synthetic, shared_data):
    cases = [
        (synthetic.path, [(0, 0), (517, 333), (1900, 1400)]),
        (shared_data / TCGA, [(1234, 987), (4300, 3500)]),  # the last one is partly outside
    ]
    for path, locations in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MissingMppWarning)
            slide = open_slide(path)
        ts = tiffslide.TiffSlide(path)
        assert slide.native_level_count == ts.level_count
        for level in range(ts.level_count):
            for loc in locations:
                expect = ts.read_region(loc, level, (300, 211), as_array=True)
                got = slide.read_region(loc, level, (300, 211))
                assert got.shape == (211, 300, 3)
                message = f"{path.name} level {level} at {loc}"
                np.testing.assert_array_equal(got, expect, err_msg=message)
        ts.close()
        slide.close()


def test_synthetic_slide_reads_as_a_pyramid_with_mpp(synthetic):
    with open_slide(synthetic.path) as slide:
        assert slide.native_level_count == len(synthetic.level_dimensions) == 5
        assert slide.level_dimensions == list(synthetic.level_dimensions)
        assert slide.mpp == pytest.approx(0.25)
        assert slide.magnification == pytest.approx(40.0) and slide.magnification_estimated
        for lvl in slide.levels:  # chunks are 4 x 4 TIFF tiles of 256 px
            assert lvl.chunks[0][0] == min(1024, lvl.shape[0])
            assert lvl.chunks[1][0] == min(1024, lvl.shape[1])
        thumb = slide.thumbnail(200)
        assert max(thumb.shape[:2]) == 200 and thumb.dtype == np.uint8


def test_overview_levels_only_touch_the_chunks_they_need():
    """An overview chunk is computed from the level-0 tiles under it only, never the whole level."""
    touched = []

    def record(block, block_info=None):
        touched.append(block_info[0]["chunk-location"])
        return block

    level0 = da.zeros((8192, 8192, 3), dtype=np.uint8, chunks=(256, 256, 3))
    level0 = level0.map_blocks(record, dtype=np.uint8)
    levels = with_overview_levels([level0], max_side=1024)
    assert [lvl.shape[0] for lvl in levels] == [8192, 4096, 2048, 1024]
    assert [lvl.chunksize[0] for lvl in levels[1:]] == [1024, 1024, 1024]  # merged back
    levels[1][:64, :64].compute()  # inside the first 1024-px chunk of the 2x overview
    rows, cols = zip(*[loc[:2] for loc in set(touched)])
    assert max(rows) < 8 and max(cols) < 8, "only the 8 x 8 tiles under that chunk"
    assert len(set(touched)) == 64 < 32 * 32


def test_downsample_2x_rounds_box_mean():
    a = np.array([[[0], [1], [10]], [[2], [3], [20]], [[5], [5], [7]]], dtype=np.uint8)
    a = a.repeat(3, axis=2)
    got = downsample_2x(da.from_array(a, chunks=(2, 2, 3))).compute()
    assert got.shape == (1, 1, 3)
    assert got[0, 0, 0] == 2  # (0+1+2+3)/4 = 1.5 rounds to 2; odd row/column dropped


def test_strip_tiff_is_rechunked_and_readable(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (2600, 1500, 3), dtype=np.uint8)
    path = tmp_path / "strips.tif"
    tifffile.imwrite(
        path,
        image,
        photometric="rgb",
        rowsperstrip=8,
        resolution=(40000, 40000),
        resolutionunit="CENTIMETER",
    )
    with open_slide(path) as slide:
        assert slide.native_level_count == 1
        assert slide.levels[0].chunksize[0] >= 512  # 8-row strips grouped into bigger chunks
        assert slide.level_count == 3  # lazy overview levels for a non-pyramidal TIFF
        assert slide.mpp == pytest.approx(0.25)
        got = slide.read_region((100, 2000), 0, (700, 600))
        np.testing.assert_array_equal(got, image[2000:2600, 100:800])


@pytest.mark.parametrize("kind", ["empty", "truncated", "png", "garbage", "missing", "directory"])
def test_bad_inputs_raise_slide_error_naming_the_file(kind, synthetic, tmp_path):
    path = tmp_path / f"bad_{kind}.svs"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = synthetic.path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "png":
        from PIL import Image

        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.png")
        (tmp_path / "x.png").rename(path)
    elif kind == "garbage":
        path.write_bytes(b"II*\x00" + bytes(range(256)) * 4)
    elif kind == "directory":
        path.mkdir()
    with pytest.raises(SlideError) as info:
        open_slide(path)
    message = str(info.value)
    assert str(path) in message
    expected = {"empty": "empty", "truncated": "truncated", "png": "PNG", "missing": "no such file"}
    if kind in expected:
        assert expected[kind] in message
    assert isinstance(info.value, HistoKDError)


def test_invalid_mpp_override_is_rejected(synthetic):
    with pytest.raises(SlideError, match="mpp must be a positive"):
        open_slide(synthetic.path, mpp=-1)
