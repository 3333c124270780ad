"""Kaplan-Meier curves and log-rank test of predicted high / low risk groups (lifelines)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from histokd_core.io import atomic_path


@dataclass
class KMResult:
    """Two risk groups, their Kaplan-Meier curves and the log-rank test between them.

    Attributes
    ----------
    threshold : risk cut-off (the median by default); ``risk > threshold`` is "high".
    high : ``(n,)`` bool, membership of the high-risk group.
    p_value, statistic : log-rank test (NaN when a group is empty).
    curves : group name -> ``(timeline (m,), survival (m,))`` step functions (time in the input's
        unit, months in this project).
    counts : group name -> number of cases.
    """

    threshold: float
    high: np.ndarray
    p_value: float
    statistic: float
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


def km_logrank(time, event, risk, threshold: float | None = None) -> KMResult:
    """Split cases at ``threshold`` (default: the median risk), fit a Kaplan-Meier curve per group
    and compare the groups with the log-rank test.

    Parameters
    ----------
    time : ``(n,)`` follow-up (months); event : ``(n,)`` 1 = event; risk : ``(n,)`` predicted risk.
    threshold : risk cut-off; cases with ``risk > threshold`` form the high-risk group.
    """
    from lifelines import KaplanMeierFitter
    from lifelines.statistics import logrank_test

    time = np.asarray(time, dtype=np.float64).reshape(-1)
    event = np.asarray(event).reshape(-1).astype(int)
    risk = np.asarray(risk, dtype=np.float64).reshape(-1)
    if not time.shape == event.shape == risk.shape:
        raise ValueError("time, event and risk must have the same length")
    thr = float(np.median(risk)) if threshold is None else float(threshold)
    high = risk > thr
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    counts: dict[str, int] = {}
    for name, mask in (("high risk", high), ("low risk", ~high)):
        counts[name] = int(mask.sum())
        if mask.any():
            kmf = KaplanMeierFitter().fit(time[mask], event[mask], label=name)
            sf = kmf.survival_function_
            curves[name] = (sf.index.to_numpy(dtype=np.float64), sf.iloc[:, 0].to_numpy())
    if high.any() and (~high).any():
        test = logrank_test(time[high], time[~high], event[high], event[~high])
        p_value, statistic = float(test.p_value), float(test.test_statistic)
    else:
        p_value = statistic = math.nan
    return KMResult(thr, high, p_value, statistic, curves, counts)


def plot_km(
    result: KMResult, path: str | os.PathLike, title: str = "", time_unit: str = "months"
) -> Path:
    """Write the two Kaplan-Meier curves with the log-rank p-value as a PNG (atomically).

    Uses matplotlib's Agg canvas directly, so it works in threads and without a display.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    colors = {"high risk": "#c0392b", "low risk": "#2471a3"}
    for name, (t, s) in result.curves.items():
        ax.step(t, s, where="post", color=colors[name], label=f"{name} (n={result.counts[name]})")
    p = result.p_value
    p_text = "n/a" if math.isnan(p) else (f"{p:.2e}" if p < 1e-3 else f"{p:.3f}")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"time ({time_unit})")
    ax.set_ylabel("survival probability")
    if title:
        ax.set_title(title)
    ax.legend(loc="upper right", frameon=False, title=f"log-rank p = {p_text}")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
