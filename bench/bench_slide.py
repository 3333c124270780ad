"""Benchmark lazy whole-slide access on a synthetic pyramid (issues 2 and 16, point 3).

Measures, on an N x N synthetic JPEG pyramid (default 50 000 px):
1. time to write the slide (bounded memory, tile by tile);
2. time to open it and read the first screen-sized view at the lowest resolution, through what
   napari reads (the reader's layer data): first with the file evicted from the OS page cache
   (``fsync`` + ``posix_fadvise(DONTNEED)``, checked with ``mincore``: a cold open that reads
   the IFDs from disk), then again with it cached;
3. random 512 x 512 reads per second at level 0 through what napari reads
   (``Slide.display_levels``), the dask pyramid and ``Slide.read_region``, each as a ratio to
   ``TiffSlide.read_region`` at the same locations in the same run;
4. screen-sized (1920 x 1080) level-0 reads, many tiles each: the same readers, ratio to
   ``TiffSlide.read_region``, with the CPU time per read and the codec's share: the JPEG decode
   time of the same tiles on one thread (bytes already read), hence the ratio a perfect
   ``DECODE_THREADS``-way parallel decode with no other cost would reach (the ceiling);
5. peak RSS while panning screen by screen across the whole of a level (default level 0) through
   what napari reads, which must stay bounded (it does not grow with the slide size).

``--quick-write`` writes the pyramid from 64 distinct rendered tiles repeated (real JPEG tiles,
the same decode cost, encoded once and written as pre-compressed tiles: seconds at 50 000 px
instead of ~10 min).

Usage: ``python bench/bench_slide.py [--size 50000] [--reads 300] [--pan-level 0] [--keep DIR]``;
``--slide FILE`` measures an existing slide instead (no write).
Timings on a shared machine are noisy; ratios are measured in one run.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import tiffslide  # noqa: F401 - imported up front so "open slide" times the open, not imports

from histokd_core.slide import open_slide
from histokd_core.slide.tiles import DECODE_THREADS
from histokd_core.synthetic import write_synthetic_slide
from napari_histokd._reader import slide_layer_data

SCREEN_WH = (1920, 1080)


def rss_mib() -> tuple[float, float]:
    """Current and peak resident set size of this process (MiB), from /proc."""
    values = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return values.get("VmRSS", float("nan")), values.get("VmHWM", float("nan"))


def reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0); ignored elsewhere."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def evict_from_page_cache(path: Path) -> None:
    """Drop the file's pages from the OS page cache (written back first, so none stays dirty)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cached_fraction(path: Path) -> float:
    """Share of the file's pages in the OS page cache (``mincore``; NaN where unavailable)."""
    import ctypes
    import mmap

    size = path.stat().st_size
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_COPY) as mm:
            page = mmap.PAGESIZE
            vec = (ctypes.c_ubyte * (-(-size // page)))()
            base = ctypes.c_char.from_buffer(mm)
            try:
                rc = libc.mincore(ctypes.c_void_p(ctypes.addressof(base)), ctypes.c_size_t(size), vec)
            finally:
                del base
        if rc != 0:
            return float("nan")
        return sum(v & 1 for v in vec) / len(vec)
    except (OSError, AttributeError, ValueError):
        return float("nan")


def write_repeated_tiles(path: Path, size: int, mpp: float = 0.5, tile: int = 256) -> None:
    """A pyramidal JPEG TIFF like :func:`write_synthetic_slide`'s, from 64 rendered tiles repeated.

    The 64 tiles are JPEG-encoded once, by tifffile with the same options, and every level is
    written from those encoded bytes (tifffile writes an iterator of bytes as pre-compressed
    tiles), so a 50 000 px pyramid (~51 000 tiles) is written at disk speed, not re-encoded tile
    by tile. Tile ``i`` of a level, in row-major order, holds ``pool[(7 i) % 64]``
    (:func:`repeated_tile_index`); each tile decodes like any other JPEG tile.
    """
    import tifffile

    pool = encoded_tile_pool(mpp, tile)
    shapes = [(size, size)]
    while max(shapes[-1]) > tile:
        shapes.append((shapes[-1][0] // 2, shapes[-1][1] // 2))

    def tiles(h: int, w: int):
        for i in range(-(-h // tile) * -(-w // tile)):
            yield pool[repeated_tile_index(i)]

    tmp_path = path.with_suffix(".part")
    options = tiff_options(mpp, tile)
    with tifffile.TiffWriter(tmp_path, bigtiff=True) as tif:
        tif.write(tiles(*shapes[0]), shape=(*shapes[0], 3), subifds=len(shapes) - 1, **options)
        for shape in shapes[1:]:
            tif.write(tiles(*shape), shape=(*shape, 3), subfiletype=1, **options)
    os.replace(tmp_path, path)


def tiff_options(mpp: float, tile: int) -> dict:
    """tifffile options of every level: RGB JPEG tiles at quality 90, resolution from ``mpp``."""
    res = 1e4 / mpp
    return dict(tile=(tile, tile), photometric="rgb", compression="jpeg", compressionargs={"level": 90},
                resolution=(res, res), resolutionunit="CENTIMETER", dtype=np.uint8, metadata=None)


def encoded_tile_pool(mpp: float = 0.5, tile: int = 256) -> list[bytes]:
    """64 tiles of a rendered 8 x 8-tile synthetic slide, row-major, each as the JPEG bytes tifffile
    writes for it with :func:`tiff_options` (read back from a one-level TIFF)."""
    import tifffile

    with tempfile.TemporaryDirectory() as tmp:
        small = write_synthetic_slide(Path(tmp) / "s.tif", (8 * tile, 8 * tile), mpp=mpp, seed=0, tile=tile)
        with open_slide(small.path) as s:
            image = s.levels[0].compute()
        pool_path = Path(tmp) / "pool.tif"
        tifffile.imwrite(pool_path, image, **tiff_options(mpp, tile))
        with tifffile.TiffFile(pool_path) as tf:
            page, fh = tf.pages[0], tf.filehandle
            pool = []
            for offset, count in zip(page.dataoffsets, page.databytecounts):
                fh.seek(offset)
                pool.append(fh.read(count))
    return pool


def repeated_tile_index(i: int) -> int:
    """Which of the 64 pool tiles (row-major over the 8 x 8 rendered tiles) is tile ``i``."""
    return (i * 7) % 64


def bench_open_first_view(path: Path, cold: bool = False) -> dict:
    """Open the slide, build the napari layer data and read the first screen at the lowest
    level; ``cold``: with the file evicted from the page cache first (``cached`` says how much
    of it was still cached then)."""
    cached = float("nan")
    if cold:
        evict_from_page_cache(path)
        cached = cached_fraction(path)
    t0 = time.perf_counter()
    slide = open_slide(path)
    data, _, _ = slide_layer_data(slide)
    t_open = time.perf_counter() - t0
    level = slide.level_count - 1
    lw, lh = slide.level_dimensions[level]
    w, h = min(lw, SCREEN_WH[0]), min(lh, SCREEN_WH[1])
    t1 = time.perf_counter()
    view = np.asarray(data[level][:h, :w])
    t_view = time.perf_counter() - t1
    slide.close()
    return {"open_s": t_open, "first_view_s": t_view, "level": level, "view_shape": view.shape,
            "cached": cached}


def bench_random_reads(
    path: Path, n: int, size: int = 512, seed: int = 0, rounds: int = 3, wh: tuple[int, int] | None = None
) -> dict:
    from tiffslide import TiffSlide

    slide = open_slide(path)
    ts = TiffSlide(path)
    # the reference is tiffslide as it comes: importing histokd_core.slide sets
    # TIFFSLIDE_NUM_DECODE_THREADS for our own reads, so build its store without it
    ours = os.environ.pop("TIFFSLIDE_NUM_DECODE_THREADS", None)
    try:
        ts.zarr_group  # noqa: B018 - created now (per thread, cached) with tiffslide's default
    finally:
        if ours is not None:
            os.environ["TIFFSLIDE_NUM_DECODE_THREADS"] = ours
    w, h = slide.dimensions
    rw, rh = wh or (size, size)
    rng = random.Random(seed)
    locs = [(rng.randrange(0, w - rw), rng.randrange(0, h - rh)) for _ in range(n)]
    level0 = slide.levels[0]
    napari_level0 = slide_layer_data(slide)[0][0]

    def napari_read(x, y):
        return np.asarray(napari_level0[y : y + rh, x : x + rw])

    def dask_read(x, y):
        return level0[y : y + rh, x : x + rw].compute()

    def dask_read_sync(x, y):
        return level0[y : y + rh, x : x + rw].compute(scheduler="synchronous")

    per_tile = da.from_zarr(ts.zarr_group["0"])  # one dask chunk per TIFF tile, not inlined

    def dask_read_per_tile(x, y):
        return per_tile[y : y + rh, x : x + rw].compute()

    def slide_read(x, y):
        return slide.read_region((x, y), 0, (rw, rh))

    def ts_read(x, y):
        return ts.read_region((x, y), 0, (rw, rh), as_array=True)

    for x, y in locs[:5]:  # equality check
        assert np.array_equal(dask_read(x, y), ts_read(x, y))
        assert np.array_equal(napari_read(x, y), ts_read(x, y))
    for x, y in locs:  # warm the OS page cache so no reader pays for the first disk reads
        ts_read(x, y)
    readers = {
        "tiffslide": ts_read,
        "napari": napari_read,
        "dask": dask_read,
        "dask_sync": dask_read_sync,
        "dask_per_tile": dask_read_per_tile,
        "slide_read_region": slide_read,
    }
    if wh is not None:
        readers.pop("dask_per_tile")
    # best of `rounds` interleaved rounds: the machine is shared, so take each reader's best
    rates = dict.fromkeys(readers, 0.0)
    cpu_ms = dict.fromkeys(readers, float("inf"))
    for _ in range(rounds):
        for name, fn in readers.items():
            subset = locs[: max(10, n // 5)] if name == "dask_per_tile" else locs  # it is slow
            c0, t0 = time.process_time(), time.perf_counter()
            for x, y in subset:
                fn(x, y)
            rates[name] = max(rates[name], len(subset) / (time.perf_counter() - t0))
            cpu_ms[name] = min(cpu_ms[name], 1000 * (time.process_time() - c0) / len(subset))
    ts.close()
    slide.close()
    return {"rates": rates, "cpu_ms": cpu_ms, "locs": locs, "wh": (rw, rh)}


def bench_decode_share(path: Path, locs: list[tuple[int, int]], wh: tuple[int, int], rounds: int = 3) -> dict:
    """The codec's own time for the level-0 tiles under each region: tifffile's decode function
    (the one both readers call) on one thread, the tile bytes read beforehand; best of ``rounds``.

    Returns the mean tiles per region and the decode milliseconds per region.
    """
    import tifffile

    rw, rh = wh
    with tifffile.TiffFile(path) as tf:
        page = tf.series[0].levels[0].pages[0]
        th, tw = page.tilelength, page.tilewidth
        across = -(-page.imagewidth // tw)
        decode = page.decode
        args = {"_fullsize": True} | ({"jpegtables": page.jpegtables} if page.jpegtables else {})
        fh = tf.filehandle
        regions = []
        for x, y in locs:
            tiles = []
            for ty in range(y // th, (y + rh - 1) // th + 1):
                for tx in range(x // tw, (x + rw - 1) // tw + 1):
                    i = ty * across + tx
                    fh.seek(page.dataoffsets[i])
                    tiles.append((i, fh.read(page.databytecounts[i])))
            regions.append(tiles)
        best = float("inf")
        for _ in range(rounds):
            t0 = time.perf_counter()
            for tiles in regions:
                for i, data in tiles:
                    decode(data, i, **args)
            best = min(best, time.perf_counter() - t0)
    return {"tiles_per_region": sum(map(len, regions)) / len(regions), "decode_ms": 1000 * best / len(regions)}


def bench_pan(path: Path, level: int) -> dict:
    """Read every screen-sized window of ``level`` in raster order; track RSS."""
    slide = open_slide(path)
    arr = slide_layer_data(slide)[0][level]
    lh, lw = arr.shape[:2]
    sw, sh = SCREEN_WH
    reset_peak_rss()
    rss0, _ = rss_mib()
    samples = []
    n = 0
    t0 = time.perf_counter()
    for y in range(0, lh, sh):
        for x in range(0, lw, sw):
            np.asarray(arr[y : y + sh, x : x + sw])
            n += 1
        samples.append(rss_mib()[0])
    elapsed = time.perf_counter() - t0
    _, peak = rss_mib()
    slide.close()
    return {
        "level": level,
        "level_shape": (lh, lw),
        "screens": n,
        "seconds": elapsed,
        "mpx_per_s": lh * lw / 1e6 / elapsed,
        "rss_start_mib": rss0,
        "rss_peak_mib": max(peak, max(samples)),
        "rss_end_mib": samples[-1],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=50_000, help="slide side in px (default 50000)")
    p.add_argument("--reads", type=int, default=200, help="random 512x512 reads per round")
    p.add_argument("--pan-level", type=int, default=0, help="level panned across (default 0)")
    p.add_argument("--keep", type=Path, help="directory to keep (and reuse) the slide in")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds, best kept (default 3)")
    p.add_argument("--screens", type=int, default=30, help="random screen-sized reads per round")
    p.add_argument("--quick-write", action="store_true", help="pyramid from 64 rendered tiles repeated")
    p.add_argument("--slide", type=Path, help="measure this existing slide instead of writing one")
    args = p.parse_args(argv)
    load0 = os.getloadavg()

    tmp = None
    directory = args.keep
    if directory is None:
        tmp = tempfile.TemporaryDirectory(prefix="histokd-bench-")
        directory = Path(tmp.name)
    directory.mkdir(parents=True, exist_ok=True)
    path = args.slide or directory / f"bench_{args.size}_seed{args.seed}.tif"
    rows: list[tuple[str, str]] = []
    try:
        if args.slide is not None:
            rows.append(("slide", str(path)))
        elif path.exists():
            rows.append(("write slide", "reused existing file"))
        else:
            t0 = time.perf_counter()
            if args.quick_write:
                write_repeated_tiles(path, args.size)
                rows.append(("write slide (64 tiles repeated)", f"{time.perf_counter() - t0:.1f} s"))
            else:
                info = write_synthetic_slide(path, (args.size, args.size), mpp=0.5, seed=args.seed)
                dt = time.perf_counter() - t0
                rate = args.size**2 / 1e6 / dt
                levels = len(info.level_dimensions)
                rows.append(("write slide", f"{dt:.1f} s ({rate:.1f} Mpx/s, {levels} levels)"))
        rows.append(("file size", f"{path.stat().st_size / 2**20:.0f} MiB"))
        _, peak_write = rss_mib()
        rows.append(("peak RSS so far (incl. writing)", f"{peak_write:.0f} MiB"))

        for cold in (True, False):
            first = bench_open_first_view(path, cold=cold)
            state = (f"file evicted from the page cache, {100 * first['cached']:.1f} % cached"
                     if cold else "file in the page cache")
            rows.append((f"open slide + napari layer data ({state})", f"{1000 * first['open_s']:.1f} ms"))
            rows.append((
                f"first screen at lowest resolution (level {first['level']}, "
                f"{first['view_shape'][1]}x{first['view_shape'][0]}), {'cold' if cold else 'cached'}",
                f"{1000 * first['first_view_s']:.1f} ms",
            ))
            if cold:
                total = first["open_s"] + first["first_view_s"]
                rows.append(("first view, cold: open + layer data + first screen", f"{1000 * total:.1f} ms"))
        labels = {
            "tiffslide": "TiffSlide.read_region",
            "napari": "what napari reads (display_levels)",
            "dask": "Slide.levels[0] (dask), threads",
            "dask_sync": "Slide.levels[0] (dask), synchronous",
            "dask_per_tile": "plain da.from_zarr (chunk = tile)",
            "slide_read_region": "Slide.read_region (direct)",
        }
        for what, kwargs in (("512x512", {"n": args.reads}), ("1920x1080", {"n": args.screens, "wh": SCREEN_WH})):
            reads = bench_random_reads(path, seed=args.seed, rounds=args.rounds, **kwargs)
            rates, cpu_ms = reads["rates"], reads["cpu_ms"]
            for key, label in labels.items():
                if key in rates:
                    ratio = rates[key] / rates["tiffslide"]
                    rows.append((
                        f"random {what} reads/s, {label}",
                        f"{rates[key]:.1f} (ratio {ratio:.2f}; {cpu_ms[key]:.1f} CPU-ms per read)",
                    ))
            share = bench_decode_share(path, reads["locs"], reads["wh"], rounds=args.rounds)
            ts_ms = 1000 / rates["tiffslide"]
            ceiling = ts_ms / (share["decode_ms"] / DECODE_THREADS)
            rows.append((
                f"random {what}: codec time per read, 1 thread ({share['tiles_per_region']:.1f} tiles)",
                f"{share['decode_ms']:.1f} ms ({100 * share['decode_ms'] / ts_ms:.0f} % of "
                f"TiffSlide.read_region's {ts_ms:.1f} ms)",
            ))
            rows.append((
                f"random {what}: ceiling ratio, {DECODE_THREADS}-way decode and nothing else",
                f"{ceiling:.2f}",
            ))
        with dask.config.set(scheduler="threads"):
            pan = bench_pan(path, args.pan_level)
        lh, lw = pan["level_shape"]
        rows.append((
            f"pan level {pan['level']} ({lw}x{lh}, {pan['screens']} screens)",
            f"{pan['seconds']:.1f} s ({pan['mpx_per_s']:.0f} Mpx/s)",
        ))
        rows.append((
            "RSS while panning: start / peak / end",
            f"{pan['rss_start_mib']:.0f} / {pan['rss_peak_mib']:.0f} / "
            f"{pan['rss_end_mib']:.0f} MiB "
            f"(level is {lh * lw * 3 / 2**20:.0f} MiB decoded)",
        ))
    finally:
        if tmp is not None:
            tmp.cleanup()

    width = max(len(k) for k, _ in rows)
    cpus = os.cpu_count()
    load = os.getloadavg()
    what = path.name if args.slide else f"{args.size} x {args.size} px synthetic JPEG pyramid"
    print(f"bench_slide: {what}, {cpus} CPUs, "
          f"load average {load0[0]:.1f} / {load0[1]:.1f} / {load0[2]:.1f} at the start, "
          f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end")
    print(f"| {'measure'.ljust(width)} | value |")
    print(f"|{'-' * (width + 2)}|-------|")
    for k, v in rows:
        print(f"| {k.ljust(width)} | {v} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
