"""One trained slide-only model applied to one slide's features: the steps analyse and predict share."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from histokd_core.bag import Bag
from histokd_core.errors import DataError
from histokd_core.features.slide_features import SlideFeatures
from histokd_core.methods.base import BagModel, Explanation

log = logging.getLogger(__name__)


def load_slide_model(checkpoint: str | os.PathLike, device: torch.device) -> tuple[BagModel, dict]:
    """The checkpoint's model and metadata; DataError for a model that needs omics at inference."""
    from histokd_core.train import load_model

    model, meta = load_model(checkpoint, device)
    if model.needs_omics:
        raise DataError(
            f"{checkpoint}: stage {meta.get('stage')!r} needs omics at inference; choose a student "
            "or a slide-only baseline"
        )
    return model, meta


def read_slide_bag(features: str | os.PathLike, slide_id: str | None, meta: dict) -> tuple[Bag, SlideFeatures]:
    """The slide's :class:`Bag` (10x too when the model was trained with it), checked against the
    feature dimension and encoder the checkpoint's ``meta`` records."""
    from histokd_core.dataset import slide_bag

    info = meta.get("data_info", {})
    bag, sf = slide_bag(features, slide_id, bool(info.get("has_10x")))
    expected = int(info["feat_dim"])
    if bag.feats.shape[1] != expected:
        raise DataError(
            f"{features}: features have d = {bag.feats.shape[1]}, the model was trained on "
            f"d = {expected} ({meta.get('encoder_id') or 'unknown encoder'})"
        )
    enc = str(sf.attrs.get("encoder_id") or "")
    if enc and meta.get("encoder_id") and enc != meta["encoder_id"]:
        log.warning("features come from encoder %s, the model was trained on %s", enc, meta["encoder_id"])
    return bag, sf


@torch.no_grad()
def explain_bag(model: BagModel, bag: Bag, device: torch.device) -> Explanation:
    """``model.explain(bag)`` with the prediction filled in: ``risk`` for survival (the model's risk,
    or the discrete-time risk of its hazard logits), ``probability`` for classification."""
    bag = bag.to(device)
    expl = model.explain(bag)
    if model.task == "survival" and expl.risk is None:
        expl.risk = model.predict(bag).survival_risk()
    return expl


def risk_group_from_run(checkpoint: str | os.PathLike, stage: str, risk: float) -> str | None:
    """"high"/"low" against the median risk of the fold's test cases (``predictions.csv`` beside
    the checkpoint, the split of the run's KM plot); None when the run left no predictions."""
    import numpy as np
    import pandas as pd

    path = Path(checkpoint).parent / "predictions.csv"
    if not path.is_file():
        return None
    table = pd.read_csv(path)
    if "risk" not in table.columns:
        return None
    risks = table.loc[table["model"] == stage, "risk"].to_numpy(dtype=float)
    if risks.size == 0:
        return None
    return "high" if risk > float(np.median(risks)) else "low"
