"""Pyramid levels as dask arrays: native levels from any backend, plus lazy extra levels.

Native levels are ``da.from_zarr(zarr_group[str(level)])`` for tiffslide (stable across 3.x and
4.x) or ``da.from_array`` over a backend's tile reader (OpenSlide, wsidicom), with chunks made of
whole tiles (about 1024 px), so only the chunks under a view are decoded. Strip-organised files (e.g. NDPI, plain TIFFs) get chunks of whole strips. When the file's
coarsest level is still large (single-level SVS, huge non-pyramidal TIFFs), halved levels are
added lazily: each is a 2x2 box mean of the level above, computed chunk by chunk on demand, so
napari can draw an overview without ever holding a whole level 0 in memory.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import dask.array as da
import numpy as np

from histokd_core.slide.tiles import DECODE_THREADS, read_indexed

#: Target dask chunk side (px): native tiles/strips are grouped to about this size.
TARGET_CHUNK = 1024
#: Extra levels are added until the coarsest level's longer side is at most this (px).
OVERVIEW_MAX_SIDE = 1024
# tiffslide's zarr store (the dask levels' reader) decodes serially inside zarr's event loop
# unless told otherwise (its default is half the CPUs, and under 3 it decodes inline), so it is
# told here, before any slide is opened; a value set by the user wins.
os.environ.setdefault("TIFFSLIDE_NUM_DECODE_THREADS", str(DECODE_THREADS))


def _axis_chunk(native: int, size: int, target: int = TARGET_CHUNK) -> int:
    """Chunk length along one axis: whole native chunks grouped to about ``target`` px.

    Full-width strips (one chunk spanning a long axis) are split to ``target``.
    """
    if native >= size:
        return size if size <= 4 * target else target
    return native * max(1, target // native)


def as_rgb_level(array) -> da.Array:
    """A dask ``(h, w, 3)`` uint8 view of one native level (``YXS``, ``CYX`` or ``YX`` axes).

    ``array`` is a zarr array (tiffslide), a :class:`~histokd_core.slide.tiles.TiledLevel` (tiled
    TIFF levels) or a :class:`~histokd_core.slide.backends.RegionArray` (OpenSlide, wsidicom);
    its ``chunks`` are the file's tiles.

    Each dask chunk is a block of whole TIFF tiles (or strips) of about ``TARGET_CHUNK`` px
    (e.g. 4 x 4 tiles of 256 px), read with one call that decodes its tiles concurrently.
    Grouping tiles and inlining the array keep dask's per-read overhead small: with one
    chunk per tile a 50k x 50k level has 38 000 chunks and a 512 px read is ~6x slower.
    """
    shape, native = array.shape, array.chunks
    if len(shape) == 2:
        yx_axes = (0, 1)
    elif shape[0] in (3, 4) and shape[-1] not in (3, 4):  # CYX
        yx_axes = (1, 2)
    else:  # YXS
        yx_axes = (0, 1)
    chunks = list(shape)
    for axis in yx_axes:
        chunks[axis] = _axis_chunk(native[axis], shape[axis])
    meta = np.empty((0,) * len(shape), dtype=array.dtype)  # given: dask would read a slice for it
    if hasattr(array, "store"):  # a zarr array (tiffslide)
        level = da.from_zarr(array, chunks=tuple(chunks), inline_array=True, meta=meta)
    else:  # a TiledLevel or a backends.RegionArray: one read call per chunk
        level = da.from_array(array, chunks=tuple(chunks), inline_array=True, lock=False, meta=meta)
    if level.ndim == 2:  # grey: replicate into RGB
        level = da.stack([level] * 3, axis=-1)
    elif yx_axes == (1, 2):
        level = level.transpose(1, 2, 0)
    if level.shape[-1] == 4:
        level = level[..., :3]
    return level


class DisplayLevel:
    """What napari reads: one native RGB level ``(h, w, 3)`` uint8, sliced without dask.

    napari slices each level of a multiscale layer and converts the result with ``np.asarray``.
    Through dask, every slice pays graph construction and scheduling, and reads whole ~1024 px
    chunks even for a small view. Here a slice reads exactly the tiles it covers with one call to
    the level's reader: a tiled TIFF level's :class:`~histokd_core.slide.tiles.TiledLevel` (or
    tiffslide's zarr store) decodes them on ``DECODE_THREADS`` threads. For arrays without their
    own parallel decode (``parallel_inside=False``, e.g. other backends' region readers) a region
    spanning several tile rows is read as tile-aligned bands in a thread pool. Nothing is cached,
    so memory stays flat while panning.

    Parameters
    ----------
    array : the level as the backend gives it: ``(h, w, 3)`` with ``chunks`` (tile shape) and
        numpy-style slicing (a zarr array, or a region reader with the same interface).
    parallel_inside : whether one read of ``array`` already decodes its tiles in parallel
        (default: the array's own ``parallel_inside`` attribute, else true for zarr arrays).
    """

    def __init__(self, array, parallel_inside: bool | None = None) -> None:
        if len(array.shape) != 3 or array.shape[2] != 3:
            raise ValueError(f"DisplayLevel needs an (h, w, 3) level, got shape {array.shape}")
        self.array = array
        self.shape = tuple(int(v) for v in array.shape)
        self.dtype = np.dtype(array.dtype)
        self.ndim = 3
        self.size = int(np.prod(self.shape))
        self.tile_hw = (int(array.chunks[0]), int(array.chunks[1]))
        if parallel_inside is None:
            parallel_inside = getattr(array, "parallel_inside", hasattr(array, "store"))
        self.parallel_inside = bool(parallel_inside)
        self._pool: ThreadPoolExecutor | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:, :, :]
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, key) -> np.ndarray:
        return read_indexed(key, self.shape, self._read)

    def _read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels ``[y0:y1, x0:x1]`` as a new ``(h, w, 3)`` uint8 array."""
        th = self.tile_hw[0]
        rows = list(range((y0 // th + 1) * th, y1, th))
        if y1 <= y0 or x1 <= x0 or self.parallel_inside or not rows:
            return np.asarray(self.array[y0:y1, x0:x1])
        edges = [y0, *rows, y1]
        bands = max(1, min(DECODE_THREADS, len(edges) - 1))
        cuts = [edges[round(i * (len(edges) - 1) / bands)] for i in range(bands + 1)]
        out = np.empty((y1 - y0, x1 - x0, 3), dtype=self.dtype)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="histokd-tiles")

        def band(i: int) -> None:
            out[cuts[i] - y0 : cuts[i + 1] - y0] = self.array[cuts[i] : cuts[i + 1], x0:x1]

        list(self._pool.map(band, range(bands)))
        return out

    def __repr__(self) -> str:
        return f"DisplayLevel(shape={self.shape}, tile={self.tile_hw})"


def display_levels(levels: list[da.Array], direct: dict[int, object]) -> list:
    """The arrays napari reads: a :class:`DisplayLevel` for every native RGB level that can be
    read directly (``direct[i]``), the dask level otherwise (other layouts, lazy overviews)."""
    return [DisplayLevel(direct[i]) if i in direct else level for i, level in enumerate(levels)]


def _mean_2x2(block: np.ndarray) -> np.ndarray:
    """Box-mean a ``(2h, 2w, c)`` uint8 block to ``(h, w, c)`` uint8, rounding to nearest."""
    h2, w2 = (block.shape[0] // 2) * 2, (block.shape[1] // 2) * 2
    # four strided adds: numpy's sum over the axes of a (h, 2, w, 2, c) view is ~20x slower
    acc = block[0:h2:2, 0:w2:2].astype(np.uint16)
    acc += block[1:h2:2, 0:w2:2]
    acc += block[0:h2:2, 1:w2:2]
    acc += block[1:h2:2, 1:w2:2]
    acc += 2
    acc >>= 2
    return acc.astype(np.uint8)


def downsample_2x(level: da.Array, target: int = TARGET_CHUNK) -> da.Array:
    """Lazily halve a ``(h, w, 3)`` uint8 level with a 2x2 box mean (odd edge row/column dropped).

    Each output block is computed from one input chunk (rechunked to even sizes only when
    needed), and output blocks are merged back to about ``target`` px, so every task holds a
    few MB and the chunk count shrinks with the level.
    """
    h, w = (level.shape[0] // 2) * 2, (level.shape[1] // 2) * 2
    src = level[:h, :w]
    if any(c % 2 for axis in src.chunks[:2] for c in axis):
        src = src.rechunk((2 * (target // 2), 2 * (target // 2), level.shape[2]))
    out = src.map_blocks(
        _mean_2x2,
        chunks=(
            tuple(c // 2 for c in src.chunks[0]),
            tuple(c // 2 for c in src.chunks[1]),
            src.chunks[2],
        ),
        dtype=np.uint8,
    )
    ch, cw = out.chunksize[:2]
    merged = (ch * max(1, target // ch), cw * max(1, target // cw), out.shape[2])
    return out.rechunk(merged) if merged[:2] != (ch, cw) else out


def with_overview_levels(
    levels: list[da.Array], max_side: int = OVERVIEW_MAX_SIDE
) -> list[da.Array]:
    """Append lazy halved levels until the coarsest longer side is at most ``max_side`` px."""
    levels = list(levels)
    while max(levels[-1].shape[:2]) > max_side and min(levels[-1].shape[:2]) >= 2:
        levels.append(downsample_2x(levels[-1]))
    return levels


def n_overview_levels(shape_hw: tuple[int, int], max_side: int = OVERVIEW_MAX_SIDE) -> int:
    """How many halved levels :func:`with_overview_levels` adds after a level of this shape."""
    h, w = shape_hw
    n = 0
    while max(h, w) > max_side and min(h, w) >= 2:
        h, w, n = h // 2, w // 2, n + 1
    return n


def level_downsample(level0_wh: tuple[int, int], level_wh: tuple[int, int]) -> float:
    """openslide's level downsample: the mean of the width and height ratios."""
    return 0.5 * (level0_wh[0] / level_wh[0] + level0_wh[1] / level_wh[1])


def best_level_for_downsample(downsamples: list[float], downsample: float) -> int:
    """The coarsest level whose downsample does not exceed ``downsample`` (openslide's rule)."""
    best = 0
    for i, ds in enumerate(downsamples):
        if ds <= downsample * (1 + 1e-6):
            best = i
    return best
