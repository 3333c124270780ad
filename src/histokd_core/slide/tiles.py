"""Direct reads of tiled TIFF levels: a region's tiles fetched with ``os.pread`` and decoded on
a small thread pool, straight into the output array.

tiffslide reads a region through zarr: an asyncio event loop, one store ``get`` per tile, a
buffer copy per tile and a file lock around every read. For a screen-sized view (about 44 tiles
of 256 px) that costs about as much CPU as the JPEG decode itself (``bench/bench_slide.py``
prints both), and decode threads (``TIFFSLIDE_NUM_DECODE_THREADS``) wait on it. :class:`TiledLevel` reads the same pixels with
tifffile's own decode function for the page (the same codec call, so the same pixels as
``TiffSlide.read_region``): each worker takes the next tile, reads its bytes with ``os.pread``
(no seek, no lock), decodes it (the codecs release the GIL) and copies the part under the region
into the output. The calling thread decodes too, so a region of one tile costs no hand-off.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

#: Threads that decode the tiles of one read (the caller included).
DECODE_THREADS = max(2, min(8, os.cpu_count() or 2))

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _decode_pool() -> ThreadPoolExecutor:
    """The process-wide pool of ``DECODE_THREADS - 1`` helper threads (created on first use)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(DECODE_THREADS - 1, thread_name_prefix="histokd-decode")
        return _pool


def _forget_pool_in_child() -> None:
    """A forked child (e.g. a data-loader worker) has none of the parent's threads: start afresh."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool_in_child)


def _axis_range(key, size: int) -> tuple[int, int, int, bool]:
    """``(start, stop, step, squeeze)`` of an int or slice index along an axis of length ``size``."""
    if isinstance(key, (int, np.integer)):
        i = int(key) + (size if key < 0 else 0)
        if not 0 <= i < size:
            raise IndexError(f"index {key} is out of bounds for an axis of size {size}")
        return i, i + 1, 1, True
    if isinstance(key, slice):
        start, stop, step = key.indices(size)
        if step < 1:
            raise IndexError("slide levels support positive slice steps only")
        return start, max(start, stop), step, False
    raise IndexError(f"slide levels support int and slice indices, got {type(key).__name__}")


def read_indexed(key, shape: tuple[int, int, int], read: Callable[[int, int, int, int], np.ndarray]) -> np.ndarray:
    """``level[key]`` of an ``(h, w, 3)`` level whose pixels ``[y0:y1, x0:x1]`` are
    ``read(y0, y1, x0, x1)``: int, slice (positive steps) and ``...`` indices, as numpy gives them.

    The bounding box of the selection is read once, then strided and squeezed (views).
    """
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is Ellipsis for k in key):
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (3 - len(key) + 1) + key[i + 1 :]
    key = key + (slice(None),) * (3 - len(key))
    if len(key) != 3:
        raise IndexError(f"too many indices for a (h, w, 3) level: {len(key)}")
    y0, y1, ys, ysq = _axis_range(key[0], shape[0])
    x0, x1, xs, xsq = _axis_range(key[1], shape[1])
    block = read(y0, y1, x0, x1)[::ys, ::xs]
    block = block[:, :, key[2]]
    if xsq:
        block = block[:, 0]
    if ysq:
        block = block[0]
    return block


class TileFile:
    """A read-only descriptor of a TIFF file, shared by its :class:`TiledLevel` readers.

    ``os.pread`` reads at an offset without seeking, so threads read concurrently without a lock.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        self._fd: int | None = os.open(path, os.O_RDONLY)

    def pread(self, count: int, offset: int) -> bytes:
        """``count`` bytes at byte ``offset``."""
        fd = self._fd
        if fd is None:
            raise ValueError("read from a closed slide")
        return os.pread(fd, count, offset)

    def close(self) -> None:
        """Close the descriptor (idempotent: a closed descriptor's number may be reused)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def tiled_rgb_page(level: Any) -> Any | None:
    """The single tiled, 8-bit RGB (contiguous samples) page of a tifffile level, else ``None``.

    ``level`` is a ``tifffile.TiffPageSeries`` (one pyramid level). Levels of several pages,
    stripped or planar pages, other sample counts or a series transform are left to zarr.
    """
    pages = getattr(level, "pages", None)
    if pages is None or len(pages) != 1 or getattr(level, "transform", None) is not None:
        return None
    page = pages[0]
    keyframe = level.keyframe
    if page is None or not getattr(keyframe, "is_tiled", False):
        return None
    if keyframe.tiledepth != 1 or keyframe.imagedepth != 1 or keyframe.samplesperpixel != 3:
        return None
    if keyframe.planarconfig != 1 or np.dtype(keyframe.dtype) != np.uint8:
        return None
    if tuple(keyframe.shape) != (keyframe.imagelength, keyframe.imagewidth, 3):
        return None
    return page


class TiledLevel:
    """One tiled TIFF level as an ``(h, w, 3)`` uint8 array-like read tile by tile in parallel.

    Indexing (``level[y0:y1, x0:x1]``; ints and strided slices too, see :func:`read_indexed`)
    returns a new array; ``chunks`` is the tile shape. Missing tiles (offset or byte count 0) read as 0, as in zarr.

    Parameters
    ----------
    file : the TIFF file, opened for reading.
    level : the ``tifffile.TiffPageSeries`` of the level; :func:`tiled_rgb_page` must accept it.
    """

    ndim = 3
    dtype = np.dtype(np.uint8)
    #: one read decodes its tiles on several threads (see ``pyramid.DisplayLevel``)
    parallel_inside = True

    def __init__(self, file: TileFile, level: Any) -> None:
        page = tiled_rgb_page(level)
        if page is None:
            raise ValueError("TiledLevel needs a single tiled 8-bit RGB page")
        keyframe = level.keyframe
        self._file = file
        self.shape = (int(keyframe.imagelength), int(keyframe.imagewidth), 3)
        self.tile_hw = (int(keyframe.tilelength), int(keyframe.tilewidth))
        self.chunks = (*self.tile_hw, 3)
        self._across = -(-self.shape[1] // self.tile_hw[1])
        self._offsets = page.dataoffsets  # tuples of int, one per tile, row-major
        self._counts = page.databytecounts
        self._decode = keyframe.decode
        self._decodeargs: dict[str, Any] = {"_fullsize": True}
        if page.jpegtables is not None:
            self._decodeargs["jpegtables"] = page.jpegtables
        if keyframe.jpegheader is not None:
            self._decodeargs["jpegheader"] = keyframe.jpegheader

    def __getitem__(self, key) -> np.ndarray:
        return read_indexed(key, self.shape, self.read)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels ``[y0:y1, x0:x1]`` (level px, within the level) as a new ``(h, w, 3)`` array."""
        out = np.empty((y1 - y0, x1 - x0, 3), dtype=np.uint8)
        if y1 <= y0 or x1 <= x0:
            return out
        th, tw = self.tile_hw
        tiles = [
            (ty, tx)
            for ty in range(y0 // th, (y1 - 1) // th + 1)
            for tx in range(x0 // tw, (x1 - 1) // tw + 1)
        ]
        if len(tiles) == 1 or DECODE_THREADS < 2:
            for ty, tx in tiles:
                self._tile_into(out, y0, y1, x0, x1, ty, tx)
            return out
        queue = iter(tiles)  # shared: each thread takes the next tile (next() is atomic)

        def drain() -> None:
            for ty, tx in queue:
                self._tile_into(out, y0, y1, x0, x1, ty, tx)

        helpers = [_decode_pool().submit(drain) for _ in range(min(DECODE_THREADS, len(tiles)) - 1)]
        try:
            drain()
        finally:  # helpers not started yet have nothing left; wait for the others, even on error
            for future in helpers:
                future.cancel()
            errors = [e for f in helpers if not f.cancelled() and (e := f.exception()) is not None]
        if errors:
            raise errors[0]
        return out

    def _tile_into(self, out: np.ndarray, y0: int, y1: int, x0: int, x1: int, ty: int, tx: int) -> None:
        """Decode tile ``(ty, tx)`` and copy its part inside ``[y0:y1, x0:x1]`` into ``out``."""
        th, tw = self.tile_hw
        ya, yb = max(y0, ty * th), min(y1, (ty + 1) * th)
        xa, xb = max(x0, tx * tw), min(x1, (tx + 1) * tw)
        dst = out[ya - y0 : yb - y0, xa - x0 : xb - x0]
        index = ty * self._across + tx
        offset, count = self._offsets[index], self._counts[index]
        if offset == 0 or count == 0:
            dst[...] = 0
            return
        data = self._file.pread(count, offset)
        tile = self._decode(data, index, **self._decodeargs)[0]
        tile = tile.reshape(th, tw, 3)
        dst[...] = tile[ya - ty * th : yb - ty * th, xa - tx * tw : xb - tx * tw]

    def __dask_tokenize__(self) -> tuple:
        """What names the level in dask graphs: the file and the level's first tile offset."""
        return ("TiledLevel", self._file.path, self.shape, self._offsets[0] if self._offsets else 0)

    def __repr__(self) -> str:
        return f"TiledLevel(shape={self.shape}, tile={self.tile_hw})"
