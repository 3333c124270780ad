"""Task heads shared by the baselines: turn per-case outputs into a loss and a Prediction.

Outputs are ``(n_cases, k)``: ``k = 1`` risk (survival, Cox), ``k = n_bins`` hazard logits
(survival, discrete-time NLL) or ``k = n_classes`` class logits (classification).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from histokd_core.bag import Bag, DataInfo
from histokd_core.errors import DataError
from histokd_core.methods.base import Prediction
from histokd_core.survival.losses import cox_nll, discrete_nll, discrete_risk


def output_size(info: DataInfo, survival_loss: str) -> int:
    """Width of the output layer for ``info.task`` and the survival loss ("cox" or "nll")."""
    if info.task == "classification" or survival_loss == "nll":
        if info.n_classes < 2:
            raise DataError(f"need at least 2 classes / bins, got n_classes = {info.n_classes}")
        return info.n_classes
    if survival_loss != "cox":
        raise DataError(f"survival_loss must be 'cox' or 'nll', got {survival_loss!r}")
    return 1


def outcome_loss(
    out: torch.Tensor, bags: Sequence[Bag], task: str, survival_loss: str = "cox"
) -> dict[str, torch.Tensor]:
    """Loss of outputs ``(n, k)`` for the bags' outcomes: Cox NLL over the batch, discrete NLL
    (needs ``bag.bin``) or cross-entropy (needs ``bag.label``)."""
    device = out.device
    if task == "classification":
        labels = torch.tensor([int(b.label) for b in bags], device=device)
        bad = [b.case_id for b in bags if not 0 <= int(b.label) < out.shape[1]]
        if bad:
            raise DataError(f"cases {bad[:5]}: label is not a class index 0..{out.shape[1] - 1}")
        ce = F.cross_entropy(out, labels)
        return {"loss": ce, "ce": ce.detach()}
    event = torch.tensor([int(b.event) for b in bags], device=device)
    if survival_loss == "nll":
        bins = torch.tensor([int(b.bin) for b in bags], device=device)
        if bool((bins < 0).any()):
            raise DataError("discrete-time survival needs bag.bin for every case (bins not set)")
        nll = discrete_nll(out, bins, event)
        return {"loss": nll, "nll": nll.detach()}
    time = torch.tensor([float(b.time) for b in bags], dtype=torch.float64, device=device)
    cox = cox_nll(out[:, 0], time, event)
    return {"loss": cox, "cox": cox.detach()}


def outcome_prediction(
    out: torch.Tensor, task: str, survival_loss: str = "cox", attention: torch.Tensor | None = None
) -> Prediction:
    """Prediction of one case's output ``(k,)``."""
    if task == "classification":
        return Prediction(logits=out, attention=attention)
    if survival_loss == "nll":
        return Prediction(risk=discrete_risk(out), logits=out, attention=attention)
    return Prediction(risk=out[0], attention=attention)
