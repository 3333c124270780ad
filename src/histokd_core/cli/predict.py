"""``histokd predict --checkpoint CKPT --features SLIDE_FEATS --out FILE``: one slide's prediction
and its patch-level maps (attention and every map the model explains) as CSV."""

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


def explanation_table(expl) -> tuple[list[str], np.ndarray]:
    """Columns and ``(n, c)`` values of every per-patch map of an Explanation."""
    n = expl.coords.shape[0]
    cols = ["x", "y", "patch_size"]
    values = [expl.coords[:, 0], expl.coords[:, 1], np.full(n, expl.patch_size)]
    if expl.attention is not None:
        cols.append("attention")
        values.append(expl.attention)
    for name, arr in expl.pathway_maps.items():
        cols.append(f"pathway:{name}")
        values.append(arr)
    if expl.memory is not None:
        names = expl.memory_names or [f"component{i}" for i in range(expl.memory.shape[0])]
        for name, row in zip(names, expl.memory):
            cols.append(f"memory:{name}")
            values.append(row)
    for name, arr in expl.clusters.items():
        cols.append(f"cluster:{name}")
        values.append(arr)
    return cols, np.stack([np.asarray(v, dtype=np.float64) for v in values], 1)


def run(args: argparse.Namespace) -> int:
    import pandas as pd
    import torch

    from histokd_core.dataset import slide_bag
    from histokd_core.devices import resolve_device
    from histokd_core.io import atomic_path, atomic_write_text, check_writable
    from histokd_core.train import load_model

    check_writable(args.out, overwrite=args.overwrite)
    check_writable(args.out.with_suffix(".json"), overwrite=args.overwrite)
    device = resolve_device(args.device)
    model, meta = load_model(args.checkpoint, device)
    if model.needs_omics:
        raise DataError(
            f"{args.checkpoint}: stage {meta['stage']!r} needs omics at inference; predict slides "
            "with a student or a slide-only baseline"
        )
    bag, sf = slide_bag(args.features, args.slide_id, bool(meta["data_info"].get("has_10x")))
    expected = int(meta["data_info"]["feat_dim"])
    if bag.feats.shape[1] != expected:
        raise DataError(
            f"{args.features}: features have d = {bag.feats.shape[1]}, the model was trained on "
            f"d = {expected} ({meta.get('encoder_id') or 'unknown encoder'})"
        )
    enc = str(sf.attrs.get("encoder_id", ""))
    if enc and meta.get("encoder_id") and enc != meta["encoder_id"]:
        log.warning(
            "features come from encoder %s, the model was trained on %s", enc, meta["encoder_id"]
        )
    with torch.no_grad():
        expl = model.explain(bag.to(device))
        pred = model.predict(bag.to(device))
    summary = {
        "slide_id": bag.case_id,
        "checkpoint": str(args.checkpoint),
        "stage": meta["stage"],
        "method": meta["method"],
        "n_patches": int(bag.feats.shape[0]),
    }
    if model.task == "classification":
        probs = torch.softmax(pred.logits.float(), -1).cpu().numpy()
        summary["probabilities"] = probs.tolist()
        line = f"{bag.case_id}\tprobability={probs[-1]:.4f}"
    else:
        from histokd_core.survival.losses import discrete_risk

        risk = (
            float(pred.risk) if pred.risk is not None else float(discrete_risk(pred.logits.float()))
        )
        summary["risk"] = risk
        line = f"{bag.case_id}\trisk={risk:.4f}"
    summary["pathway_scores"] = {k: float(v) for k, v in expl.pathway_scores.items()}
    summary["top_patches"] = {k: np.asarray(v).tolist() for k, v in expl.top_patches.items()}
    cols, values = explanation_table(expl)
    with atomic_path(args.out, overwrite=args.overwrite) as tmp:
        pd.DataFrame(values, columns=cols).astype({"x": int, "y": int, "patch_size": int}).to_csv(
            tmp, index=False
        )
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(summary, indent=1) + "\n")
    print(line, file=sys.stdout)
    log.info("patch maps written to %s", args.out)
    return 0
