"""Benchmark of the survival toolkit and the training engine (CPU unless CUDA is present).

Prints a table: Cox NLL forward+backward, C-index (ours vs lifelines), trainer throughput of ABMIL
on bags of UNI-sized features, checkpoint write/read. Timings on a shared machine are noisy.

    python bench/bench_train.py [--patches 2000] [--dim 1024] [--cases 32]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from histokd_core.bag import Bag, DataInfo
from histokd_core.methods.baselines import abmil
from histokd_core.survival import c_index, cox_nll
from histokd_core.train import TrainConfig, Trainer, load_model, save_checkpoint
from histokd_core.train.checkpoint import model_state, read_checkpoint


def timeit(fn, repeat: int = 3) -> float:
    best = math.inf
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bags(n_cases: int, n_patches: int, dim: int, seed: int = 0) -> list[Bag]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_cases):
        feats = torch.from_numpy(rng.normal(size=(n_patches, dim)).astype(np.float32))
        coords = torch.zeros(n_patches, 2, dtype=torch.int64)
        out.append(
            Bag(
                f"c{i}",
                feats,
                coords,
                time=float(rng.exponential(20)),
                event=int(rng.random() < 0.7),
            )
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patches", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--cases", type=int, default=32)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    rows: list[tuple[str, str, str]] = []

    for n in (16, 1024, 100_000):
        r = torch.randn(n, requires_grad=True)
        t, e = torch.rand(n) * 100, (torch.rand(n) < 0.7).long()

        def step(r=r, t=t, e=e):
            cox_nll(r, t, e).backward()

        rows.append(("cox_nll fwd+bwd", f"n={n}", f"{timeit(step) * 1e3:.2f} ms"))

    from lifelines.utils import concordance_index

    for n in (500, 5000):
        rng = np.random.default_rng(0)
        t, risk, e = rng.integers(1, 100, n), rng.normal(size=n), rng.integers(0, 2, n)
        ours = timeit(lambda t=t, risk=risk, e=e: c_index(t, risk, e))
        theirs = timeit(lambda t=t, risk=risk, e=e: concordance_index(t, -risk, e))
        rows.append(("c_index (ours)", f"n={n}", f"{ours * 1e3:.1f} ms"))
        rows.append(("c_index (lifelines)", f"n={n}", f"{theirs * 1e3:.1f} ms"))

    info = DataInfo(task="survival", feat_dim=args.dim)
    train = bags(args.cases, args.patches, args.dim)
    model = abmil.build(info)
    cfg = TrainConfig(epochs=2, batch_size=16, device=args.device)
    t0 = time.perf_counter()
    Trainer().fit(model, train, [], cfg)
    dt = time.perf_counter() - t0
    dev = next(model.parameters()).device
    rows.append(
        (
            "ABMIL train",
            f"{args.cases} bags x {args.patches} x {args.dim}, {dev}",
            f"{2 * args.cases / dt:.1f} bags/s",
        )
    )

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "abmil.safetensors"
        meta = {
            "kind": "model",
            "method": "baselines",
            "method_config": {"models": ["abmil"]},
            "stage": "abmil",
            "data_info": info,
        }
        rows.append(
            (
                "checkpoint write",
                f"{sum(p.numel() for p in model.parameters())} params",
                f"{timeit(lambda: save_checkpoint(path, model_state(model), meta)) * 1e3:.1f} ms",
            )
        )
        rows.append(
            ("checkpoint read+verify", "", f"{timeit(lambda: read_checkpoint(path)) * 1e3:.1f} ms")
        )
        rows.append(("load_model", "", f"{timeit(lambda: load_model(path)) * 1e3:.1f} ms"))

    widths = [max(len(r[i]) for r in rows + [("what", "size", "time")]) for i in range(3)]
    for r in [("what", "size", "time")] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


if __name__ == "__main__":
    main()
