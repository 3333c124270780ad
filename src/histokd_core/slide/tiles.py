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


class TileFile:
    """A read-only descriptor of a TIFF file, shared by its :class:`TiledLevel` readers.

    ``os.pread`` reads at an offset without seeking, so threads read concurrently without a lock.
    """

    def __init__(self, path: str | os.PathLike) -> None:
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

    Slicing with unit-step slices (``level[y0:y1, x0:x1]``) returns a new ``(h, w, 3)`` array;
    ``chunks`` is the tile shape. Missing tiles (offset or byte count 0) read as 0, as in zarr.

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
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (3 - len(key))
        ys, xs, cs = key
        if not (isinstance(ys, slice) and isinstance(xs, slice)):
            raise TypeError("TiledLevel supports slices only")
        y0, y1, ystep = ys.indices(self.shape[0])
        x0, x1, xstep = xs.indices(self.shape[1])
        if ystep != 1 or xstep != 1:
            raise TypeError("TiledLevel supports unit-step slices only")
        return self.read(y0, max(y0, y1), x0, max(x0, x1))[:, :, cs]

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

    def __repr__(self) -> str:
        return f"TiledLevel(shape={self.shape}, tile={self.tile_hw})"
