"""Cross-validated quality of a method on the synthetic feature cohort (fixed seeds).

Prints one row per model (teacher, students, ablations, baselines) with the test metric's
mean and standard deviation over all folds of all seeds, a paired-difference table (mean +- SE
over seed x fold, folds better), the L_ARR weight's range (AMKD) and, with --swap-diagnostic,
the teachers' expression shares; each seed's run (metrics.json, history.json, km.png) goes to
--out/seed_<s> (an existing finished run is read back, an unfinished one resumed). Seeds vary
the synthetic cohort, the folds and the training together. Model selection follows the
validation task loss unless --monitor metric.

    python bench/bench_methods.py --method amkd --seeds 0,1,2,3,4 --jobs 2 --out /tmp/amkd
    python bench/bench_methods.py --method momkd --task classification
    python bench/bench_methods.py --method subspace --task classification --knob histology_signal=2
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import yaml

from histokd_core.cohort import validate_cohort
from histokd_core.dataset import CohortData
from histokd_core.io import atomic_write_text, to_jsonable
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


#: (model, reference) pairs of the paired-difference table, when both are in the run
PAIRS = (
    ("student", "student_no_kd"),
    ("student", "abmil"),
    ("student_no_kd", "abmil"),
    ("student", "teacher"),
    ("teacher", "omics_only"),
    ("student", "ridge_cox (reference)"),
    ("student", "ridge_kd (reference)"),
    ("ridge_kd (reference)", "ridge_cox (reference)"),
    ("student", "oracle (reference)"),
    ("linear_student", "linear_student_no_kd"),
    ("linear_student", "abmil"),
    ("linear_student", "student"),
    ("linear_student", "ridge_kd (reference)"),
    ("linear_student_no_kd", "ridge_cox (reference)"),
    ("logistic_kd (reference)", "logistic (reference)"),
    ("linear_student", "logistic_kd (reference)"),
    ("linear_student_no_kd", "logistic (reference)"),
)


def run_seed(args: argparse.Namespace, seed: int, out: Path) -> dict:
    """One seed: cohort, folds and training from ``seed``; returns metrics.json's content."""
    import torch

    torch.set_num_threads(args.threads or 1)
    cohort, data = seed_cohort(args, seed)
    if (out / "metrics.json").is_file() and not any(out.glob("fold_*/*.state.safetensors")):
        done = json.loads((out / "metrics.json").read_text())
        if len(done["folds"]) == args.folds:
            # the reference rows are recomputed (seconds), so a finished run gains new ones
            add_reference_rows(done, data, cohort)
            atomic_write_text(out / "metrics.json", json.dumps(to_jsonable(done), indent=2))
            return done
    config = TrainConfig(epochs=args.epochs, lr=args.lr, seed=seed, device="cpu",
                         num_threads=args.threads or 1, patience=args.patience,
                         monitor=args.monitor)
    method_config = {k: v for k, v in args.config} or None
    result = run_cv(args.method, method_config, data, out, config,
                    callbacks=[LoggingCallback()] if args.verbose else (),
                    resume=out.exists(), swap_diagnostic=args.swap_diagnostic)
    add_reference_rows(result.metrics, data, cohort)
    atomic_write_text(out / "metrics.json", json.dumps(to_jsonable(result.metrics), indent=2))
    return result.metrics


def seed_cohort(args: argparse.Namespace, seed: int):
    """``(FeatureCohort, CohortData)`` of one seed: the synthetic cohort and its folds."""
    cohort = make_feature_cohort(None, n_cases=args.cases, n_patches=args.patches,
                                 feat_dim=args.feat_dim, seed=seed, **dict(args.knob))
    table = validate_cohort(cohort.cohort, args.task,
                            "label" if args.task == "classification" else None,
                            where="synthetic cohort")
    data = CohortData(table, cohort.features, omics=cohort.expression,
                      gene_sets=cohort.gene_sets, task=args.task, n_folds=args.folds, seed=seed)
    return cohort, data


def add_reference_rows(metrics: dict, data: CohortData, cohort) -> None:
    """Reference rows on the same folds (``methods.baselines.pooled.reference_rows``: the planted
    slide oracle and mean-pool models) as ``<name> (reference)`` entries of each fold's test."""
    from histokd_core.methods.baselines.pooled import reference_rows

    metric = "c_index" if data.task == "survival" else "auc"
    rows = reference_rows(data, cohort)
    for name, values in rows.items():
        for entry, value in zip(metrics["folds"], values):
            entry["test"][f"{name} (reference)"] = {metric: float(value)}
        metrics["summary"][f"{name} (reference)"] = {}


def fold_values(runs: dict[int, dict], model: str, metric: str) -> dict[tuple[int, int], float]:
    """``(seed, fold) -> test metric`` of ``model`` over every run."""
    return {
        (seed, f["fold"]): f["test"][model][metric]
        for seed, m in runs.items()
        for f in m["folds"]
        if model in f["test"] and math.isfinite(f["test"][model][metric])
    }


def paired_rows(runs: dict[int, dict], metric: str) -> list[str]:
    """Markdown rows: model - reference, mean +- SE over shared (seed, fold), folds better."""
    rows = []
    for a, b in PAIRS:
        va, vb = fold_values(runs, a, metric), fold_values(runs, b, metric)
        keys = sorted(set(va) & set(vb))
        if len(keys) < 2:
            continue
        d = np.array([va[k] - vb[k] for k in keys])
        se = d.std(ddof=1) / math.sqrt(len(d))
        rows.append(f"| {a} - {b} | {d.mean():+.3f} +- {se:.3f} | {int((d > 0).sum())}/{len(d)} |")
    return rows


def arr_weight_range(out_dirs: dict[int, Path]) -> tuple[float, float, float] | None:
    """(min, median, max) of the student's per-epoch mean L_ARR weight over every run."""
    values = []
    for out in out_dirs.values():
        path = out / "history.json"
        if not path.is_file():
            continue
        for stages in json.loads(path.read_text()).values():
            values += [h["train_arr_weight"] for h in stages.get("student", [])
                       if "train_arr_weight" in h]
    if not values:
        return None
    return float(np.min(values)), float(np.median(values)), float(np.max(values))


def swap_rows(runs: dict[int, dict]) -> list[str]:
    """Markdown rows: stage / target, expression share and each swap's share of the
    between-case variance, mean +- SD over seed x fold."""
    cells: dict[tuple[str, str], list[dict]] = {}
    for m in runs.values():
        for f in m["folds"]:
            for stage, targets in f.get("swap", {}).items():
                for target, share in targets.items():
                    cells.setdefault((stage, target), []).append(share)
    rows = []
    for (stage, target), shares in sorted(cells.items()):
        def ms(key: str) -> str:
            v = np.array([s[key] for s in shares], dtype=np.float64)
            return f"{np.nanmean(v):.2f} +- {np.nanstd(v):.2f}"
        rows.append(f"| {stage} | {target} | {ms('expression')} | {ms('expression_vs_total')} "
                    f"| {ms('slide_vs_total')} |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="amkd")
    p.add_argument("--task", default="survival", choices=("survival", "classification"))
    p.add_argument("--cases", type=int, default=150)
    p.add_argument("--patches", type=int, default=96)
    p.add_argument("--feat-dim", type=int, default=64)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0, help="one seed (see --seeds)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds, e.g. 0,1,2,3,4")
    p.add_argument("--jobs", type=int, default=1, help="seeds run at once (processes)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (default 1)")
    p.add_argument("--monitor", choices=("loss", "metric"), default="loss",
                   help="model selection on the validation task loss (default) or metric")
    p.add_argument("--swap-diagnostic", action="store_true",
                   help="teachers' swap diagnostic into each metrics.json and the report")
    p.add_argument("--knob", type=_knob, action="append", default=[],
                   help="SignalKnobs override NAME=VALUE (repeatable)")
    p.add_argument("--config", type=_setting, action="append", default=[],
                   help="method Config override NAME=VALUE, VALUE in YAML (repeatable)")
    p.add_argument("--out", default=None, help="run directory (default: a temporary one)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(message)s")

    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [args.seed]
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_methods_")) / "run"
    out_dirs = {seed: root / f"seed_{seed}" for seed in seeds}
    t0 = time.perf_counter()
    if args.jobs > 1 and len(seeds) > 1:
        with ProcessPoolExecutor(min(args.jobs, len(seeds))) as pool:
            futures = {s: pool.submit(run_seed, args, s, out_dirs[s]) for s in seeds}
            runs = {s: f.result() for s, f in futures.items()}
    else:
        runs = {s: run_seed(args, s, out_dirs[s]) for s in seeds}
    elapsed = time.perf_counter() - t0

    metric = "c_index" if args.task == "survival" else "auc"
    knobs = dict(args.knob)
    n = sum(len(m["folds"]) for m in runs.values())
    print(f"\n{args.method} on the synthetic cohort: {args.cases} cases, ~{args.patches} "
          f"patches/slide, d={args.feat_dim}, seeds {seeds} x {args.folds} folds ({n}), "
          f"<= {args.epochs} epochs, monitor {args.monitor}, knobs {knobs or 'default'}, config "
          f"{dict(args.config) or 'default'}; {elapsed:.0f} s; runs in {root}")
    print(f"| model | {metric} mean | {metric} SD | SE |")
    print("|---|---|---|---|")
    models = list(next(iter(runs.values()))["summary"])
    for name in models:
        v = np.array(list(fold_values(runs, name, metric).values()))
        se = v.std(ddof=1) / math.sqrt(len(v))
        print(f"| {name} | {v.mean():.3f} | {v.std():.3f} | {se:.3f} |")
    rows = paired_rows(runs, metric)
    if rows:
        print(f"\n| paired difference ({metric}) | mean +- SE | folds better |")
        print("|---|---|---|")
        print("\n".join(rows))
    arr = arr_weight_range(out_dirs)
    if arr is not None:
        print(f"\nL_ARR teacher weight per epoch (student): min {arr[0]:.3f}, median {arr[1]:.3f}, "
              f"max {arr[2]:.3f}")
    rows = swap_rows(runs)
    if rows:
        print("\n| teacher | target | expression share | expression swap / between-case | "
              "slide swap / between-case |")
        print("|---|---|---|---|---|")
        print("\n".join(rows))


if __name__ == "__main__":
    main()
