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
            "Train every stage of a method on every fold (train/val/test 64/16/20, early stopping "
            "and model selection on the validation task loss, or --monitor metric) and write "
            "RUN_DIR/config.yaml, fold_<i>/<stage>.safetensors, "
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
    p.add_argument(
        "--tumor-genes", default=None, metavar="SETS|FILE",
        help="subspace method: tumour genes, as comma-separated names of sets in --gene-sets or "
             "a text file of gene symbols (default: the MSigDB Hallmark tumour sets)",
    )
    p.add_argument(
        "--tme-genes", default=None, metavar="SETS|FILE",
        help="subspace method: tumour-microenvironment genes, like --tumor-genes (default: the "
             "Hallmark immune/stroma sets)",
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
    p.add_argument(
        "--min-test-events", type=int, default=None,
        help="survival: fewest events (deaths) each fold's test split must hold (default 3)",
    )
    p.add_argument(
        "--monitor",
        choices=("loss", "metric"),
        default="loss",
        help="model selection: validation task loss (Cox NLL / discrete NLL / cross-entropy; "
        "default) or validation C-index / AUC",
    )
    p.add_argument(
        "--swap-diagnostic",
        action="store_true",
        help="write each teacher's swap diagnostic (share of each distillation target's "
        "between-case variance that follows the expression vs the slide) into metrics.json",
    )
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


def run(args: argparse.Namespace) -> int:
    from histokd_core.train import LoggingCallback
    from histokd_core.train.results import summary_table
    from histokd_core.workflows import train_cohort

    folds = (
        None
        if args.only_folds is None
        else [int(f) for f in args.only_folds.split(",") if f.strip()]
    )
    result = train_cohort(
        args.method,
        args.cohort,
        args.features,
        args.out,
        omics=args.omics,
        gene_sets=args.gene_sets,
        tumor_genes=args.tumor_genes,
        tme_genes=args.tme_genes,
        task=args.task,
        label_column=args.label_column,
        n_folds=args.folds,
        folds_csv=args.folds_csv,
        only_folds=folds,
        epochs=args.epochs,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        lr=args.lr,
        weight_decay=args.weight_decay,
        patience=args.patience,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        method_config=load_method_config(args.method_config),
        resume=args.resume,
        min_test_events=args.min_test_events,
        monitor=args.monitor,
        swap_diagnostic=args.swap_diagnostic,
        callbacks=[LoggingCallback()],
    )
    print(summary_table(result.metrics), file=sys.stdout)
    log.info("run written to %s", result.run_dir)
    return 0
