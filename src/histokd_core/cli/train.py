"""``histokd train --method NAME --cohort CSV --features DIR --out RUN_DIR``: cross-validated training."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from histokd_core.errors import ConfigError
from histokd_core.methods.registry import available_methods

log = logging.getLogger(__name__)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="cross-validate a method (teacher, students, baselines) on a cohort",
        description=(
            "Train every stage of a method on every fold (train/val/test 64/16/20, early stopping on "
            "the validation C-index or AUC) and write RUN_DIR/config.yaml, fold_<i>/<stage>.safetensors, "
            "metrics.json, history.json and km.png. An interrupted run continues with --resume."
        ),
    )
    p.add_argument(
        "--method", required=True, choices=available_methods(), help="the method to train"
    )
    p.add_argument(
        "--cohort", type=Path, required=True, help="cohort table (case_id, slide_id, outcome)"
    )
    p.add_argument(
        "--features", type=Path, required=True, help="feature store or folder of .h5/.pt bags"
    )
    p.add_argument("--omics", type=Path, default=None, help="expression table (cases x genes)")
    p.add_argument(
        "--gene-sets", type=Path, default=None, help="gene sets: GMT or SurvPath-style CSV"
    )
    p.add_argument("--out", type=Path, required=True, help="run directory")
    p.add_argument(
        "--task",
        choices=("survival", "classification"),
        default=None,
        help="default: the method's first task",
    )
    p.add_argument(
        "--label-column", default=None, help="classification label column (default: label)"
    )
    p.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    p.add_argument("--folds-csv", type=Path, default=None, help="use the folds in this CSV instead")
    p.add_argument(
        "--only-folds", default=None, help="comma-separated fold indices to run (default all)"
    )
    p.add_argument("--epochs", type=int, default=100, help="maximum epochs per stage (default 100)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="cases per step (default 16 survival, 1 classification)",
    )
    p.add_argument(
        "--grad-accum", type=int, default=1, help="steps accumulated per update (default 1)"
    )
    p.add_argument("--lr", type=float, default=5e-5, help="Adam learning rate (default 5e-5)")
    p.add_argument(
        "--weight-decay", type=float, default=1e-5, help="Adam weight decay (default 1e-5)"
    )
    p.add_argument(
        "--patience", type=int, default=10, help="early-stopping patience in epochs (default 10)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (folds and training)")
    p.add_argument(
        "--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, mps"
    )
    p.add_argument("--threads", type=int, default=None, help="cap on torch CPU threads")
    p.add_argument("--method-config", type=Path, default=None, help="YAML of method Config fields")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    return p


def load_method_config(path: Path | None) -> dict:
    """Method config fields from a YAML mapping (empty when no file)."""
    import yaml

    if path is None:
        return {}
    try:
        values = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the method config ({exc})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of method Config fields")
    return values


def summary_table(metrics: dict) -> str:
    """The summary of metrics.json as an aligned text table."""
    rows = [("model", "metric", "mean", "std")]
    for model, values in metrics["summary"].items():
        for key, mean in values.items():
            if key.endswith("_mean"):
                name = key[: -len("_mean")]
                std = _fmt(values[f"{name}_std"]) if f"{name}_std" in values else ""
                rows.append((model, name, _fmt(mean), std))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _fmt(value) -> str:
    return "nan" if value is None else f"{value:.3f}"


def run(args: argparse.Namespace) -> int:
    from histokd_core.cohort import load_cohort
    from histokd_core.dataset import CohortData
    from histokd_core.methods.registry import check_task
    from histokd_core.train import LoggingCallback, TrainConfig, run_cv

    task = check_task(args.method, args.task)
    cohort = load_cohort(args.cohort, task=task, label_column=args.label_column)
    data = CohortData(
        cohort,
        args.features,
        omics=args.omics,
        gene_sets=args.gene_sets,
        folds=args.folds_csv,
        n_folds=args.folds,
        seed=args.seed,
    )
    log.info("%r", data)
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        lr=args.lr,
        weight_decay=args.weight_decay,
        patience=args.patience,
        seed=args.seed,
        device=args.device,
        num_threads=args.threads,
    )
    folds = (
        None
        if args.only_folds is None
        else [int(f) for f in args.only_folds.split(",") if f.strip()]
    )
    result = run_cv(
        args.method,
        load_method_config(args.method_config),
        data,
        args.out,
        config,
        folds=folds,
        callbacks=[LoggingCallback()],
        resume=args.resume,
    )
    print(summary_table(result.metrics), file=sys.stdout)
    log.info("run written to %s", result.run_dir)
    return 0
