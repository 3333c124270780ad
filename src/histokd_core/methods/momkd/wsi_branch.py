"""MoMKD's WSI branch: graph encoder, projections, memory-guided attention pooling, classifier.

This is the whole inference path (slide features only). The memory is passed in, so the branch
itself holds no omics and no memory state.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from histokd_core.bag import Bag
from histokd_core.methods.momkd.losses import memory_attention
from histokd_core.nn.graph import GATv2Encoder, bag_graph


class WsiBranch(nn.Module):
    """GATv2 patch encoder + memory-guided attention + classifier.

    Parameters
    ----------
    feat_dim : patch feature dimension ``d``.
    dim : encoder dimension ``D`` (256).
    shared_dim : ``D_N`` (128), projections compared with the memory.
    heads, dropout : GATv2 heads and dropout.
    cls_hidden : classifier hidden width (128); n_classes : 2.
    tau_init : initial attention temperature (0.2); learnable_tau : learn it (public code) or keep
        it fixed (paper); tau_range : clamp of the learnt temperature ``[0.01, 2]``.
    k_neighbors : kNN graph degree (8).
    """

    def __init__(
        self,
        feat_dim: int,
        dim: int = 256,
        shared_dim: int = 128,
        heads: int = 2,
        dropout: float = 0.5,
        cls_hidden: int = 128,
        n_classes: int = 2,
        tau_init: float = 0.2,
        learnable_tau: bool = True,
        tau_range: tuple[float, float] = (0.01, 2.0),
        k_neighbors: int = 8,
    ) -> None:
        super().__init__()
        self.encoder = GATv2Encoder(feat_dim, dim, heads=heads, dropout=dropout)
        self.patch_projector = nn.Linear(dim, shared_dim)
        self.pool_projector = nn.Linear(dim, shared_dim)
        self.classifier = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, cls_hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(cls_hidden, n_classes),
        )
        log_tau = torch.tensor(float(tau_init)).log()
        if learnable_tau:
            self.log_tau = nn.Parameter(log_tau)
        else:
            self.register_buffer("log_tau", log_tau)
        self.tau_range = tau_range
        self.k_neighbors = k_neighbors
        self._graphs: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    @property
    def tau(self) -> torch.Tensor:
        """Attention temperature ``clamp(exp(log_tau), 0.01, 2)`` (0-d)."""
        return self.log_tau.exp().clamp(*self.tau_range)

    def graph(self, bag: Bag) -> torch.Tensor:
        """The bag's kNN edge index ``(2, E)`` (cached per case, at most 256 bags)."""
        key = (bag.case_id, int(bag.coords.shape[0]), int(bag.coords.sum()))
        if key not in self._graphs:
            self._graphs[key] = bag_graph(bag.coords, bag.slide_index, self.k_neighbors)
            if len(self._graphs) > 256:
                self._graphs.popitem(last=False)
        return self._graphs[key]

    def encode(self, bag: Bag) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch embeddings ``H (n, D)`` and normalised patch projections ``z (n, D_N)``."""
        device = self.patch_projector.weight.device
        feats = bag.feats.to(device).float()
        h = self.encoder(feats, self.graph(bag).to(device))
        return h, F.normalize(self.patch_projector(h), dim=-1)

    def forward(
        self, bag: Bag, mem_pos: torch.Tensor, mem_neg: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """One bag through the WSI path.

        Returns
        -------
        dict: ``"logits" (C,)``, ``"attention" (n,)`` (memory-guided, sums to 1),
        ``"h" (n, D)``, ``"z" (n, D_N)`` patch projections, ``"z_wsi" (D_N,)`` pooled projection.
        """
        h, z = self.encode(bag)
        attention = memory_attention(z, mem_pos, mem_neg, self.tau)
        pooled = attention @ h
        return {
            "logits": self.classifier(pooled),
            "attention": attention,
            "h": h,
            "z": z,
            "z_wsi": F.normalize(self.pool_projector(pooled), dim=-1),
        }
