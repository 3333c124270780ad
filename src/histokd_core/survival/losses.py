"""Survival losses: Cox partial likelihood (Breslow ties) and discrete-time hazards NLL.

Both take a mini-batch of cases and are differentiable with respect to the model outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cox_nll(
    risk: torch.Tensor,
    time: torch.Tensor,
    event: torch.Tensor,
    reduction: str = "mean",
) -> torch.Tensor:
    """Negative Cox partial log-likelihood with Breslow's handling of tied times.

    ``-sum_{i: event_i} [risk_i - log sum_{j: time_j >= time_i} exp(risk_j)]``: every case that
    fails at a tied time sees the same risk set (all cases still at risk at that time). Computed
    with a reverse log-cumsum-exp, so it is stable for any scale of ``risk``.

    Parameters
    ----------
    risk : ``(n,)`` log relative hazards (higher = worse prognosis), any real values.
    time : ``(n,)`` follow-up times (months; any unit).
    event : ``(n,)`` 1 = event observed, 0 = censored.
    reduction : "mean" (divided by the number of events, the usual training loss) or "sum".

    Returns
    -------
    0-d tensor. A batch without events has no partial likelihood: the result is ``0`` (connected to
    ``risk``, so ``backward`` works and gives zero gradients).
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    risk = risk.reshape(-1)
    time = time.reshape(-1).to(risk.device, torch.float64)
    event = event.reshape(-1).to(risk.device).bool()
    if risk.shape[0] != time.shape[0] or risk.shape[0] != event.shape[0]:
        raise ValueError(
            f"risk, time and event must have the same length, got {risk.shape[0]}, "
            f"{time.shape[0]}, {event.shape[0]}"
        )
    n_events = int(event.sum())
    if n_events == 0:
        return risk.sum() * 0.0
    order = torch.argsort(time)
    t_sorted = time[order]
    r_sorted = risk[order]
    # log sum_{k >= position} exp(r_k) over cases sorted by increasing time
    tail_lse = torch.logcumsumexp(r_sorted.flip(0), 0).flip(0)
    # Breslow: a tied group's risk set starts at the group's first position
    first = torch.searchsorted(t_sorted, t_sorted, right=False)
    log_risk_set = tail_lse[first]
    ev = event[order]
    total = -(r_sorted[ev] - log_risk_set[ev]).sum()
    return total / n_events if reduction == "mean" else total


def discrete_nll(
    logits: torch.Tensor,
    bins: torch.Tensor,
    event: torch.Tensor,
    alpha: float = 0.0,
) -> torch.Tensor:
    """Discrete-time survival negative log-likelihood over time bins (MCAT / SurvPath).

    Hazards ``h_k = sigmoid(logits_k)``, survival ``S_k = prod_{m<=k} (1 - h_m)``, ``S_{-1} = 1``.
    For a case in bin ``y``: uncensored ``-log S_{y-1} - log h_y``; censored ``-log S_y``. The loss
    is ``(1 - alpha) * (censored + uncensored) + alpha * uncensored``, averaged over the batch
    (SurvPath's ``NLLSurvLoss``; its default ``alpha`` is 0, MCAT used 0.4). Log-hazards are
    computed with ``logsigmoid``, so no clamping is needed.

    Parameters
    ----------
    logits : ``(n, K)`` hazard logits per bin.
    bins : ``(n,)`` int bin index in ``0 .. K-1`` (quartiles of uncensored training times).
    event : ``(n,)`` 1 = event observed, 0 = censored.
    alpha : weight of the extra uncensored term.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be (n, K), got shape {tuple(logits.shape)}")
    n, k = logits.shape
    bins = bins.reshape(-1).to(logits.device).long()
    if bins.shape[0] != n or bool(((bins < 0) | (bins >= k)).any()):
        raise ValueError(f"bins must be {n} indices in [0, {k - 1}], got {bins.tolist()}")
    censored = 1.0 - event.reshape(-1).to(logits.device, logits.dtype)
    log_h = F.logsigmoid(logits)
    log_surv = torch.cumsum(F.logsigmoid(-logits), dim=1)
    log_surv_pad = torch.cat([torch.zeros_like(log_surv[:, :1]), log_surv], dim=1)
    idx = bins[:, None]
    s_before = log_surv_pad.gather(1, idx)[:, 0]
    s_at = log_surv_pad.gather(1, idx + 1)[:, 0]
    h_at = log_h.gather(1, idx)[:, 0]
    uncensored = -(1.0 - censored) * (s_before + h_at)
    censored_term = -censored * s_at
    loss = (1.0 - alpha) * (censored_term + uncensored) + alpha * uncensored
    return loss.mean()


def discrete_risk(logits: torch.Tensor) -> torch.Tensor:
    """Risk score of discrete-time hazards logits ``(..., K)``: ``-sum_k S_k`` (SurvPath), shape
    ``(...)``; higher = worse prognosis."""
    return -torch.exp(torch.cumsum(F.logsigmoid(-logits), dim=-1)).sum(-1)
