"""DPC-KNN token clustering (density peaks with k-nearest-neighbour density; TCFormer / DML).

For tokens ``x (n, d)`` with distances ``d_ij = ||x_i - x_j|| / sqrt(d)``:

- density ``rho_i = exp(-mean_{j in kNN(i)} d_ij^2)`` over the ``k`` nearest other tokens;
- relative distance ``xi_i = min_{j denser than i} d_ij``; the densest token gets ``max_j d_ij``.
  "Denser" is ``rho_j > rho_i``, ties broken by index (``j < i`` counts as denser), so exactly
  one token has no denser neighbour;
- score ``rho_i * xi_i``; the top-``K`` tokens are the cluster centres (in score order);
- every token is assigned to its nearest centre (a centre to itself);
- a cluster's prototype is the significance-weighted mean of its tokens,
  ``sum_i w_i x_i / sum_i w_i`` (``w_i = exp(s_i)``, ``s_i`` a learnt token score).

Distances are computed in row chunks so a 10 000-token bag never holds an ``n x n`` matrix.
The clustering itself (centres, assignment) is not differentiable; the merge is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Clustering:
    """Result of :func:`dpc_knn`.

    Attributes
    ----------
    centres : ``(K,)`` int64 token indices of the cluster centres, highest score first.
    assignment : ``(n,)`` int64 cluster id ``0..K-1`` of every token.
    density : ``(n,)`` float ``rho``; distance : ``(n,)`` float ``xi``; score : ``(n,)`` ``rho*xi``.
    """

    centres: torch.Tensor
    assignment: torch.Tensor
    density: torch.Tensor
    distance: torch.Tensor
    score: torch.Tensor


def _scaled_cdist(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.cdist(a, b) / dim**0.5


@torch.no_grad()
def dpc_knn(x: torch.Tensor, n_clusters: int, k: int = 5, chunk: int = 2048) -> Clustering:
    """Cluster tokens ``x (n, d)`` into ``min(n_clusters, n)`` clusters with DPC-KNN.

    Parameters
    ----------
    x : ``(n, d)`` token features (n >= 1).
    n_clusters : number of centres ``K``.
    k : neighbours for the density (clipped to ``n - 1``; with one token the density is 1).
    chunk : rows of the distance matrix computed at once (memory ``chunk * n`` floats).
    """
    if x.dim() != 2 or x.shape[0] < 1:
        raise ValueError(f"x must be (n, d) with n >= 1, got shape {tuple(x.shape)}")
    x = x.detach().float()
    n, dim = x.shape
    kk = min(k, n - 1)
    density = torch.ones(n, device=x.device)
    if kk > 0:
        parts = []
        for s in range(0, n, chunk):
            d = _scaled_cdist(x[s : s + chunk], x, dim)
            rows = torch.arange(s, min(s + chunk, n), device=x.device)
            d[rows - s, rows] = float("inf")
            nn_d = d.topk(kk, dim=1, largest=False).values
            parts.append(torch.exp(-(nn_d**2).mean(1)))
        density = torch.cat(parts)
    idx = torch.arange(n, device=x.device)
    distance = torch.empty(n, device=x.device)
    for s in range(0, n, chunk):
        rows = idx[s : s + chunk]
        d = _scaled_cdist(x[rows], x, dim)
        rho_i = density[rows][:, None]
        rho_j = density[None, :]
        denser = (rho_j > rho_i) | ((rho_j == rho_i) & (idx[None, :] < rows[:, None]))
        masked = torch.where(denser, d, torch.full_like(d, float("inf")))
        nearest = masked.min(1).values
        top = ~denser.any(1)
        nearest[top] = d[top].max(1).values
        distance[s : s + chunk] = nearest
    score = density * distance
    n_c = min(n_clusters, n)
    centres = score.topk(n_c).indices
    assignment = torch.empty(n, dtype=torch.long, device=x.device)
    for s in range(0, n, chunk):
        assignment[s : s + chunk] = _scaled_cdist(x[s : s + chunk], x[centres], dim).argmin(1)
    assignment[centres] = torch.arange(n_c, device=x.device)
    return Clustering(centres, assignment, density, distance, score)


def merge_tokens(
    x: torch.Tensor, assignment: torch.Tensor, weight: torch.Tensor, n_clusters: int
) -> torch.Tensor:
    """Significance-weighted merge: prototype ``c = sum_{i in c} w_i x_i / sum_{i in c} w_i``.

    Parameters
    ----------
    x : ``(n, d)`` tokens; assignment : ``(n,)`` cluster ids in ``0..n_clusters-1``;
    weight : ``(n,)`` positive token weights (``exp`` of a learnt score).

    Returns
    -------
    ``(n_clusters, d)`` prototypes (differentiable in ``x`` and ``weight``).
    """
    num = torch.zeros(n_clusters, x.shape[1], dtype=x.dtype, device=x.device)
    num = num.index_add(0, assignment, x * weight[:, None])
    den = torch.zeros(n_clusters, dtype=x.dtype, device=x.device).index_add(0, assignment, weight)
    return num / den.clamp_min(1e-12)[:, None]
