"""Patch graphs and the graph WSI encoder (MoMKD).

``knn_graph`` builds the directed k-nearest-neighbour graph over patch centroids exactly as
``sklearn.neighbors.kneighbors_graph(coords, k, include_self=False)`` does (edge ``i -> j`` for
every ``j`` among the ``k`` nearest neighbours of ``i``; not symmetrised), but with a KD-tree so a
50 000-patch slide never needs a dense ``n x n`` distance matrix. ``GATv2Encoder`` is the public
MoMKD code's 2-layer GATv2 with residuals and an elementwise-max jumping-knowledge readout.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import nn
from torch_geometric.nn import GATv2Conv

from histokd_core.errors import DataError


def knn_graph(coords: np.ndarray | torch.Tensor, k: int = 8) -> torch.Tensor:
    """Directed kNN graph over points.

    Parameters
    ----------
    coords : ``(n, 2)`` (or ``(n, d)``) point coordinates, e.g. level-0 patch positions in pixels.
        Top-left corners and centroids give the same graph (a constant shift).
    k : neighbours per node (fewer when ``n <= k``: every other node).

    Returns
    -------
    Tensor ``(2, n * min(k, n - 1))`` int64 ``edge_index``; row 0 = source ``i``, row 1 = its
    neighbour ``j``, sorted by ``i`` then by distance. Self-loops are excluded
    (GATv2 adds its own).
    """
    pts = np.asarray(coords.detach().cpu().numpy() if isinstance(coords, torch.Tensor) else coords,
                     dtype=np.float64)
    if pts.ndim != 2 or not np.isfinite(pts).all():
        raise DataError(f"coords must be a finite (n, 2) array, got shape {pts.shape}")
    if k < 1:
        raise DataError(f"k must be >= 1, got {k}")
    n = pts.shape[0]
    kk = min(k, n - 1)
    if kk <= 0:
        return torch.empty((2, 0), dtype=torch.long)
    # Query one extra neighbour, then drop the node itself. With duplicate points the node may not
    # come first, so remove it by index (as sklearn does) and keep the first k others.
    _, idx = cKDTree(pts).query(pts, k=kk + 1)
    idx = np.asarray(idx).reshape(n, kk + 1)
    rows = np.arange(n)[:, None]
    not_self = idx != rows
    # Rows where self was not found among kk + 1 (more than kk exact duplicates): drop the last.
    missing = not_self.all(axis=1)
    not_self[missing, -1] = False
    nbrs = idx[not_self].reshape(n, kk)
    src = np.repeat(np.arange(n), kk)
    return torch.from_numpy(np.stack([src, nbrs.reshape(-1)])).long()


def bag_graph(
    coords: torch.Tensor, slide_index: torch.Tensor | None = None, k: int = 8
) -> torch.Tensor:
    """kNN graph of a bag whose patches may come from several slides (no edges across slides).

    Parameters
    ----------
    coords : ``(n, 2)`` level-0 patch coordinates.
    slide_index : ``(n,)`` slide of each patch, or None for one slide.

    Returns
    -------
    ``(2, E)`` int64 edge index into the bag's patches.
    """
    if slide_index is None or slide_index.numel() == 0:
        return knn_graph(coords, k)
    if bool((slide_index == slide_index[0]).all()):
        return knn_graph(coords, k)
    parts = []
    for s in torch.unique(slide_index):
        members = torch.nonzero(slide_index == s, as_tuple=False).squeeze(1)
        local = knn_graph(coords[members], k)
        parts.append(members[local])
    return torch.cat(parts, dim=1)


class GATv2Encoder(nn.Module):
    """Two GATv2 layers with residuals and max jumping knowledge (MoMKD's ``WsiEncoder``).

    ``h1 = dropout(elu(LN(GAT1(x)))) + W x``; ``h2 = dropout(elu(LN(GAT2(h1)))) + h1``;
    output ``max(h1, h2)`` elementwise. Each GATv2 layer has ``heads`` heads of ``dim // heads``
    channels, concatenated, with attention dropout and self-loops.

    Parameters
    ----------
    in_dim : patch feature dimension ``d``.
    dim : output dimension ``D`` (256 in the paper; the public code uses 512).
    heads : attention heads per layer (2).
    dropout : feature and attention dropout (0.5 in the public code).
    """

    def __init__(self, in_dim: int, dim: int = 256, heads: int = 2, dropout: float = 0.5) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.gat1 = GATv2Conv(in_dim, dim // heads, heads=heads, concat=True, dropout=dropout,
                              add_self_loops=True)
        self.gat2 = GATv2Conv(dim, dim // heads, heads=heads, concat=True, dropout=dropout,
                              add_self_loops=True)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.residual = nn.Linear(in_dim, dim)
        self.drop = nn.Dropout(dropout)
        self.act = nn.ELU()

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """``x (n, in_dim)``, ``edge_index (2, E)`` -> node embeddings ``(n, dim)``."""
        h1 = self.drop(self.act(self.norm1(self.gat1(x, edge_index)))) + self.residual(x)
        h2 = self.drop(self.act(self.norm2(self.gat2(h1, edge_index)))) + h1
        return torch.maximum(h1, h2)
