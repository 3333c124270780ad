"""AMKD distillation losses, with our exact reading of the paper's formulas.

Notation: a mini-batch of ``B`` cases; student / teacher risks ``r_s, r_t`` ``(B,)`` (Cox log
hazards, higher = worse); ``L_s``, ``L_t`` the student's and the teacher's Cox NLL on the batch.

- ``L_GE`` (gene-guided enhancement): for every token, KL between the softmax over the feature
  dimension of the teacher and of the student,
  ``KL(softmax(E_t/tau) || softmax(E_s/tau)) = sum_d p_t (log p_t - log p_s)``, averaged over
  tokens and cases (teacher as target, ``tau = 1``: our choice; the teacher side is detached).
  **Which teacher tensor is the target** (``Config.ge_target``). The paper says both
  "genomic features query pathological patches" (which gives one output row per pathway: the
  teacher's gene->path tokens ``g2p (P, d)``) and that the target, the teacher's
  genomics-informed pathology features ``h_t^{g2p}``, has shape ``N_p x d`` with ``N_p`` the number
  of patches, which the student mimics by *projecting its own patch tokens* ``h_s (N_p x d)``.
  The two statements conflict. ``"patch"`` (default) follows the shapes: the target is the
  teacher's per-patch genomics-informed features, the output of patch queries over pathway keys
  (``p2g (n, d)`` of :class:`~histokd_core.nn.attention.PathwayPatchAttention`), whose values are
  the pathway tokens, so they carry the case's expression; the student's ``Linear(h_s)`` ``(n, d)``
  mimics them patch by patch, teacher and student reading the same subsampled patches.
  ``"pathway"`` keeps the literal "genomic features query patches" reading: target ``g2p (P, d)``,
  mimicked by the student's pathway-query tokens ``E_s (P, d)``. Each pathway query attends over
  ``P`` pathway keys and ``n`` patch keys in one softmax, so with ``n >> P`` its values are mostly
  patch averages: the swap diagnostic (:mod:`histokd_core.train.swap`) finds that swapping a case's
  expression moves these tokens by a few per cent of their between-case variance, swapping its slide
  by nearly all of it; the student would imitate a function of its own input. That is why the
  per-patch reading is the default.
- ``L_KD``: ``p = sigmoid(r / T)`` for both models read as Bernoulli probabilities;
  ``T^2 * KL(Bern(p_t) || Bern(p_s))`` averaged over cases (Hinton's ``T^2`` keeps gradients
  comparable across temperatures; the paper gives the sigmoid with temperature, the binary KL
  form and ``T = 2`` are our choice).
- ``L_ARR`` (adaptive risk regularisation). The paper describes two terms built with logarithms
  (``eps = 1e-6``) and sigmoid gates: the reliance on the teacher grows when ``L_KD`` is small, and
  the teacher is down-weighted when the student's Cox loss beats the teacher's. Our reading, all
  gates from detached losses:

  - reliance gate ``g_kd = sigmoid(-log(L_KD + eps)) = 1 / (1 + L_KD + eps)`` (1 when the student
    already agrees with the teacher's risks, -> 0 as they disagree);
  - teacher gate ``g_cox = sigmoid(log(L_s + eps) - log(L_t + eps)) = (L_s + eps) /
    (L_s + L_t + 2 eps)``: above 1/2 while the teacher fits the batch better, below 1/2 once the
    student beats it;
  - teacher weight ``w = g_kd * g_cox`` (logged per epoch as ``arr_weight``);
  - term 1, follow the teacher: ``w * mean_i((r_s,i - mean r_s) - (r_t,i - mean r_t))^2``
    (Cox risks are defined up to a constant, so both are batch-centred before being compared);
  - term 2, rely on the labels: ``(1 - w) * log(L_s + eps)`` (the student's own Cox loss on a log
    scale, so it is not a second copy of ``L_surv``; its gradient is ``(1 - w) grad L_s / L_s``).

  ``L_ARR = term 1 + term 2``. What the gated terms multiply is not spelled out in the paper.
- total: ``alpha * (L_GE + L_KD + L_surv) + (1 - alpha) * L_ARR`` with ``alpha = 0.75``.

Not the paper's: ``Config.distill_loss = "risk"`` replaces the four terms by
``L_surv + kd_weight * L_risk``, with ``L_risk = mean_i ((r_s,i - mean r_s) - z(r_t)_i)^2`` and
``z`` the batch standardisation of the teacher's risks (mean 0, SD 1 over the batch's cases: Cox
risks have no origin, and the teacher's scale is its own). The student regresses the teacher's risk *ordering*, a continuous, uncensored
target carrying the expression's information about every case, where the Cox loss sees only the
ordered event times. Why (docs/benchmarks.md, issue 11): on the redesigned synthetic cohort a
ridge regression of a teacher's risk on mean-pooled features beats a ridge Cox on the same
features by +0.05 C-index over 15 folds, while the paper's losses left the student equal to its
ablation.
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


def risk_regression_loss(
    student_risk: torch.Tensor, teacher_risk: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """``L_risk = mean_i ((r_s,i - mean r_s) - z(r_t)_i)^2`` over the batch ``(B,)``, with
    ``z(r_t) = (r_t - mean r_t) / (sd r_t + eps)`` (population SD, detached): the student's
    centred risks regress the teacher's standardised ones (the student is not rescaled, so the
    loss has no singular point when its risks are all equal). 0 when ``r_s = z(r_t) + c``."""
    t = teacher_risk.detach() - teacher_risk.detach().mean()
    t = t / (t.pow(2).mean().sqrt() + eps)
    return ((student_risk - student_risk.mean()) - t).pow(2).mean()


def arr_gates(
    l_kd: torch.Tensor, student_cox: torch.Tensor, teacher_cox: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(g_kd, g_cox)``: ``sigmoid(-log(L_KD + eps))`` and ``sigmoid(log(L_s + eps) -
    log(L_t + eps))`` from detached 0-d losses (Cox NLLs are >= 0, ``L_KD`` >= 0)."""
    kd = l_kd.detach().clamp_min(0)
    ls, lt = student_cox.detach().clamp_min(0), teacher_cox.detach().clamp_min(0)
    g_kd = torch.sigmoid(-torch.log(kd + eps))
    g_cox = torch.sigmoid(torch.log(ls + eps) - torch.log(lt + eps))
    return g_kd, g_cox


def arr_weight(
    l_kd: torch.Tensor, student_cox: torch.Tensor, teacher_cox: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """Teacher weight ``w = g_kd * g_cox`` of :func:`arr_gates` (0-d, in [0, 1], no gradient)."""
    g_kd, g_cox = arr_gates(l_kd, student_cox, teacher_cox, eps)
    return g_kd * g_cox


def arr_follow_term(
    student_risk: torch.Tensor, teacher_risk: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """Term 1: ``w * mean((r_s - mean r_s) - (r_t - mean r_t))^2`` over the batch ``(B,)``."""
    rs = student_risk - student_risk.mean()
    rt = teacher_risk.detach() - teacher_risk.detach().mean()
    return weight * ((rs - rt) ** 2).mean()


def arr_label_term(student_cox: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6):
    """Term 2: ``(1 - w) * log(L_s + eps)`` (gradient through the student's Cox loss)."""
    return (1 - weight) * torch.log(student_cox.clamp_min(0) + eps)


def arr_loss(
    student_risk: torch.Tensor,
    teacher_risk: torch.Tensor,
    l_kd: torch.Tensor,
    student_cox: torch.Tensor,
    teacher_cox: torch.Tensor,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L_ARR, w)``: term 1 + term 2 with the teacher weight ``w`` (see the module docstring)."""
    w = arr_weight(l_kd, student_cox, teacher_cox, eps)
    loss = arr_follow_term(student_risk, teacher_risk, w) + arr_label_term(student_cox, w, eps)
    return loss, w


def total_loss(
    l_ge: torch.Tensor,
    l_kd: torch.Tensor,
    l_surv: torch.Tensor,
    l_arr: torch.Tensor,
    alpha: float = 0.75,
) -> torch.Tensor:
    """``alpha * (L_GE + L_KD + L_surv) + (1 - alpha) * L_ARR``."""
    return alpha * (l_ge + l_kd + l_surv) + (1 - alpha) * l_arr
