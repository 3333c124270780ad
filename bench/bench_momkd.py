"""MoMKD benchmark: kNN graph build time, forward/training-step time, and cross-validated AUC.

Run: ``.venv/bin/python bench/bench_momkd.py [--quick] [--threads N]``. Prints tables.

Part 3 runs the engine's 5-fold CV (``histokd_core.train.run_cv``, train/val/test 64/16/20, Adam
2e-4 / 1e-4 as the public MoMKD code, clip 16, early stopping on validation AUC) on the binary
label of ``synthetic.cohort.make_feature_cohort``: MoMKD student (EMA memory), fixed-memory and
gradient-memory ablations, and the baselines named by ``--models``. Timings are on a shared CPU
and noisy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.neighbors import kneighbors_graph

from histokd_core.bag import Bag, DataInfo
from histokd_core.methods.momkd import Config, MoMKDModel
from histokd_core.nn.graph import knn_graph


def lattice(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct level-0 patch positions (256 px) on a roughly square tissue lattice."""
    side = int(np.ceil(np.sqrt(n * 1.3)))
    cells = rng.choice(side * side, size=n, replace=False)
    return np.stack([cells % side, cells // side], 1).astype(np.int64) * 256


def timed(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_graph(sizes: list[int]) -> None:
    print("\n## kNN graph (k = 8), best of 3")
    print(f"| {'patches':>8} | {'knn_graph (cKDTree) s':>22} | "
          f"{'sklearn kneighbors_graph s':>27} |")
    print(f"|{'-' * 10}|{'-' * 24}|{'-' * 29}|")
    rng = np.random.default_rng(0)
    for n in sizes:
        coords = lattice(n, rng)
        ours = timed(lambda: knn_graph(coords, 8))
        ref = timed(lambda: kneighbors_graph(coords, 8, include_self=False), repeats=1)
        print(f"| {n:>8} | {ours:>22.3f} | {ref:>27.3f} |")


def bench_forward(sizes: list[int], feat_dim: int) -> None:
    print(f"\n## MoMKD forward (paper dims D=256, D_N=128, K=16, d={feat_dim}), best of 3")
    print(f"| {'patches':>8} | {'predict s (graph cached)':>25} | {'graph+predict s':>16} | "
          f"{'loss+backward s':>16} |")
    print(f"|{'-' * 10}|{'-' * 27}|{'-' * 18}|{'-' * 18}|")
    torch.manual_seed(0)
    info = DataInfo(task="classification", feat_dim=feat_dim, n_genes=768)
    model = MoMKDModel(info, Config())
    rng = np.random.default_rng(0)
    for n in sizes:
        bag = Bag(f"bench{n}", torch.randn(n, feat_dim), torch.from_numpy(lattice(n, rng)),
                  omics=torch.randn(768), label=1)
        model.eval()

        def cold():
            model.wsi._graphs.clear()
            with torch.no_grad():
                model.predict(bag)

        def warm():
            with torch.no_grad():
                model.predict(bag)

        t_warm = timed(warm)
        t_cold = timed(cold, 1)
        model.train()
        t_train = float("nan")
        if n <= 20_000:
            t_train = timed(lambda: model.loss([bag])["loss"].backward(), 1)
        print(f"| {n:>8} | {t_warm:>25.3f} | {t_cold:>16.3f} | {t_train:>16.3f} |")


def bench_cv(
    n_cases: int, epochs: int, models: tuple[str, ...], threads: int | None, **knobs
) -> None:
    """5-fold CV through the engine (``run_cv``) on the synthetic feature cohort's binary label;
    ``knobs`` go to ``make_feature_cohort`` (``n_patches``, ``histology_signal`` ...)."""
    from histokd_core.cohort import validate_cohort
    from histokd_core.dataset import CohortData
    from histokd_core.synthetic.cohort import make_feature_cohort
    from histokd_core.train import TrainConfig, run_cv

    fc = make_feature_cohort(None, n_cases=n_cases, seed=0, **knobs)
    cohort = validate_cohort(fc.cohort, "classification", "label", where="synthetic cohort")
    data = CohortData(cohort, fc.features, omics=fc.expression, gene_sets=fc.gene_sets,
                      task="classification", n_folds=5, seed=0)
    config = Config(baselines=tuple(m for m in models if m in ("abmil", "transmil", "omics_only")))
    train_config = TrainConfig(epochs=epochs, lr=2e-4, weight_decay=1e-4, grad_clip=16.0,
                               patience=10, num_threads=threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = run_cv("momkd", config, data, Path(tmp) / "run", train_config=train_config)
        history = json.loads((Path(tmp) / "run" / "history.json").read_text())
    elapsed = time.perf_counter() - start
    print(f"\n## 5-fold test AUC via run_cv, synthetic feature cohort ({n_cases} cases, {knobs}, "
          f"binary label, up to {epochs} epochs, best val AUC; {elapsed:.0f} s)")
    print(f"| {'model':<24} | {'AUC mean':>8} | {'AUC std':>7} | {'acc':>5} | {'F1':>5} | "
          f"{'active':>6} | {'perplexity':>10} | per fold")
    print(f"|{'-' * 26}|{'-' * 10}|{'-' * 9}|{'-' * 7}|{'-' * 7}|{'-' * 8}|{'-' * 12}|---------")
    for name, summary in result.metrics["summary"].items():
        per_fold = " ".join(f"{f['test'][name]['auc']:.2f}" for f in result.metrics["folds"])
        last = [h[name][-1] for h in history.values() if h.get(name)]
        active = [e["memory_active_ratio"] for e in last if "memory_active_ratio" in e]
        perp = [e["memory_perplexity"] for e in last if "memory_perplexity" in e]
        act = f"{statistics.mean(active):.2f}" if active else "-"
        ppl = f"{statistics.mean(perp):.1f}" if perp else "-"
        print(f"| {name:<24} | {summary['auc_mean']:>8.3f} | {summary['auc_std']:>7.3f} | "
              f"{summary['acc_mean']:>5.2f} | {summary['f1_mean']:>5.2f} | {act:>6} | {ppl:>10} | "
              f"{per_fold}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--skip-cv", action="store_true")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--cases", type=int, default=100, help="cases in the synthetic cohort")
    parser.add_argument("--epochs", type=int, default=20, help="maximum epochs per model")
    parser.add_argument("--patches", type=int, default=64, help="mean patches per slide")
    parser.add_argument("--histology-signal", type=float, default=1.5)
    parser.add_argument("--histology-noise", type=float, default=1.0)
    parser.add_argument("--models", default="abmil",
                        help="comma-separated baselines to add: abmil, transmil, omics_only")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if not args.skip_timing:
        bench_graph([1_000, 10_000] if args.quick else [10_000, 50_000, 200_000])
        bench_forward([500, 2_000] if args.quick else [1_000, 10_000, 50_000], feat_dim=1024)
    if not args.skip_cv:
        models = tuple(m for m in args.models.split(",") if m)
        threads = args.threads or None
        if args.quick:
            bench_cv(n_cases=30, epochs=2, models=models, threads=threads)
        else:
            bench_cv(n_cases=args.cases, epochs=args.epochs, models=models, threads=threads,
                     n_patches=args.patches, histology_signal=args.histology_signal,
                     histology_noise=args.histology_noise)


if __name__ == "__main__":
    main()
