"""AMKD distillation losses, with our exact reading of the paper's formulas.

Notation: a mini-batch of ``B`` cases; student / teacher risks ``r_s, r_t`` ``(B,)`` (Cox log
hazards, higher = worse); student enhanced features ``E_s`` and teacher gene->path features
``E_t``, each ``(P, d)`` per case (one token per pathway).

- ``L_GE`` (gene-guided enhancement): for every pathway token, KL between the softmax over the
  feature dimension of the teacher and of the student,
  ``KL(softmax(E_t/tau) || softmax(E_s/tau)) = sum_d p_t (log p_t - log p_s)``, averaged over
  tokens and cases. The paper names "KL between feature-dim softmaxes"; the direction
  (teacher as target) and ``tau = 1`` are our choice. The teacher side is detached.
- ``L_KD``: ``p = sigmoid(r / T)`` for both models read as Bernoulli probabilities;
  ``T^2 * KL(Bern(p_t) || Bern(p_s))`` averaged over cases (Hinton's ``T^2`` keeps gradients
  comparable across temperatures; the paper gives the sigmoid with temperature, the binary KL
  form and ``T = 2`` are our choice).
- ``L_ARR`` (adaptive risk regularisation): the paper weights the teacher's guidance by the
  mismatch of the teacher's and the student's Cox losses with sigmoid gates and ``eps = 1e-6``.
  We read it as ``w = s(L_s) / (s(L_s) + s(L_t) + eps)`` with ``s`` the sigmoid and both Cox
  losses detached, so ``w > 1/2`` when the teacher fits the batch better and ``w < 1/2`` when the
  student already beats it (the teacher is down-weighted), multiplied by the squared distance
  between batch-centred student and teacher risks (Cox risks are only defined up to a constant,
  so they are centred before being compared): ``L_ARR = w * mean_i((r_s,i - mean r_s) -
  (r_t,i - mean r_t))^2``. What the gated term multiplies is not spelled out in the paper.
- total: ``alpha * (L_GE + L_KD + L_surv) + (1 - alpha) * L_ARR`` with ``alpha = 0.75``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ge_loss(student: torch.Tensor, teacher: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """``L_GE``: mean over tokens of ``KL(softmax_d(teacher/tau) || softmax_d(student/tau))``.

    Parameters
    ----------
    student, teacher : ``(..., d)`` features (any leading shape, e.g. ``(B, P, d)``).
    """
    log_s = F.log_softmax(student / tau, dim=-1)
    log_t = F.log_softmax(teacher.detach() / tau, dim=-1)
    return (log_t.exp() * (log_t - log_s)).sum(-1).mean()


def kd_loss(
    student_risk: torch.Tensor, teacher_risk: torch.Tensor, temperature: float = 2.0
) -> torch.Tensor:
    """``L_KD = T^2 * mean_i KL(Bern(sigmoid(r_t/T)) || Bern(sigmoid(r_s/T)))``; risks ``(B,)``."""
    t = teacher_risk.detach() / temperature
    s = student_risk / temperature
    p_t = torch.sigmoid(t)
    # KL = p_t (log p_t - log p_s) + (1 - p_t)(log(1 - p_t) - log(1 - p_s)), in log-sigmoid form
    kl = p_t * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - p_t) * (
        F.logsigmoid(-t) - F.logsigmoid(-s)
    )
    return temperature**2 * kl.mean()


def arr_weight(student_cox: torch.Tensor, teacher_cox: torch.Tensor, eps: float = 1e-6):
    """Teacher weight ``s(L_s) / (s(L_s) + s(L_t) + eps)`` from detached Cox losses (0-d)."""
    g_s = torch.sigmoid(student_cox.detach())
    g_t = torch.sigmoid(teacher_cox.detach())
    return g_s / (g_s + g_t + eps)


def arr_loss(
    student_risk: torch.Tensor,
    teacher_risk: torch.Tensor,
    student_cox: torch.Tensor,
    teacher_cox: torch.Tensor,
    eps: float = 1e-6,
) -> torch.Tensor:
    """``L_ARR = arr_weight * mean((r_s - mean r_s) - (r_t - mean r_t))^2`` over the batch."""
    rs = student_risk - student_risk.mean()
    rt = teacher_risk.detach() - teacher_risk.detach().mean()
    return arr_weight(student_cox, teacher_cox, eps) * ((rs - rt) ** 2).mean()


def total_loss(
    l_ge: torch.Tensor,
    l_kd: torch.Tensor,
    l_surv: torch.Tensor,
    l_arr: torch.Tensor,
    alpha: float = 0.75,
) -> torch.Tensor:
    """``alpha * (L_GE + L_KD + L_surv) + (1 - alpha) * L_ARR``."""
    return alpha * (l_ge + l_kd + l_surv) + (1 - alpha) * l_arr
