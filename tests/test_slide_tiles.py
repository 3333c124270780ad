"""Tiled TIFF levels read tile by tile in parallel (histokd_core.slide.tiles): the same pixels
as TiffSlide.read_region on real slides and a generated pyramid, at every level and edge."""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest
import tifffile
from tiffslide import TiffSlide

from histokd_core.slide import open_slide, tiles
from histokd_core.slide.pyramid import DisplayLevel
from histokd_core.slide.tiles import TiledLevel
from histokd_core.synthetic import write_synthetic_slide

REAL = ["slides/CMU-1-Small-Region.svs", "slides/TCGA-CR-7395-01A-01-TS1.svs"]  # JPEG, JPEG 2000


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiles") / "pyramid.tif"
    write_synthetic_slide(path, size_hw=(1700, 2300), mpp=0.5, seed=5, tile=256)
    return path


def regions(width: int, height: int, n: int, seed: int) -> list[tuple[int, int, int, int]]:
    """``n`` random ``(x, y, w, h)`` inside the level, plus its corners and a whole-level read."""
    rng = random.Random(seed)
    out = [(0, 0, width, height), (0, 0, 1, 1), (width - 1, height - 1, 1, 1),
           (max(0, width - 700), max(0, height - 500), min(width, 700), min(height, 500))]
    for _ in range(n):
        w, h = rng.randrange(1, min(width, 1920) + 1), rng.randrange(1, min(height, 1080) + 1)
        out.append((rng.randrange(0, width - w + 1), rng.randrange(0, height - h + 1), w, h))
    return out


def assert_equal_to_tiffslide(path, n: int = 12) -> int:
    """Every native level read through what napari reads and Slide.read_region equals
    TiffSlide.read_region; returns how many levels had a TiledLevel."""
    ts = TiffSlide(path)
    try:
        with open_slide(path, mpp=0.5) as slide:
            tiled = [i for i, a in slide._direct.items() if isinstance(a, TiledLevel)]
            for level in range(slide.native_level_count):
                width, height = slide.level_dimensions[level]
                ds = ts.level_downsamples[level]
                for x, y, w, h in regions(width, height, n, seed=level):
                    x0, y0 = round(x * ds), round(y * ds)
                    if ts._read_region_loc_transform((x0, y0), level) != (x, y):
                        continue  # a non-integer downsample maps no level-0 px to this one
                    expected = ts.read_region((x0, y0), level, (w, h), as_array=True)
                    got = np.asarray(slide.display_levels[level][y : y + h, x : x + w])
                    np.testing.assert_array_equal(got, expected, err_msg=f"level {level} {x, y, w, h}")
                    np.testing.assert_array_equal(slide.read_region((x0, y0), level, (w, h)), expected)
    finally:
        ts.close()
    return len(tiled)


@pytest.mark.parametrize("name", REAL)
def test_real_slides_read_as_tiffslide_reads_them(shared_data, name):
    assert assert_equal_to_tiffslide(shared_data / name) >= 1


def test_generated_pyramid_reads_as_tiffslide_reads_it(pyramid):
    with tifffile.TiffFile(pyramid) as tf:
        levels = len(tf.series[0].levels)
    assert levels > 1 and assert_equal_to_tiffslide(pyramid) == levels


def test_any_numpy_index_and_the_dask_levels_read_through_the_tiled_reader(pyramid):
    with tifffile.TiffFile(pyramid) as tf:
        full = tf.series[0].levels[0].asarray()
    with open_slide(pyramid) as slide:
        level = slide._direct[0]
        for key in [(slice(10, 900, 3), slice(5, 2000, 7)), (700, slice(100, 600)), (slice(None), 2299, 1),
                    (Ellipsis, 0), (slice(-300, None), slice(-5, None)), (slice(300, 300),)]:
            np.testing.assert_array_equal(level[key], full[key], err_msg=str(key))
        with pytest.raises(IndexError):
            level[::-1]
        calls, read = [], level.read
        level.read = lambda *box: calls.append(box) or read(*box)
        np.testing.assert_array_equal(slide.levels[0][::5, ::5].compute(), full[::5, ::5])
        assert calls  # the dask level's chunks were read by this TiledLevel


def test_tiles_are_decoded_on_several_threads(pyramid, monkeypatch):
    monkeypatch.setattr(tiles, "DECODE_THREADS", 2)
    with open_slide(pyramid) as slide:
        level = slide._direct[0]
        expected = slide.levels[0][100:1100, 50:1900].compute()
        decode, threads = level._decode, set()

        def slow_decode(*args, **kwargs):  # sleeping releases the GIL: both threads get tiles
            threads.add(threading.get_ident())
            time.sleep(0.005)
            return decode(*args, **kwargs)

        monkeypatch.setattr(level, "_decode", slow_decode)
        np.testing.assert_array_equal(level[100:1100, 50:1900], expected)
        assert len(threads) == 2
        threads.clear()
        level[0:10, 0:10]  # one tile: decoded by the caller, no hand-off
        assert threads == {threading.get_ident()}


def test_a_failing_tile_raises_after_every_thread_stopped(pyramid, monkeypatch):
    monkeypatch.setattr(tiles, "DECODE_THREADS", 2)
    with open_slide(pyramid) as slide:
        level = slide._direct[0]
        decode, busy = level._decode, []

        def failing(data, index, **kwargs):
            busy.append(index)
            time.sleep(0.002)
            busy.remove(index)
            if index == 9:
                raise ValueError("bad tile 9")
            return decode(data, index, **kwargs)

        monkeypatch.setattr(level, "_decode", failing)
        with pytest.raises(ValueError, match="bad tile 9"):
            level[0:1024, 0:2300]
        assert busy == []


def test_missing_tiles_read_as_zero_and_a_closed_slide_refuses(pyramid, monkeypatch):
    slide = open_slide(pyramid)
    level = slide._direct[0]
    counts = list(level._counts)
    counts[1] = 0  # tile (0, 1) absent, as in a sparse TIFF
    monkeypatch.setattr(level, "_counts", tuple(counts))
    region = level[200:250, 200:400]  # rows of tile row 0; columns 256: in tile (0, 1)
    assert not region[:, 56:].any() and region[:, :56].any()
    slide.close()
    with pytest.raises(ValueError, match="closed"):
        level[0:10, 0:10]
    slide.close()  # idempotent


def test_display_levels_use_the_tiled_reader_and_other_layouts_keep_zarr(pyramid, tmp_path):
    with open_slide(pyramid) as slide:
        display = slide.display_levels[0]
        assert isinstance(display, DisplayLevel) and isinstance(display.array, TiledLevel)
        assert display.parallel_inside
    stripped = tmp_path / "stripped.tif"  # not tiled: read through zarr as before
    image = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    tifffile.imwrite(stripped, image, photometric="rgb", rowsperstrip=64, resolution=(2e4, 2e4),
                     resolutionunit="CENTIMETER")
    with open_slide(stripped) as slide:
        assert not any(isinstance(a, TiledLevel) for a in slide._direct.values())
        np.testing.assert_array_equal(slide.read_region((10, 20), 0, (300, 200)), image[20:220, 10:310])


def test_a_forked_child_reads_with_its_own_threads(pyramid, monkeypatch):
    import multiprocessing

    monkeypatch.setattr(tiles, "DECODE_THREADS", 2)
    with open_slide(pyramid) as slide:
        expected = slide.read_region((0, 0), 0, (2000, 1500))  # the parent's pool is started
        with multiprocessing.get_context("fork").Pool(1) as pool:
            got = pool.apply_async(_read_in_child, (str(pyramid),)).get(timeout=60)
    np.testing.assert_array_equal(got, expected)


def _read_in_child(path: str) -> np.ndarray:
    tiles.DECODE_THREADS = 2
    with open_slide(path) as slide:
        return slide.read_region((0, 0), 0, (2000, 1500))
