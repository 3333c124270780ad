"""Omics-only self-normalising network (Klambauer et al. 2017; MCAT/SurvPath's ``SNN`` baseline).

Two blocks ``Linear -> ELU -> AlphaDropout`` (256 wide) then a linear head; weights initialised
``N(0, 1/fan_in)`` as in MCAT's ``init_max_weights``. Needs ``bag.omics`` at inference: it is a
reference for what the expression data alone predicts, not a slide model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from histokd_core.bag import Bag, DataInfo
from histokd_core.errors import DataError
from histokd_core.methods.base import BagModel, Prediction
from histokd_core.methods.baselines.outcome import outcome_loss, outcome_prediction, output_size


class SNN(BagModel):
    """Self-normalising MLP on the omics vector ``(g,)``.

    Parameters
    ----------
    n_genes : ``g``; out_dim : head width (1 Cox risk, bins, or classes); task, survival_loss as
    :class:`~histokd_core.methods.baselines.abmil.ABMIL`; hidden : 256; dropout : alpha-dropout 0.25.
    """

    needs_omics = True

    def __init__(
        self,
        n_genes: int,
        out_dim: int = 1,
        task: str = "survival",
        survival_loss: str = "cox",
        hidden: int = 256,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        if n_genes <= 0:
            raise DataError("the omics-only baseline needs an omics table (n_genes = 0)")
        self.task = task
        self.survival_loss = survival_loss
        self.n_genes = n_genes
        self.encoder = nn.Sequential(
            nn.Linear(n_genes, hidden),
            nn.ELU(),
            nn.AlphaDropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ELU(),
            nn.AlphaDropout(dropout),
        )
        self.head = nn.Linear(hidden, out_dim)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 1.0 / math.sqrt(module.in_features))
                nn.init.zeros_(module.bias)

    def _omics(self, bags: Sequence[Bag]) -> torch.Tensor:
        missing = [b.case_id for b in bags if b.omics is None]
        if missing:
            raise DataError(
                f"cases {missing[:5]} have no omics; the omics-only baseline needs them"
            )
        x = torch.stack([b.omics.reshape(-1) for b in bags]).to(
            self.head.weight.device, torch.float32
        )
        if x.shape[1] != self.n_genes:
            raise DataError(
                f"omics vectors have {x.shape[1]} genes, the model expects {self.n_genes}"
            )
        return x

    def loss(self, bags: Sequence[Bag]) -> dict[str, torch.Tensor]:
        return outcome_loss(
            self.head(self.encoder(self._omics(bags))), bags, self.task, self.survival_loss
        )

    def predict(self, bag: Bag) -> Prediction:
        out = self.head(self.encoder(self._omics([bag])))[0]
        return outcome_prediction(out, self.task, self.survival_loss)


def build(info: DataInfo, survival_loss: str = "cox", dropout: float = 0.25) -> SNN:
    """Omics-only SNN for the cohort described by ``info``."""
    return SNN(
        info.n_genes,
        output_size(info, survival_loss),
        task=info.task,
        survival_loss=survival_loss,
        dropout=dropout,
    )
