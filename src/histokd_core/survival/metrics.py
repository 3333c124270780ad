"""Harrell's concordance index for risk scores, with lifelines' conventions for ties."""

from __future__ import annotations

import math

import numpy as np


def c_index(time, risk, event) -> float:
    """Harrell's C-index of risk scores (higher risk = shorter survival).

    A pair ``(i, j)`` is comparable when case ``i`` has an event and ``time_j > time_i``, or
    ``time_j == time_i`` and ``j`` is censored (tied events are not comparable). It is concordant
    when ``risk_i > risk_j``; tied risks count one half. This equals
    ``lifelines.utils.concordance_index(time, -risk, event)``.

    Parameters
    ----------
    time : ``(n,)`` follow-up times; risk : ``(n,)`` predicted risks; event : ``(n,)`` 1 = event.

    Returns
    -------
    float in [0, 1], or NaN when no pair is comparable (e.g. no events).
    """
    time = np.asarray(time, dtype=np.float64).reshape(-1)
    risk = np.asarray(risk, dtype=np.float64).reshape(-1)
    event = np.asarray(event).reshape(-1).astype(bool)
    if not time.shape == risk.shape == event.shape:
        raise ValueError(
            f"time, risk and event must have the same length, got {time.shape}, {risk.shape}, "
            f"{event.shape}"
        )
    if np.isnan(risk).any():
        raise ValueError("risk contains NaN")
    correct = 0.0
    tied = 0.0
    pairs = 0
    for i in np.flatnonzero(event):
        comparable = (time > time[i]) | ((time == time[i]) & ~event)
        others = risk[comparable]
        pairs += others.size
        correct += np.count_nonzero(risk[i] > others)
        tied += np.count_nonzero(risk[i] == others)
    if pairs == 0:
        return math.nan
    return float((correct + 0.5 * tied) / pairs)
