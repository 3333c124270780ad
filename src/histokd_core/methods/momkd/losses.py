"""MoMKD losses and the memory-guided attention (paper eqs.; public-code constants).

Notation: ``z`` are L2-normalised projections (shared dimension ``D_N``), ``C`` are memory
components, L2-normalised, ``(K, D_N)`` per class (``C+`` for label 1, ``C-`` for label 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_similarity(
    z: torch.Tensor, components: torch.Tensor, tau_agg: float = 5.0
) -> torch.Tensor:
    """Soft maximum of cosine similarities to a memory: ``logsumexp(tau_agg * z . c_j) / tau_agg``.

    Parameters
    ----------
    z : ``(..., D)`` normalised projections.
    components : ``(K, D)`` normalised memory components of one class.

    Returns
    -------
    ``(...)`` soft similarity (tends to ``max_j z . c_j`` as ``tau_agg`` grows).
    """
    return torch.logsumexp(tau_agg * (z @ components.T), dim=-1) / tau_agg


def alignment_loss(
    z: torch.Tensor,
    label: torch.Tensor | int,
    mem_pos: torch.Tensor,
    mem_neg: torch.Tensor,
    tau_agg: float = 5.0,
    beta: float = 20.0,
    margin: float = 0.3,
) -> torch.Tensor:
    """Soft angle alignment of a projection with its own class's memory.

    ``Delta = phi(z, C+) - phi(z, C-)``; loss ``softplus(beta * (margin - Delta))`` for label 1 and
    ``softplus(beta * (margin + Delta))`` for label 0, averaged over the leading dimension.

    Parameters
    ----------
    z : ``(B, D)`` (or ``(D,)``) normalised projections (pooled WSI or omics).
    label : ``(B,)`` or int, 0 or 1.
    mem_pos, mem_neg : ``(K, D)`` normalised memories of class 1 and class 0.
    """
    z = z.reshape(-1, z.shape[-1])
    y = torch.as_tensor(label, device=z.device).reshape(-1).to(z.dtype)
    delta = soft_similarity(z, mem_pos, tau_agg) - soft_similarity(z, mem_neg, tau_agg)
    sign = 2.0 * y - 1.0  # +1 for label 1, -1 for label 0
    return F.softplus(beta * (margin - sign * delta)).mean()


def nearest_component(z: torch.Tensor, components: torch.Tensor) -> torch.Tensor:
    """Index ``(n,)`` of the most similar (cosine) component for each row of ``z (n, D)``."""
    return (z @ components.T).argmax(dim=-1)


def orthogonality(components: torch.Tensor) -> torch.Tensor:
    """Mean squared off-diagonal cosine: ``sum_{i != j} cos(c_i, c_j)^2 / K^2``.

    Equals the public code's ``sum_ij cos^2 / K^2 - 1/K`` (the vector-quantise library's orthogonal
    regulariser) for normalised components. ``components (K, D)``, need not be normalised.
    """
    c = F.normalize(components, dim=-1)
    k = c.shape[0]
    gram = c @ c.T
    off = gram - torch.diag(torch.diagonal(gram))
    return (off**2).sum() / (k * k)


def memory_loss(
    z: torch.Tensor,
    components: torch.Tensor,
    orth_weight: float = 10.0,
    codebook_grad: bool = False,
) -> dict[str, torch.Tensor]:
    """Commitment of patch projections to their nearest component + orthogonality of the memory.

    ``commit = mean_{p, d} (z_p - sg(c_{k(p)}))^2`` with ``k(p)`` the nearest component (cosine);
    ``loss = commit + orth_weight * orthogonality(C)``.

    Parameters
    ----------
    z : ``(n, D)`` normalised patch projections of a slide.
    components : ``(K, D)`` normalised memory of the slide's own class.
    orth_weight : weight of the orthogonality term (10 in the public code).
    codebook_grad : also pass the commitment gradient to the components (the public code's
        gradient-trained codebook: plain MSE without stop-gradient). False for the paper's
        momentum memory (stop-gradient; the memory moves only by its EMA update).

    Returns
    -------
    dict with ``"loss"``, ``"commit"``, ``"orth"`` (0-d tensors) and ``"assign"`` ``(n,)``.
    """
    assign = nearest_component(z.detach(), components.detach())
    target = components[assign]
    if not codebook_grad:
        target = target.detach()
    commit = ((z - target) ** 2).mean()
    orth = orthogonality(components)
    return {"loss": commit + orth_weight * orth, "commit": commit, "orth": orth, "assign": assign}


def memory_scores(z: torch.Tensor, mem_pos: torch.Tensor, mem_neg: torch.Tensor) -> torch.Tensor:
    """Per-patch memory score ``max_j z_i . c+_j - max_j z_i . c-_j`` (memories detached).

    ``z (n, D)`` -> ``(n,)``. The memories are detached so the classifier's gradient never
    reaches them.
    """
    s_pos = (z @ mem_pos.detach().T).max(dim=-1).values
    s_neg = (z @ mem_neg.detach().T).max(dim=-1).values
    return s_pos - s_neg


def memory_attention(
    z: torch.Tensor, mem_pos: torch.Tensor, mem_neg: torch.Tensor, tau: torch.Tensor | float
) -> torch.Tensor:
    """Memory-guided attention ``softmax_i(score_i / tau)`` over patches, ``(n,)``, sums to 1."""
    return torch.softmax(memory_scores(z, mem_pos, mem_neg) / tau, dim=0)
