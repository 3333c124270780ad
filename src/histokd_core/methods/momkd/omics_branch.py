"""MoMKD's omics branch ("teacher"): used in training only, never at inference.

MoMKD trains one model whose omics branch teaches the WSI branch through the shared memory (the
two branches share no parameters). The omics-only reference classifier is the ``omics_only``
baseline (:mod:`histokd_core.methods.baselines.snn`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from histokd_core.bag import Bag
from histokd_core.errors import DataError


def _mlp(in_dim: int, hidden: int, out_dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, hidden),
        nn.LayerNorm(hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, out_dim),
    )


class OmicsBranch(nn.Module):
    """Omics encoder, decoder (reconstruction) and projector into the shared space.

    Parameters
    ----------
    n_genes : ``g``, omics vector length.
    dim : encoder width (the public code uses 512).
    shared_dim : ``D_N``, projection dimension shared with the WSI branch and the memory.
    dropout : dropout inside encoder and decoder (0.25).
    """

    def __init__(
        self, n_genes: int, dim: int = 256, shared_dim: int = 128, dropout: float = 0.25
    ) -> None:
        super().__init__()
        self.encoder = _mlp(n_genes, dim, dim, dropout)
        self.decoder = _mlp(dim, dim, n_genes, dropout)
        self.projector = nn.Linear(dim, shared_dim)

    def forward(self, omics: torch.Tensor) -> dict[str, torch.Tensor]:
        """``omics (B, g)`` -> ``{"z": (B, D_N) normalised, "recon": (B, g), "h": (B, dim)}``."""
        h = self.encoder(omics)
        return {"h": h, "z": F.normalize(self.projector(h), dim=-1), "recon": self.decoder(h)}


def stack_omics(bags: Sequence[Bag], n_genes: int) -> torch.Tensor:
    """``(B, g)`` omics of the bags; a clear error when a bag has none or the wrong length."""
    rows = []
    for bag in bags:
        if bag.omics is None:
            raise DataError(
                f"case {bag.case_id!r} has no omics; this model needs an omics table in training"
            )
        if bag.omics.numel() != n_genes:
            raise DataError(
                f"case {bag.case_id!r}: omics has {bag.omics.numel()} values, expected {n_genes}"
            )
        rows.append(bag.omics.reshape(-1).float())
    return torch.stack(rows)


def bag_labels(bags: Sequence[Bag], n_classes: int = 2) -> torch.Tensor:
    """``(B,)`` int64 class labels; a clear error for unknown (-1) or out-of-range labels."""
    labels = []
    for bag in bags:
        if not 0 <= int(bag.label) < n_classes:
            raise DataError(
                f"case {bag.case_id!r}: label {bag.label} is not a class index in "
                f"[0, {n_classes}); "
                "classification needs a binary label column (0/1)"
            )
        labels.append(int(bag.label))
    return torch.tensor(labels, dtype=torch.long)
