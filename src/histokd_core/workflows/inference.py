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


def check_provenance(
    stain: str, preprocessing: int, meta: dict, features: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
) -> None:
    """Features made with the stain normalisation and preprocessing the model was trained on.

    ``stain`` / ``preprocessing`` are the features' (:func:`histokd_core.features.store.
    store_identity`), ``meta`` the checkpoint's metadata. Another stain normalisation is a
    :class:`DataError` naming both and how to extract the slides the model's way; another
    preprocessing version (inputs moved by at most 0.5/255 per pixel) is a warning.
    """
    info = meta.get("data_info", {})
    model = f"{checkpoint}" if checkpoint is not None else f"the model ({meta.get('stage', 'checkpoint')})"
    want = str(info.get("stain", "none"))
    if str(stain) != want:
        method = want.split(":")[0]
        how = (f"--stain {method} --stain-reference {checkpoint if checkpoint is not None else '<checkpoint>'}"
               if want != "none" else "--stain none")
        raise DataError(
            f"{features}: features were made with stain normalisation {stain}, but {model} was "
            f"trained on features with stain normalisation {want}; extract the slides again with "
            f"`histokd extract {how}` into another folder"
        )
    trained = int(info.get("preprocessing", 1))
    if int(preprocessing) != trained:
        log.warning(
            "%s: features were made with preprocessing version %s, %s was trained on version %s "
            "(encoder inputs differ by up to 0.5/255 per pixel); extract again for identical inputs",
            features, preprocessing, model, trained,
        )


def read_slide_bag(
    features: str | os.PathLike, slide_id: str | None, meta: dict,
    checkpoint: str | os.PathLike | None = None,
) -> tuple[Bag, SlideFeatures]:
    """The slide's :class:`Bag` (10x too when the model was trained with it), checked against the
    feature dimension, encoder, stain normalisation and preprocessing (:func:`check_provenance`)
    the checkpoint's ``meta`` records."""
    from histokd_core.features.store import store_identity

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
    have = store_identity(sf.attrs)
    check_provenance(have["stain"], have["preprocessing"], meta, sf.source, checkpoint)
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
