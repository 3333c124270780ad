"""Subspace (DML) benchmark: forward / training-step time and memory on a large bag, and 5-fold CV.

Run: ``.venv/bin/python bench/bench_subspace.py [--quick] [--threads N] [--skip-cv]``.
Prints tables.

Part 1 times the teacher and student (default Config: dim 128, 8 heads, 12 x 12 sampled points,
K = 2 prototypes per subspace, d = 1024) on one bag with 20x and 10x features. Each measurement runs
in a fresh subprocess so its peak resident memory (CPU) or peak allocated CUDA memory is its own.
Part 2 runs the engine's 5-fold CV (``histokd_core.train.run_cv``) on the binary label of
``synthetic.cohort.make_feature_cohort`` (with 10x): teacher, student (SKD) and student without
SKD. Timings are on a shared CPU and noisy.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from histokd_core.bag import Bag, DataInfo
from histokd_core.methods.subspace import Config, SubspaceStudent, SubspaceTeacher


def lattice(n: int, rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """``n`` distinct level-0 patch positions on a roughly square tissue lattice."""
    side = int(np.ceil(np.sqrt(n * 1.3)))
    cells = rng.choice(side * side, size=n, replace=False)
    return np.stack([cells % side, cells // side], 1).astype(np.int64) * size


def make_bag(n: int, feat_dim: int, n_genes: int) -> Bag:
    rng = np.random.default_rng(0)
    coords = lattice(n, rng)
    c10 = np.unique(coords // 512, axis=0) * 512
    return Bag("bench", torch.randn(n, feat_dim), torch.from_numpy(coords),
               feats_10x=torch.randn(len(c10), feat_dim), coords_10x=torch.from_numpy(c10),
               omics=torch.randn(n_genes), label=1, bin=1, event=1)


def measure_one(what: str, n: int, feat_dim: int) -> dict:
    """Time (best of 3, or 1 for training) and peak memory of one operation, in this process."""
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    g = 400
    info = DataInfo(task="classification", feat_dim=feat_dim, n_genes=g,
                    tumor_genes=list(range(60)), tme_genes=list(range(60, g)), n_classes=2,
                    has_10x=True)
    teacher = SubspaceTeacher(info, Config()).to(device).eval()
    model = teacher
    if what.startswith("student"):
        model = SubspaceStudent(info, Config(), teacher).to(device)
    model.set_epoch(99)
    bag = make_bag(n, feat_dim, g).to(device)
    bags = [bag, make_bag(n, feat_dim, g).to(device)]
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if what.endswith("predict"):
        model.eval()

        def op():
            with torch.no_grad():
                model.predict(bag)
        repeats = 3
    else:
        model.train()

        def op():
            model.loss(bags)["loss"].backward()
        repeats = 1
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        op()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    return {"seconds": best, "peak_mib": peak, "device": device.type}


def bench_forward(sizes: list[int], feat_dim: int, threads: int) -> None:
    print(f"\n## forward / training step (d={feat_dim}, default Config, 20x + 10x)")
    print("peak memory: CUDA max allocated, or growth of the process's max RSS on the CPU")
    print(f"| {'patches':>8} | {'operation':<38} | {'seconds':>8} | {'peak MiB':>9} | device |")
    print(f"|{'-' * 10}|{'-' * 40}|{'-' * 10}|{'-' * 11}|--------|")
    ops = {
        "teacher_predict": "teacher predict (best of 3)",
        "student_predict": "student predict, no omics (best of 3)",
        "teacher_train": "teacher loss+backward, 2 bags",
        "student_train": "student SKD loss+backward, 2 bags",
    }
    for n in sizes:
        for key, label in ops.items():
            cmd = [sys.executable, __file__, "--one", key, str(n), str(feat_dim), str(threads)]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            r = json.loads(res.stdout.strip().splitlines()[-1])
            print(f"| {n:>8} | {label:<38} | {r['seconds']:>8.3f} | {r['peak_mib']:>9.0f} | "
                  f"{r['device']:>6} |")


def bench_cv(n_cases: int, epochs: int, threads: int | None, n_patches: int) -> None:
    """5-fold CV through the engine on the synthetic feature cohort's binary label."""
    from histokd_core.cohort import validate_cohort
    from histokd_core.dataset import CohortData
    from histokd_core.synthetic.cohort import make_feature_cohort
    from histokd_core.train import TrainConfig, run_cv

    fc = make_feature_cohort(None, n_cases=n_cases, n_patches=n_patches, seed=0, with_10x=True)
    cohort = validate_cohort(fc.cohort, "classification", "label", where="synthetic cohort")
    data = CohortData(cohort, fc.features, omics=fc.expression, gene_sets=fc.gene_sets,
                      task="classification", n_folds=5, seed=0)
    # the public code starts distillation from a trained student; here the first fifth of the
    # epochs is the task-only warm-up (the engine calls set_epoch)
    config = Config(dim=64, heads=4, dim_head=16, n_points=6, warmup_epochs=epochs // 5,
                    baselines=("abmil",))
    train_config = TrainConfig(epochs=epochs, batch_size=8, lr=5e-4, weight_decay=1e-4,
                               patience=epochs, num_threads=threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = run_cv("subspace", config, data, Path(tmp) / "run", train_config=train_config)
    elapsed = time.perf_counter() - start
    print(f"\n## 5-fold test AUC via run_cv, synthetic feature cohort ({n_cases} cases, "
          f"~{n_patches} patches, 10x + 20x, binary label, {epochs} epochs; {elapsed:.0f} s)")
    print(f"| {'model':<16} | {'AUC mean':>8} | {'AUC std':>7} | {'acc':>5} | {'F1':>5} | per fold")
    print(f"|{'-' * 18}|{'-' * 10}|{'-' * 9}|{'-' * 7}|{'-' * 7}|---------")
    for name, s in result.metrics["summary"].items():
        per_fold = " ".join(f"{f['test'][name]['auc']:.2f}" for f in result.metrics["folds"])
        print(f"| {name:<16} | {s['auc_mean']:>8.3f} | {s['auc_std']:>7.3f} | "
              f"{s['acc_mean']:>5.2f} | "
              f"{s['f1_mean']:>5.2f} | {per_fold}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        what, n, d, threads = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
        if threads:
            torch.set_num_threads(threads)
        print(json.dumps(measure_one(what, n, d)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--skip-cv", action="store_true")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--cases", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--patches", type=int, default=64)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if not args.skip_timing:
        bench_forward([1_000] if args.quick else [2_500, 10_000], 1024, args.threads)
    if not args.skip_cv:
        if args.quick:
            bench_cv(n_cases=20, epochs=2, threads=args.threads or None, n_patches=32)
        else:
            bench_cv(args.cases, args.epochs, args.threads or None, args.patches)


if __name__ == "__main__":
    main()
