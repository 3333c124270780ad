"""``histokd predict --checkpoint CKPT --features SLIDE_FEATS --out FILE``: one slide's prediction
and its patch-level maps (attention and every map the model explains) as CSV (``--qupath``: also
one QuPath detection per patch); with ``--all-slides``, every slide of a feature store into the
folder ``--out``; with ``--run RUN --cohort C --maps OUT``, every slide of a cohort predicted and
drawn (zarr, PNG on a cohort-wide scale, QuPath GeoJSON) as one dask task per slide."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from histokd_core.errors import ConfigError


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "predict",
        help="predict a slide (or every slide) with a trained slide-only model; patch-level maps",
        description=(
            "Print the predicted risk (survival) or class probability (classification) and write a "
            "CSV with one row per patch: level-0 x, y, patch size, attention and any other per-patch "
            "map of the model (a linear student's per-patch contribution: its share of the risk, "
            "log-hazard, or of the log-odds; the JSON names the unit; "
            "pathway maps, memory activations, cluster ids). A JSON summary with the prediction, "
            "pathway ranking, top patches and the score columns' units is written beside it. "
            "With --run, "
            "--cohort and --maps: every slide of the cohort, one dask task per slide, resumable, "
            "with a summary CSV (exit code 1 when any slide failed)."
        ),
    )
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="<stage>.safetensors of a trained run (one slide or --all-slides)")
    p.add_argument(
        "--features",
        type=Path,
        required=True,
        help="a slide's .h5/.pt feature file, or a feature store / folder with --slide-id",
    )
    p.add_argument("--slide-id", default=None, help="slide to read from a store or folder")
    p.add_argument(
        "--all-slides",
        action="store_true",
        help="predict every slide of the store or folder; --out is then a folder",
    )
    p.add_argument("--out", type=Path, default=None,
                   help="per-patch CSV to write (a folder with --all-slides)")
    p.add_argument(
        "--qupath",
        type=Path,
        default=None,
        help="also write a QuPath GeoJSON with one detection per patch (level-0 square, every map "
        "in its measurements, cluster classes with colours); one slide only",
    )
    cohort = p.add_argument_group("cohort maps (--run, --cohort, --maps)")
    cohort.add_argument("--run", type=Path, default=None,
                        help="run directory of histokd train: each slide is predicted by the fold "
                        "model that held its case out")
    cohort.add_argument("--cohort", type=Path, default=None, help="cohort table of the slides")
    cohort.add_argument("--maps", type=Path, default=None,
                        help="output folder: <slide>/maps.{csv,json,zarr,geojson}, PNGs, summary.csv")
    cohort.add_argument("--stage", default=None, help="model of the run (default student)")
    cohort.add_argument("--png-maps", default="attention,contribution",
                        help="comma-separated maps drawn as PNG on a cohort-wide scale (default "
                        "attention,contribution: the patches' share of the model's output in "
                        "its unit (risk: log-hazard, two classes: log-odds), "
                        "for models that have it; e.g. attention,pathway:HYPOXIA)")
    cohort.add_argument("--label-column", default=None, help="label column (classification runs)")
    cohort.add_argument("--scheduler", default=None,
                        help="address of a dask scheduler (default: a LocalCluster on this machine)")
    cohort.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return p


def run(args: argparse.Namespace) -> int:
    # from the module: the package attribute predict_cohort is the submodule once it is imported
    from histokd_core.workflows.predict import predict_cohort, predict_slide

    if args.run is not None or args.maps is not None or args.cohort is not None:
        return _cohort_maps(args)
    if args.checkpoint is None or args.out is None:
        raise ConfigError("predict: give --checkpoint and --out (one slide or --all-slides), or "
                          "--run, --cohort and --maps (a cohort's maps)")
    if args.all_slides:
        if args.slide_id is not None:
            raise ConfigError("--all-slides and --slide-id exclude each other")
        if args.qupath is not None:
            raise ConfigError("--qupath writes one slide's detections; use --run/--maps for a cohort")
        predictions = predict_cohort(args.checkpoint, args.features, args.out, device=args.device,
                                     overwrite=args.overwrite)
    else:
        predictions = [predict_slide(args.checkpoint, args.features, args.out,
                                     slide_id=args.slide_id, device=args.device,
                                     overwrite=args.overwrite, qupath=args.qupath)]
    for prediction in predictions:
        print(prediction.line(), file=sys.stdout)
    return 0


def _cohort_maps(args: argparse.Namespace) -> int:
    from histokd_core.workflows.predict_cohort import predict_cohort_maps

    missing = [f"--{n}" for n in ("run", "cohort", "maps") if getattr(args, n) is None]
    if missing:
        raise ConfigError(f"cohort maps need --run, --cohort and --maps (missing {', '.join(missing)})")
    clash = [f for f, v in (("--checkpoint", args.checkpoint), ("--out", args.out),
                            ("--slide-id", args.slide_id), ("--qupath", args.qupath),
                            ("--all-slides", args.all_slides)) if v]
    if clash:
        raise ConfigError(f"{', '.join(clash)}: not used with --run/--maps (a cohort's maps)")
    result = predict_cohort_maps(
        args.run, args.cohort, args.features, args.maps, stage=args.stage,
        png_maps=[m.strip() for m in args.png_maps.split(",") if m.strip()],
        label_column=args.label_column, scheduler=args.scheduler, n_workers=args.workers,
        device=args.device,
    )
    print(result.summary(), file=sys.stdout)
    return 0 if result.ok else 1
