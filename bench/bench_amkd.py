"""AMKD cost: student/teacher parameters, FLOPs at 10 000 patches, peak memory and time per slide.

Prints a table next to the paper's student (803 K parameters, 1.69 GFLOPs). FLOPs are counted
with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and attention; 1 multiply-add = 2
FLOPs; MACs = FLOPs / 2, the unit tools such as thop/fvcore call "FLOPs"). Peak memory is the
resident set size of a fresh subprocess, polled during one inference forward (CPU), above
its size before the forward (model and inputs already built), or
``torch.cuda.max_memory_allocated`` on CUDA.

Usage: ``python bench/bench_amkd.py [--patches 10000 50000] [--feat-dim 1024] [--device cpu]``.
The machine may be shared: timings are noisy.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import threading
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from histokd_core.bag import Bag, DataInfo
from histokd_core.methods.amkd import Config, stages

N_PATHWAYS, N_GENES = 331, 4999


def make_info(feat_dim: int) -> DataInfo:
    g = torch.Generator().manual_seed(0)
    sizes = torch.randint(10, 60, (N_PATHWAYS,), generator=g).tolist()  # ~SurvPath's set sizes
    pathways = [torch.randperm(N_GENES, generator=g)[:s].tolist() for s in sizes]
    return DataInfo("survival", feat_dim, N_GENES, pathways=pathways)


def build(kind: str, feat_dim: int):
    info = make_info(feat_dim)
    stage = {s.name: s for s in stages(Config())}[kind]
    return stage.build(info, {}).eval()


def make_bag(n: int, feat_dim: int, device: str) -> Bag:
    return Bag(
        "bench", torch.randn(n, feat_dim, device=device),
        torch.zeros(n, 2, dtype=torch.long, device=device),
        omics=torch.randn(N_GENES, device=device),
    )


def rss_mib() -> float:
    """Current resident set size of this process (MiB, Linux)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def peak_during(fn) -> tuple[float, float]:
    """Run ``fn()``; (peak RSS above the starting RSS in MiB, seconds), polled every 2 ms."""
    start, peak, done = rss_mib(), [0.0], threading.Event()

    def poll():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib() - start)
            time.sleep(0.002)

    thread = threading.Thread(target=poll)
    thread.start()
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    done.set()
    thread.join()
    return max(peak[0], rss_mib() - start), seconds


def measure(kind: str, n: int, feat_dim: int, device: str) -> dict:
    """Run in a fresh process: peak memory (MiB) and seconds of one forward at ``n`` patches."""
    model = build(kind, feat_dim).to(device)
    bag = make_bag(n, feat_dim, device)

    def forward():
        with torch.no_grad():
            model.predict(bag)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        forward()
        return {"peak_mib": torch.cuda.max_memory_allocated() / 2**20,
                "seconds": time.perf_counter() - t0}
    peak, seconds = peak_during(forward)
    return {"peak_mib": peak, "seconds": seconds}


def flops(kind: str, n: int, feat_dim: int) -> int:
    model = build(kind, feat_dim)
    bag = make_bag(n, feat_dim, "cpu")
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.predict(bag)
    return counter.get_total_flops()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patches", type=int, nargs="+", default=[10_000, 50_000])
    ap.add_argument("--feat-dim", type=int, default=1024)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--measure", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        kind, n = args.measure[0], int(args.measure[1])
        print(json.dumps(measure(kind, n, args.feat_dim, args.device)))
        return
    print(f"AMKD cost, feat_dim {args.feat_dim}, {N_PATHWAYS} pathways, device {args.device}")
    head = f"{'model':8} {'params':>10} {'GFLOPs@10k':>11} {'GMACs@10k':>10}"
    print(head + "   paper student: 803 K, 1.69 G")
    for kind in ("student", "teacher"):
        params = sum(p.numel() for p in build(kind, args.feat_dim).parameters())
        f = flops(kind, 10_000, args.feat_dim) / 1e9
        print(f"{kind:8} {params:>10,} {f:>11.2f} {f / 2:>10.2f}")
    print(f"\n{'model':8} {'patches':>8} {'peak MiB':>9} {'seconds':>8}  (one inference forward)")
    for kind in ("student", "teacher"):
        for n in args.patches:
            cmd = [sys.executable, __file__, "--measure", kind, str(n), "--feat-dim",
                   str(args.feat_dim), "--device", args.device]
            res = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
            print(f"{kind:8} {n:>8} {res['peak_mib']:>9.0f} {res['seconds']:>8.2f}")


if __name__ == "__main__":
    main()
