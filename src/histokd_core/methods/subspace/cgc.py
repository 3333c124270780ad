"""Confidence-guided gradient coordination (CGC) between the tumour and TME subspaces.

The classifier ``W (K, 2*dim)`` acts on ``[f_tumour | f_TME]``; its weight gradient splits into the
two halves ``G_t, G_m (K, dim)``. Row by row, when ``cos(g_t, g_m) < 0`` the gradient of the less
confident subspace is projected onto the normal plane of the other: ``g <- g - (g.h / |h|^2) h``.
Confidence of subspace ``s``: ``sum_batch softmax(f_s W_s^T + b / 2)[y]``.

``mode = "clean"`` is that projection. ``mode = "public"`` reproduces the public code: it
subtracts the projection twice, unit-normalises, and rescales to the norm of the clean result.
Only the classifier weight is touched (bias and encoders are not), as in the public code.
"""

from __future__ import annotations

import torch
from torch import nn


def project_rows(g: torch.Tensor, h: torch.Tensor, mode: str = "clean") -> torch.Tensor:
    """Project each row of ``g (K, d)`` onto the normal plane of the same row of ``h``."""
    p = (g * h).sum(1, keepdim=True) / (h * h).sum(1, keepdim=True).clamp_min(1e-20) * h
    clean = g - p
    if mode == "clean":
        return clean
    if mode != "public":
        raise ValueError(f"CGC mode must be 'clean' or 'public', got {mode!r}")
    twice = clean - p
    unit = twice / twice.norm(dim=1, keepdim=True).clamp_min(1e-20)
    return unit * clean.norm(dim=1, keepdim=True)


def coordinate(
    g_a: torch.Tensor, g_b: torch.Tensor, conf_a: float, conf_b: float, mode: str = "clean"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Coordinate two gradient blocks ``(K, d)`` row by row.

    Rows with negative cosine are conflicts; there the lower-confidence block (``a`` when
    ``conf_a < conf_b``) is projected. Returns the new ``g_a``, ``g_b`` and the ``(K,)`` bool
    conflict mask.
    """
    cos = torch.nn.functional.cosine_similarity(g_a, g_b, dim=1)
    conflict = cos < 0
    g_a, g_b = g_a.clone(), g_b.clone()
    if conflict.any():
        if conf_a < conf_b:
            g_a[conflict] = project_rows(g_a[conflict], g_b[conflict], mode)
        else:
            g_b[conflict] = project_rows(g_b[conflict], g_a[conflict], mode)
    return g_a, g_b, conflict


def confidences(
    head: nn.Linear, feats: torch.Tensor, targets: torch.Tensor
) -> tuple[float, float]:
    """Batch sums of the true-class probability of each half's partial logits
    ``f_s W_s^T + b / 2``; ``feats (B, 2*dim)``, ``targets (B,)``."""
    d = feats.shape[1] // 2
    w, b = head.weight.detach(), head.bias.detach() / 2
    out = []
    for sl in (slice(0, d), slice(d, 2 * d)):
        prob = torch.softmax(feats[:, sl] @ w[:, sl].t() + b, -1)
        out.append(float(prob.gather(1, targets[:, None]).sum()))
    return out[0], out[1]


def apply_cgc(
    head: nn.Linear, feats: torch.Tensor, targets: torch.Tensor, mode: str = "clean"
) -> int:
    """Rewrite ``head.weight.grad`` in place; returns the number of conflicting rows."""
    if head.weight.grad is None:
        return 0
    d = feats.shape[1] // 2
    conf_t, conf_m = confidences(head, feats, targets)
    grad = head.weight.grad
    g_t, g_m, conflict = coordinate(grad[:, :d], grad[:, d:], conf_t, conf_m, mode)
    grad[:, :d] = g_t
    grad[:, d:] = g_m
    return int(conflict.sum())
