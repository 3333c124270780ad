"""``histokd predict --checkpoint CKPT --features SLIDE_FEATS --out FILE``: one slide's prediction
and its patch-level maps (attention and every map the model explains) as CSV."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "predict",
        help="predict one slide with a trained (slide-only) model and write patch-level maps",
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
    p.add_argument("--out", type=Path, required=True, help="per-patch CSV to write")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return p


def run(args: argparse.Namespace) -> int:
    from histokd_core.workflows import predict_slide

    prediction = predict_slide(args.checkpoint, args.features, args.out, slide_id=args.slide_id,
                               device=args.device, overwrite=args.overwrite)
    print(prediction.line(), file=sys.stdout)
    return 0
