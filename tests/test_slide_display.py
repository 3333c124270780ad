"""What napari reads (Slide.display_levels): the same pixels as the dask pyramid, any slicing."""

from __future__ import annotations

import numpy as np
import pytest

from histokd_core.slide import open_slide
from histokd_core.slide.pyramid import DisplayLevel
from histokd_core.synthetic import write_synthetic_slide


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    path = tmp_path_factory.mktemp("display") / "s.tif"
    write_synthetic_slide(path, size_hw=(1500, 2100), mpp=0.5, seed=3, tile=256)
    with open_slide(path) as s:
        yield s


KEYS = [
    (slice(100, 900), slice(37, 1290)),  # several tile rows and columns, unaligned
    (slice(0, 256), slice(0, 256)),  # exactly one tile
    (slice(1400, None), slice(-300, None)),  # the ragged edge tiles
    (slice(10, 1000, 3), slice(5, 2000, 7)),  # napari's strided reads
    (700, slice(100, 600)),  # an int row
    (slice(None), 2099, 1),  # int column and channel
    (Ellipsis, 0),
    (slice(300, 300), slice(0, 10)),  # empty
]


@pytest.mark.parametrize("parallel_inside", [None, False])
def test_display_level_slices_equal_the_dask_level(slide, parallel_inside):
    native = [i for i, lvl in enumerate(slide.display_levels) if isinstance(lvl, DisplayLevel)]
    assert native == list(range(slide.native_level_count))  # the synthetic file is RGB YXS
    view = DisplayLevel(slide._direct[0], parallel_inside=parallel_inside)
    assert view.parallel_inside is (parallel_inside is None)  # the tiled reader decodes in parallel
    level = slide.levels[0]
    assert view.shape == level.shape and view.dtype == np.uint8 and view.ndim == 3
    for key in KEYS:
        expected = level[key].compute()
        got = view[key]
        assert got.shape == expected.shape, key
        np.testing.assert_array_equal(got, expected)
    coarse = slide.display_levels[slide.native_level_count - 1]
    np.testing.assert_array_equal(np.asarray(coarse), slide.levels[slide.native_level_count - 1].compute())


def test_band_reads_use_tile_aligned_bands(slide):
    calls = []

    class Recording:
        def __init__(self, array):
            self.array, self.shape, self.dtype, self.chunks = array, array.shape, array.dtype, array.chunks

        def __getitem__(self, key):
            calls.append(key)
            return self.array[key]

    view = DisplayLevel(Recording(slide._direct[0]), parallel_inside=False)
    out = view[100:1300, 0:2100]
    np.testing.assert_array_equal(out, slide.levels[0][100:1300].compute())
    starts = sorted(k[0].start for k in calls)
    assert len(calls) > 1 and starts[0] == 100 and all(s % 256 == 0 for s in starts[1:])
    calls.clear()
    view[300:500, 0:100]  # within one tile row: a single read
    assert len(calls) == 1


def test_bad_indices_raise_index_error(slide):
    view = slide.display_levels[0]
    with pytest.raises(IndexError):
        view[5000]
    with pytest.raises(IndexError):
        view[::-1]
    with pytest.raises(IndexError):
        view[[1, 2]]


@pytest.mark.parametrize("name", ["slides/CMU-1-Small-Region.svs", "slides/TCGA-CR-7395-01A-01-TS1.svs"])
def test_real_slides_display_levels_equal_the_dask_levels(shared_data, name):
    with open_slide(shared_data / name, mpp=0.5) as s:
        for display, level in zip(s.display_levels, s.levels):
            h, w = level.shape[:2]
            key = (slice(h // 3, min(h, h // 3 + 700)), slice(w // 4, min(w, w // 4 + 900)))
            np.testing.assert_array_equal(np.asarray(display[key]), level[key].compute())
