"""``histokd evaluate --run RUN_DIR --cohort external.csv --features DIR``: score an external cohort
with a run's trained slide-only models (no omics, no fine-tuning)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate",
        help="score an external cohort with a run's trained slide-only models",
        description=(
            "Every fold's checkpoint of every slide-only reported stage (students, WSI baselines) "
            "predicts every case of the external cohort. Writes OUT/metrics.json (per fold, summary, "
            "and the fold ensemble: mean of per-fold rank-normalised risks / probabilities), "
            "OUT/predictions.csv and, for survival, OUT/km.png of the ensemble's median split."
        ),
    )
    p.add_argument("--run", type=Path, required=True, help="run directory written by histokd train")
    p.add_argument("--cohort", type=Path, required=True, help="external cohort table")
    p.add_argument(
        "--features", type=Path, required=True, help="feature store or folder of .h5/.pt bags"
    )
    p.add_argument(
        "--label-column", default=None, help="classification label column (default: label)"
    )
    p.add_argument(
        "--models", default=None, help="comma-separated stages (default: every slide-only one)"
    )
    p.add_argument(
        "--out", type=Path, default=None, help="output folder (default RUN_DIR/external_<cohort>)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an earlier evaluation in --out"
    )
    return p


def run(args: argparse.Namespace) -> int:
    from histokd_core.train.results import summary_table
    from histokd_core.workflows import evaluate_run

    models = None if args.models is None else [m.strip() for m in args.models.split(",")]
    metrics = evaluate_run(args.run, args.cohort, args.features, args.out,
                           label_column=args.label_column, models=models, device=args.device,
                           overwrite=args.overwrite)
    print(summary_table(metrics), file=sys.stdout)
    return 0
