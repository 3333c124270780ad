"""Run a trained model over bags and score its predictions (C-index, AUC / accuracy / F1)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from histokd_core.bag import Bag
from histokd_core.methods.base import BagModel
from histokd_core.survival.metrics import c_index
from histokd_core.train.metrics import classification_metrics


@dataclass
class Outputs:
    """Per-case predictions of one model, aligned with the bags they came from.

    ``risk (n,)`` for survival (higher = worse), ``probs (n, C)`` for classification; ``time``,
    ``event``, ``label`` copied from the bags.
    """

    case_ids: list[str]
    time: np.ndarray
    event: np.ndarray
    label: np.ndarray
    risk: np.ndarray | None = None
    probs: np.ndarray | None = None
    extra: dict = field(default_factory=dict)


@torch.no_grad()
def predict_bags(
    model: BagModel, bags: Sequence[Bag], device: torch.device | str = "cpu"
) -> Outputs:
    """Predict every bag with ``model`` (eval mode is set and restored)."""
    was_training = model.training
    model.eval()
    risks, probs = [], []
    try:
        for bag in bags:
            pred = model.predict(bag.to(device))
            if model.task == "classification":
                probs.append(pred.class_probabilities())
            else:
                risks.append(pred.survival_risk())
    finally:
        model.train(was_training)
    return Outputs(
        case_ids=[b.case_id for b in bags],
        time=np.array([b.time for b in bags], dtype=np.float64),
        event=np.array([b.event for b in bags], dtype=np.int64),
        label=np.array([b.label for b in bags], dtype=np.int64),
        risk=np.array(risks) if model.task != "classification" else None,
        probs=np.stack(probs) if probs else None,
    )


def score(outputs: Outputs, task: str) -> dict[str, float]:
    """``{"c_index"}`` (survival) or ``{"auc", "acc", "f1"}`` (classification)."""
    if task == "classification":
        return classification_metrics(outputs.label, outputs.probs)
    return {"c_index": c_index(outputs.time, outputs.risk, outputs.event)}
