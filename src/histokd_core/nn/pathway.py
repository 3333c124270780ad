"""Sparse pathway MLP: one token per pathway, computed only from that pathway's member genes.

SurvPath/MCAT build one ``SNN_Block(|g_i| -> h) -> SNN_Block(h -> d)`` per pathway
(``SNN_Block = Linear -> ELU -> AlphaDropout``), i.e. 331 separate modules. Here the same function
is computed in two grouped operations:

- layer 1 holds one weight row per (pathway, member gene) pair, ``(M, h)`` with ``M = sum |g_i|``;
  the member genes are gathered, scaled by their rows and summed per pathway with ``index_add``,
  so a token never sees a non-member gene (exact sparsity, no dense ``(g, P h)`` weight);
- layer 2 is a per-pathway ``(h, d)`` weight applied as one batched ``einsum``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from histokd_core.errors import DataError


class PathwayEncoder(nn.Module):
    """Omics ``(g,)`` or ``(B, g)`` -> pathway tokens ``(P, dim)`` or ``(B, P, dim)``.

    Parameters
    ----------
    n_genes : ``g``, width of the omics vector.
    pathways : ``P`` lists of member-gene indices into the omics vector (each non-empty).
    dim : token width ``d``; hidden : width ``h`` of the first SNN block (SurvPath: 256, 256).
    dropout : alpha-dropout rate (0.25).

    Weights are initialised ``N(0, 1/fan_in)`` per pathway (SNN / MCAT ``init_max_weights``).
    """

    def __init__(
        self,
        n_genes: int,
        pathways: Sequence[Sequence[int]],
        dim: int = 256,
        hidden: int = 256,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        if n_genes <= 0 or not pathways:
            raise DataError(
                f"the pathway encoder needs omics and gene sets, got n_genes = {n_genes} and "
                f"{len(pathways)} pathways"
            )
        sizes = [len(p) for p in pathways]
        empty = [i for i, s in enumerate(sizes) if s == 0]
        if empty:
            raise DataError(f"pathways {empty[:5]} have no measured member genes")
        flat = [int(g) for p in pathways for g in p]
        bad = [g for g in flat if not 0 <= g < n_genes]
        if bad:
            raise DataError(f"pathway gene indices {bad[:5]} are outside 0..{n_genes - 1}")
        n_path = len(pathways)
        token = [i for i, s in enumerate(sizes) for _ in range(s)]
        self.n_genes, self.n_pathways, self.dim = n_genes, n_path, dim
        self.register_buffer("gene_index", torch.tensor(flat, dtype=torch.long), persistent=False)
        self.register_buffer("token_index", torch.tensor(token, dtype=torch.long), persistent=False)
        fan_in = torch.tensor([sizes[t] for t in token], dtype=torch.float32)
        self.w1 = nn.Parameter(torch.randn(len(flat), hidden) / fan_in.sqrt()[:, None])
        self.b1 = nn.Parameter(torch.zeros(n_path, hidden))
        self.w2 = nn.Parameter(torch.randn(n_path, hidden, dim) / math.sqrt(hidden))
        self.b2 = nn.Parameter(torch.zeros(n_path, dim))
        self.dropout = nn.AlphaDropout(dropout)

    def forward(self, omics: torch.Tensor) -> torch.Tensor:
        single = omics.dim() == 1
        x = omics[None] if single else omics
        if x.shape[-1] != self.n_genes:
            raise DataError(
                f"omics vector has {x.shape[-1]} genes, the model expects {self.n_genes}"
            )
        x = x.to(self.w1.dtype)
        contrib = x[:, self.gene_index, None] * self.w1  # (B, M, h)
        h = x.new_zeros(x.shape[0], self.n_pathways, self.w1.shape[1])
        h = h.index_add(1, self.token_index, contrib) + self.b1
        h = self.dropout(F.elu(h))
        out = torch.einsum("bph,phd->bpd", h, self.w2) + self.b2
        out = self.dropout(F.elu(out))
        return out[0] if single else out
