"""ABMIL: gated-attention multiple-instance learning over patch features (Ilse et al., ICML 2018).

Slides only. ``h = ReLU(W x)``, attention ``a = softmax_n(w^T (tanh(V h) * sigmoid(U h)))``, bag
embedding ``sum_n a_n h_n``, then a linear head (risk, hazard logits or class logits). This is the
CLAM/SurvPath ``AMIL`` configuration (512 hidden, 256 attention, dropout 0.25).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from histokd_core.bag import Bag, DataInfo
from histokd_core.methods.base import BagModel, Prediction
from histokd_core.methods.baselines.outcome import outcome_loss, outcome_prediction, output_size


class GatedAttention(nn.Module):
    """Gated attention pooling ``(n, dim) -> ((dim,), attention (n,))``."""

    def __init__(self, dim: int, hidden: int = 256, dropout: float = 0.25) -> None:
        super().__init__()
        self.v = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Dropout(dropout))
        self.u = nn.Sequential(nn.Linear(dim, hidden), nn.Sigmoid(), nn.Dropout(dropout))
        self.w = nn.Linear(hidden, 1)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.w(self.v(h) * self.u(h))[:, 0]
        attention = torch.softmax(scores, dim=0)
        return attention @ h, attention


class ABMIL(BagModel):
    """Gated-attention MIL (WSI only) for survival or classification.

    Parameters
    ----------
    feat_dim : patch feature dimension ``d``.
    out_dim : 1 (Cox risk), number of bins (discrete-time) or number of classes.
    task : "survival" or "classification"; survival_loss : "cox" or "nll".
    hidden, attn_hidden : widths (512, 256); dropout : 0.25.
    """

    needs_omics = False

    def __init__(
        self,
        feat_dim: int,
        out_dim: int = 1,
        task: str = "survival",
        survival_loss: str = "cox",
        hidden: int = 512,
        attn_hidden: int = 256,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        self.task = task
        self.survival_loss = survival_loss
        self.fc = nn.Sequential(nn.Linear(feat_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.attention = GatedAttention(hidden, attn_hidden, dropout)
        self.head = nn.Linear(hidden, out_dim)

    def forward_bag(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``feats (n, d)`` -> output ``(k,)`` and attention ``(n,)``."""
        h = self.fc(feats.to(self.head.weight.device, torch.float32))
        pooled, attention = self.attention(h)
        return self.head(pooled), attention

    def loss(self, bags: Sequence[Bag]) -> dict[str, torch.Tensor]:
        out = torch.stack([self.forward_bag(b.feats)[0] for b in bags])
        return outcome_loss(out, bags, self.task, self.survival_loss)

    def predict(self, bag: Bag) -> Prediction:
        out, attention = self.forward_bag(bag.feats)
        return outcome_prediction(out, self.task, self.survival_loss, attention)


def build(info: DataInfo, survival_loss: str = "cox", dropout: float = 0.25) -> ABMIL:
    """ABMIL for the cohort described by ``info``."""
    return ABMIL(
        info.feat_dim,
        output_size(info, survival_loss),
        task=info.task,
        survival_loss=survival_loss,
        dropout=dropout,
    )
