"""Run a trained model over bags and score its predictions (C-index, AUC / accuracy / F1)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from histokd_core.bag import Bag
from histokd_core.methods.base import BagModel
from histokd_core.survival.losses import cox_nll, discrete_nll
from histokd_core.survival.metrics import c_index
from histokd_core.train.metrics import classification_metrics


@dataclass
class Outputs:
    """Per-case predictions of one model, aligned with the bags they came from.

    ``risk (n,)`` for survival (higher = worse), ``probs (n, C)`` for classification; ``time``,
    ``event``, ``label`` copied from the bags; ``extra["logits"]`` ``(n, K)``: the hazard logits
    of discrete-time survival models, ``extra["bin"]`` ``(n,)`` their time bins.
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
    risks, probs, logits = [], [], []
    try:
        for bag in bags:
            pred = model.predict(bag.to(device))
            if model.task == "classification":
                probs.append(pred.class_probabilities())
            else:
                risks.append(pred.survival_risk())
                if pred.risk is None and pred.logits is not None:
                    logits.append(pred.logits.detach().float().cpu().numpy())
    finally:
        model.train(was_training)
    extra = {}
    if logits and len(logits) == len(bags):
        extra = {"logits": np.stack(logits), "bin": np.array([b.bin for b in bags], np.int64)}
    return Outputs(
        case_ids=[b.case_id for b in bags],
        time=np.array([b.time for b in bags], dtype=np.float64),
        event=np.array([b.event for b in bags], dtype=np.int64),
        label=np.array([b.label for b in bags], dtype=np.int64),
        risk=np.array(risks) if model.task != "classification" else None,
        probs=np.stack(probs) if probs else None,
        extra=extra,
    )


def score(outputs: Outputs, task: str) -> dict[str, float]:
    """``{"c_index"}`` (survival) or ``{"auc", "acc", "f1"}`` (classification)."""
    if task == "classification":
        return classification_metrics(outputs.label, outputs.probs)
    return {"c_index": c_index(outputs.time, outputs.risk, outputs.event)}


def task_loss(outputs: Outputs, task: str) -> float:
    """The task's loss of a model's predictions over all ``outputs`` cases at once (validation).

    Classification: mean cross-entropy ``-log p(label)`` (probabilities clipped at 1e-12).
    Survival with hazard logits (``extra["logits"]``, every bin set): discrete-time NLL
    (:func:`~histokd_core.survival.losses.discrete_nll`); otherwise the Cox partial-likelihood NLL
    of the risks (mean over events; nan when no event). Distillation terms are never included.
    """
    if task == "classification":
        known = outputs.label >= 0
        if not known.any():
            return float("nan")
        p = outputs.probs[known][np.arange(int(known.sum())), outputs.label[known]]
        return float(-np.log(np.clip(p, 1e-12, None)).mean())
    event = torch.as_tensor(outputs.event)
    if "logits" in outputs.extra and bool((outputs.extra["bin"] >= 0).all()):
        return float(discrete_nll(
            torch.as_tensor(outputs.extra["logits"]), torch.as_tensor(outputs.extra["bin"]), event
        ))
    if int(event.sum()) == 0:
        return float("nan")
    return float(cox_nll(torch.as_tensor(outputs.risk), torch.as_tensor(outputs.time), event))
