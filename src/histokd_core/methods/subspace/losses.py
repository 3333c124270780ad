"""Losses of the disentangled subspace method: task loss, DEV (IGC) loss and SKD.

The discrete-time survival NLL is :func:`histokd_core.survival.discrete_nll`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from histokd_core.bag import Bag
from histokd_core.errors import DataError
from histokd_core.survival import discrete_nll


def targets(bags: Sequence[Bag], task: str, n_out: int, device) -> torch.Tensor:
    """``(B,)`` class labels (classification) or survival bins, checked against ``0..n_out-1``."""
    field = "label" if task == "classification" else "bin"
    vals = [int(getattr(b, field)) for b in bags]
    bad = [b.case_id for b, v in zip(bags, vals) if not 0 <= v < n_out]
    if bad:
        raise DataError(f"cases {bad[:5]}: bag.{field} must be an index in 0..{n_out - 1}")
    return torch.tensor(vals, device=device)


def task_loss(logits: torch.Tensor, bags: Sequence[Bag], task: str) -> torch.Tensor:
    """Cross-entropy (classification) or discrete-time survival NLL over bins, ``logits (B, K)``."""
    y = targets(bags, task, logits.shape[1], logits.device)
    if task == "classification":
        return F.cross_entropy(logits, y)
    event = torch.tensor([int(b.event) for b in bags], device=logits.device)
    return discrete_nll(logits, y, event)


def dev_loss(
    attn_10x: torch.Tensor, attn_20x: torch.Tensor, weight: float = 10_000.0
) -> torch.Tensor:
    """Inter-magnification consistency (DEV, eq. 7): ``weight * Var(diag(M))``.

    ``M = A10 A20^T`` (``(B, B)``) from flattened per-case attention maps ``(B, F)``, each row of
    ``M`` divided by its L2 norm; the unbiased variance of the diagonal (torch's default, as in
    the public code). Needs ``B >= 2``; with one case it is 0.
    """
    a10 = attn_10x.flatten(1)
    a20 = attn_20x.flatten(1)
    if a10.shape != a20.shape:
        raise ValueError(
            f"10x and 20x attention maps differ in shape: {tuple(a10.shape)} vs {tuple(a20.shape)}"
        )
    if a10.shape[0] < 2:
        return a10.sum() * 0.0
    m = a10 @ a20.t()
    m = m / m.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return weight * torch.diagonal(m).var()


def kd_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0
) -> torch.Tensor:
    """``KL(softmax(t/T) || softmax(s/T)) * T^2`` (batch mean), logits ``(B, K)``."""
    t = temperature
    log_q = F.log_softmax(student_logits / t, -1)
    return F.kl_div(log_q, F.softmax(teacher_logits / t, -1), reduction="batchmean") * t * t


def skd_loss(
    task: torch.Tensor,
    student_feats: Sequence[torch.Tensor],
    teacher_feats: Sequence[torch.Tensor],
    student_logits: Sequence[torch.Tensor],
    teacher_logits: Sequence[torch.Tensor],
    w_mse: float = 0.01,
    w_kd: float = 0.01,
    temperature: float = 2.0,
) -> dict[str, torch.Tensor]:
    """SKD = task + ``w_mse * sum_m MSE(s_m, t_m)`` + ``w_kd * sum_m KL_T(s_m, t_m)`` over
    magnifications ``m``; features ``(B, 2 * dim)`` (tumour | TME), logits ``(B, K)``."""
    mse = sum(F.mse_loss(s, t.detach()) for s, t in zip(student_feats, teacher_feats))
    kl = sum(kd_kl(s, t.detach(), temperature) for s, t in zip(student_logits, teacher_logits))
    total = task + w_mse * mse + w_kd * kl
    return {"loss": total, "task": task.detach(), "mse": mse.detach(), "kl": kl.detach()}


def logit_regression_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """Regression of the student's logits on the teacher's, both ``(B, K)``.

    Each row is centred over its ``K`` classes (softmax ignores a shift per row), then each
    class column over the batch; the teacher's centred logits are divided by their root mean
    square over the batch and classes (``+ eps``; detached), the student's are not rescaled:
    ``L = mean_{i,k} (s~_ik - t~_ik / rms(t~))^2``. 0 when the student's logits equal the
    teacher's standardised ones up to a shift per row and per column. With ``K = 2`` this is
    AMKD's risk regression on half the log-odds (not in the paper; docs/training.md says why a
    scale-free target: an in-sample teacher's logits are far larger than what it generalises)."""
    def centre(z: torch.Tensor) -> torch.Tensor:
        z = z - z.mean(1, keepdim=True)
        return z - z.mean(0, keepdim=True)

    t = centre(teacher_logits.detach().float())
    t = t / (t.pow(2).mean().sqrt() + eps)
    return (centre(student_logits) - t).pow(2).mean()
