"""``histokd evaluate --run RUN_DIR --cohort external.csv --features DIR``: score an external cohort
with a run's trained slide-only models (no omics, no fine-tuning)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from histokd_core.errors import DataError

log = logging.getLogger(__name__)


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


def _ranks(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return (rankdata(x) - 0.5) / len(x)


def run(args: argparse.Namespace) -> int:
    import yaml

    from histokd_core.cohort import load_cohort
    from histokd_core.dataset import CohortData
    from histokd_core.devices import resolve_device
    from histokd_core.io import atomic_write_text, check_writable, to_jsonable
    from histokd_core.survival.km import km_logrank, plot_km
    from histokd_core.train import load_model, predict_bags, score
    from histokd_core.train.cv import summarize
    from histokd_core.train.evaluation import Outputs

    cfg_path = args.run / "config.yaml"
    if not cfg_path.is_file():
        raise DataError(f"{args.run}: not a run directory (no config.yaml)")
    run_cfg = yaml.safe_load(cfg_path.read_text())
    task = run_cfg["task"]
    out_dir = args.out or args.run / f"external_{args.cohort.stem}"
    check_writable(out_dir / "metrics.json", overwrite=args.overwrite)
    cohort = load_cohort(args.cohort, task=task, label_column=args.label_column)
    data = CohortData(cohort, args.features, n_folds=2, seed=0)
    fold0 = data.fold(0)
    bags = fold0.train + fold0.val + fold0.test
    device = resolve_device(args.device)
    wanted = None if args.models is None else {m.strip() for m in args.models.split(",")}

    folds: list[dict] = []
    per_model: dict[str, list[Outputs]] = {}
    for fold in run_cfg["folds"]:
        fold_dir = args.run / f"fold_{fold}"
        test: dict[str, dict[str, float]] = {}
        for ckpt in sorted(fold_dir.glob("*.safetensors")):
            if ckpt.name.endswith(".state.safetensors"):
                continue
            stage = ckpt.name[: -len(".safetensors")]
            if wanted is not None and stage not in wanted:
                continue
            model, meta = load_model(ckpt, device)
            if model.needs_omics:
                continue
            if int(meta["data_info"]["feat_dim"]) != data.feat_dim:
                raise DataError(
                    f"{args.features}: features have d = {data.feat_dim}, {ckpt} expects "
                    f"d = {meta['data_info']['feat_dim']} (encoder {meta.get('encoder_id')})"
                )
            outputs = predict_bags(model, bags, device)
            test[stage] = score(outputs, task)
            per_model.setdefault(stage, []).append(outputs)
        if test:
            folds.append({"fold": fold, "test": test})
    if not per_model:
        raise DataError(f"{args.run}: no trained slide-only model checkpoints found")

    ensemble: dict[str, dict[str, float]] = {}
    lines = ["model,case_id,time,event,label,score"]
    km_name = "student" if "student" in per_model else next(iter(per_model))
    km_score = None
    for stage, outs in per_model.items():
        first = outs[0]
        if task == "survival":
            value = np.mean([_ranks(o.risk) for o in outs], axis=0)
            ens = Outputs(first.case_ids, first.time, first.event, first.label, risk=value)
        else:
            probs = np.mean([o.probs for o in outs], axis=0)
            ens = Outputs(first.case_ids, first.time, first.event, first.label, probs=probs)
            value = probs[:, -1]
        ensemble[stage] = score(ens, task)
        lines += [
            f"{stage},{c},{t},{e},{lab},{v:.6g}"
            for c, t, e, lab, v in zip(first.case_ids, first.time, first.event, first.label, value)
        ]
        if stage == km_name:
            km_score = value
    metrics = {
        "method": run_cfg["method"],
        "task": task,
        "cohort": str(args.cohort),
        "folds": folds,
        "summary": summarize(task, folds),
        "ensemble": ensemble,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "metrics.json", json.dumps(to_jsonable(metrics), indent=2) + "\n")
    atomic_write_text(out_dir / "predictions.csv", "\n".join(lines) + "\n")
    if task == "survival":
        first = per_model[km_name][0]
        km = km_logrank(first.time, first.event, km_score)
        plot_km(km, out_dir / "km.png", title=f"{args.cohort.stem}: {km_name} (fold ensemble)")
    from histokd_core.cli.train import summary_table

    print(summary_table(metrics), file=sys.stdout)
    log.info("external evaluation written to %s", out_dir)
    return 0
