"""``histokd predict --checkpoint CKPT --features SLIDE_FEATS --out FILE``: one slide's prediction
and its patch-level maps (attention and every map the model explains) as CSV; with
``--all-slides``, every slide of a feature store into the folder ``--out``."""

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
            "map of the model (pathway maps, memory activations, cluster ids). A JSON summary with "
            "the prediction, pathway ranking and top patches is written beside it."
        ),
    )
    p.add_argument(
        "--checkpoint", type=Path, required=True, help="<stage>.safetensors of a trained run"
    )
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
    p.add_argument("--out", type=Path, required=True, help="per-patch CSV to write (a folder with --all-slides)")
    p.add_argument(
        "--qupath",
        type=Path,
        default=None,
        help="also write a QuPath GeoJSON with one detection per patch (level-0 square, every map "
        "in its measurements, cluster classes with colours); one slide only",
    )
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return p


def run(args: argparse.Namespace) -> int:
    from histokd_core.workflows import predict_cohort, predict_slide

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
