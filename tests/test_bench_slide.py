"""bench/bench_slide.py's quick writer: a pyramid of pre-encoded repeated JPEG tiles that the
project's reader decodes (correctness only; the benchmark's timings are never tested)."""

from __future__ import annotations

import imagecodecs
import numpy as np
import tifffile

from histokd_core.slide import open_slide


def test_quick_write_pyramid_decodes_to_the_repeated_tiles(tmp_path, load_bench):
    bench = load_bench("bench_slide")
    tile, size = 256, 2000  # not a multiple of the tile: edge tiles are cropped
    pool = [imagecodecs.jpeg8_decode(b) for b in bench.encoded_tile_pool(tile=tile)]
    assert len(pool) == 64 and len({p.tobytes() for p in pool}) == 64
    assert all(p.shape == (tile, tile, 3) for p in pool)
    path = tmp_path / "quick.tif"
    bench.write_repeated_tiles(path, size, tile=tile)
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        assert page.compression == tifffile.COMPRESSION.JPEG
        levels = [page.asarray()] + [p.asarray() for p in page.pages]
    assert [lv.shape for lv in levels] == [(2000, 2000, 3), (1000, 1000, 3), (500, 500, 3), (250, 250, 3)]
    for level in levels:  # tile i (row-major) is pool tile repeated_tile_index(i), cropped at the edges
        h, w = level.shape[:2]
        origins = [(r, c) for r in range(0, h, tile) for c in range(0, w, tile)]
        for i, (r, c) in enumerate(origins):
            got = level[r : r + tile, c : c + tile]
            np.testing.assert_array_equal(got, pool[bench.repeated_tile_index(i)][: got.shape[0], : got.shape[1]])
    with open_slide(path) as slide:  # the project's reader sees the same pixels and levels
        assert slide.level_count == 4
        np.testing.assert_array_equal(slide.read_region((300, 700), 0, (512, 512)), levels[0][700:1212, 300:812])
