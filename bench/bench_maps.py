"""Benchmark heatmap exports and fine maps (issue 15, points 2 and 6).

1. QuPath detections: ``--tiles`` (default 10 000) patches with three measurements and a cluster
   class written as one GeoJSON detection each (``histokd_core.export.write_detections``), and
   read back (``read_detections``); beside it the shapely-based annotation writer
   (``write_geojson``) on the same squares as the reference, ratio in the same run.
2. Fine maps: a 100 000 x 100 000 px slide tiled at 256 px patches, stride 64 (2.4 M patches when
   the whole slide is tissue; ``--fraction`` keeps a random share), the finest map level computed
   chunk by chunk (``FineMap.levels[0]``, 3125 x 3125 px at 32 px per pixel) and the coarsest
   level; peak RSS growth printed beside the size a level-0 float32 array would take.

Usage: ``python bench/bench_maps.py [--tiles 10000] [--fraction 0.25]``. Timings on a shared
machine are noisy; ratios are measured in one run.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from shapely.geometry import box

from histokd_core.explain.fine import fine_map, heatmap_coords
from histokd_core.export import (
    Annotation,
    PatchClasses,
    read_detections,
    write_detections,
    write_geojson,
)


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench_qupath(n: int, out: Path) -> None:
    rng = np.random.default_rng(0)
    side = int(np.ceil(np.sqrt(n)))
    coords = heatmap_coords((side * 256, side * 256), 256, 256)[:n]
    meas = {"attention": rng.dirichlet(np.ones(n)), "pathway:HYPOXIA": rng.normal(size=n),
            "memory:C+0": rng.random(n)}
    classes = PatchClasses(rng.integers(0, 4, n), colors={k: (40 * k, 100, 200) for k in range(4)},
                           prefix="tumor cluster")
    t = time.perf_counter()
    path = write_detections(out / "detections.geojson", coords, 256, meas, classes)
    t_write = time.perf_counter() - t
    t = time.perf_counter()
    back = read_detections(path)
    t_read = time.perf_counter() - t
    assert len(back.coords) == n
    anns = [Annotation(box(x, y, x + 256, y + 256), classification="c", object_type="detection",
                       measurements={k: float(v[i]) for k, v in meas.items()})
            for i, (x, y) in enumerate(coords.tolist())]
    t = time.perf_counter()
    write_geojson(out / "shapely.geojson", anns)
    t_ref = time.perf_counter() - t
    mb = path.stat().st_size / 2**20
    print(f"QuPath detections: {n} tiles written in {t_write:.2f} s ({n / t_write:,.0f} tiles/s, "
          f"{mb:.1f} MiB), read back in {t_read:.2f} s; shapely annotation writer {t_ref:.2f} s "
          f"(ratio {t_ref / t_write:.1f}x)")


def bench_fine(fraction: float) -> None:
    rng = np.random.default_rng(0)
    dims = (100_000, 100_000)
    coords = heatmap_coords(dims, 256, 64)
    coords = coords[rng.random(len(coords)) < fraction]
    values = rng.random(len(coords))
    before = rss_mib()
    t = time.perf_counter()
    fm = fine_map(coords, values, 256, dims)
    t_build = time.perf_counter() - t
    t = time.perf_counter()
    finest = fm.compute(0)
    t_finest = time.perf_counter() - t
    t = time.perf_counter()
    coarsest = fm.compute(len(fm.levels) - 1)
    t_coarse = time.perf_counter() - t
    level0_gib = dims[0] * dims[1] * 4 / 2**30
    print(f"fine map: {len(coords):,} patches (stride 64, patch 256) on 100k x 100k px; "
          f"{len(fm.levels)} levels, finest {fm.shape} at {fm.downsamples[0]:.0f} px/pixel "
          f"built lazily in {t_build:.2f} s, computed in {t_finest:.1f} s "
          f"({np.isfinite(finest).mean():.0%} covered), coarsest {coarsest.shape} in {t_coarse:.2f} s; "
          f"peak RSS +{rss_mib() - before:.0f} MiB (a level-0 float32 array: {level0_gib:.0f} GiB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", type=int, default=10_000)
    ap.add_argument("--fraction", type=float, default=0.25,
                    help="share of the 100k slide's 2.4 M patches kept for the fine map")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bench_qupath(args.tiles, Path(tmp))
    bench_fine(args.fraction)


if __name__ == "__main__":
    main()
