"""Pieces the AMKD teacher and student share: patch projection, risk head, patch subsampling,
the batch Cox loss, token scores and the pathway explanation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from histokd_core.bag import Bag, DataInfo
from histokd_core.methods.base import Explanation
from histokd_core.survival.losses import cox_nll


def pathway_names(info: DataInfo) -> list[str]:
    """``info.pathway_names``, or ``pathway_<i>`` when the data has none."""
    return list(info.pathway_names) or [f"pathway_{i}" for i in range(len(info.pathways))]


def patch_projection(feat_dim: int, dim: int, dropout: float) -> nn.Sequential:
    """``Linear(feat_dim, dim) -> ReLU -> Dropout``: patch features to tokens ``(n, dim)``."""
    return nn.Sequential(nn.Linear(feat_dim, dim), nn.ReLU(), nn.Dropout(dropout))


def risk_head(dim: int, dropout: float) -> nn.Sequential:
    """MLP ``2 dim -> dim/4 -> 1`` on the concatenated pooled tokens."""
    return nn.Sequential(
        nn.Linear(2 * dim, dim // 4), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim // 4, 1)
    )


def subsample(n: int, k: int | None, device: torch.device) -> torch.Tensor | None:
    """Random ``k`` of ``n`` patch indices while training (SurvPath draws 4096), else None."""
    if k is None or n <= k:
        return None
    return torch.randperm(n, device=device)[:k]


def batch_cox(risks: torch.Tensor, bags: Sequence[Bag]) -> torch.Tensor:
    """Cox NLL of risks ``(B,)`` for the bags' times and events."""
    time = torch.tensor([float(b.time) for b in bags], dtype=torch.float64, device=risks.device)
    event = torch.tensor([int(b.event) for b in bags], device=risks.device)
    return cox_nll(risks, time, event)


def token_scores(tokens: torch.Tensor, risk_fn) -> np.ndarray:
    """Gradient x input of ``risk_fn(tokens)`` per token, summed over features: ``(P,)``."""
    with torch.enable_grad():
        t = tokens.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(risk_fn(t), t)
    return (grad * t).sum(-1).detach().float().cpu().numpy()


def pathway_explanation(
    bag: Bag,
    names: Sequence[str],
    maps: torch.Tensor,
    scores: np.ndarray,
    attention: torch.Tensor,
    risk: float,
    top: int,
) -> Explanation:
    """Explanation with the ``top`` pathways (by |score|) as maps ``(n,)`` and all scores."""
    path_maps, path_scores, top_patches = ranked_pathways(names, maps, scores, top)
    return Explanation(
        coords=bag.coords.cpu().numpy(),
        patch_size=bag.patch_size,
        attention=attention.detach().float().cpu().numpy(),
        pathway_maps=path_maps,
        pathway_scores=path_scores,
        top_patches=top_patches,
        risk=risk,
    )


def ranked_pathways(names: Sequence[str], maps: torch.Tensor, scores: np.ndarray, top: int):
    """The ``top`` pathways by ``|scores|`` (``(P,)``): their maps (name -> ``(n,)`` of ``maps
    (P, n)``), every pathway's score (name -> float) and each shown map's 8 highest patches
    (name -> indices)."""
    order = np.argsort(-np.abs(scores))[:top]
    maps_np = maps.detach().float().cpu().numpy()
    return ({names[i]: maps_np[i] for i in order},
            {names[i]: float(scores[i]) for i in range(len(names))},
            {names[i]: np.argsort(-maps_np[i])[:8] for i in order})
