"""Cross-validated quality of a method on the synthetic feature cohort (fixed seeds).

Prints one row per model (teacher, students, ablations, baselines) with the test metric's
mean and standard deviation over folds, and writes the run (metrics.json, km.png) to --out.

    python bench/bench_methods.py --method amkd
    python bench/bench_methods.py --method momkd --task classification
    python bench/bench_methods.py --method subspace --task classification --knob histology_signal=2
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import yaml

from histokd_core.cohort import validate_cohort
from histokd_core.dataset import CohortData
from histokd_core.synthetic import make_feature_cohort
from histokd_core.train import LoggingCallback, TrainConfig, run_cv


def _knob(text: str) -> tuple[str, int | float]:
    name, value = text.split("=", 1)
    number = float(value)
    return name, int(number) if number.is_integer() and "." not in value else number


def _setting(text: str) -> tuple[str, object]:
    """``NAME=VALUE`` with a YAML value: ``margin=0.4``, ``ema_sources=[wsi]``."""
    name, value = text.split("=", 1)
    return name, yaml.safe_load(value)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="amkd")
    p.add_argument("--task", default="survival", choices=("survival", "classification"))
    p.add_argument("--cases", type=int, default=150)
    p.add_argument("--patches", type=int, default=96)
    p.add_argument("--feat-dim", type=int, default=64)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--knob", type=_knob, action="append", default=[],
                   help="SignalKnobs override NAME=VALUE (repeatable)")
    p.add_argument("--config", type=_setting, action="append", default=[],
                   help="method Config override NAME=VALUE, VALUE in YAML (repeatable)")
    p.add_argument("--out", default=None, help="run directory (default: a temporary one)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(message)s")

    knobs = dict(args.knob)
    cohort = make_feature_cohort(None, n_cases=args.cases, n_patches=args.patches,
                                 feat_dim=args.feat_dim, seed=args.seed, **knobs)
    table = validate_cohort(cohort.cohort, args.task,
                            "label" if args.task == "classification" else None,
                            where="synthetic cohort")
    data = CohortData(table, cohort.features, omics=cohort.expression,
                      gene_sets=cohort.gene_sets, task=args.task, n_folds=args.folds,
                      seed=args.seed)
    config = TrainConfig(epochs=args.epochs, lr=args.lr, seed=args.seed, device="cpu",
                         num_threads=args.threads)
    method_config = {k: v for k, v in args.config} or None
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_methods_")) / "run"
    t0 = time.perf_counter()
    result = run_cv(args.method, method_config, data, out, config,
                    callbacks=[LoggingCallback()] if args.verbose else ())
    elapsed = time.perf_counter() - t0

    metric = "c_index" if args.task == "survival" else "auc"
    print(f"\n{args.method} on the synthetic cohort: {args.cases} cases, ~{args.patches} "
          f"patches/slide, d={args.feat_dim}, {args.folds} folds, <= {args.epochs} epochs, "
          f"knobs {knobs or 'default'}; {elapsed:.0f} s; run in {out}")
    print(f"| model | {metric} mean | {metric} std | per fold |")
    print("|---|---|---|---|")
    for name, summary in result.metrics["summary"].items():
        per_fold = ", ".join(f"{f['test'][name][metric]:.3f}" for f in result.metrics["folds"])
        print(f"| {name} | {summary[f'{metric}_mean']:.3f} | {summary[f'{metric}_std']:.3f} "
              f"| {per_fold} |")
    _print_reference_rows(data, cohort)


def _print_reference_rows(data: CohortData, cohort) -> None:
    """Reference rows on the same folds (``methods.baselines.pooled``): oracle, mean-pool models."""
    import numpy as np

    from histokd_core.methods.baselines.pooled import reference_rows

    for name, values in reference_rows(data, cohort).items():
        print(f"| {name} (reference) | {np.mean(values):.3f} | {np.std(values):.3f} "
              f"| {', '.join(f'{v:.3f}' for v in values)} |")


if __name__ == "__main__":
    main()
