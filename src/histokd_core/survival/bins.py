"""Discrete-time survival bins: edges from the uncensored training times, and bin assignment.

The discrete-time models (:func:`~histokd_core.survival.losses.discrete_nll`) predict one hazard
per bin; SurvPath cuts follow-up time at the quartiles of the uncensored training times.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from histokd_core.errors import DataError

log = logging.getLogger(__name__)


def survival_bin_edges(times: np.ndarray, events: np.ndarray, n_bins: int = 4) -> list[float]:
    """Bin edges (months) from quantiles of the uncensored times (SurvPath's discretisation).

    With fewer uncensored times than bins (tiny cohorts) all training times are used instead.

    Parameters
    ----------
    times : ``(n,)`` follow-up in months of the training cases.
    events : ``(n,)`` 1 = event observed.
    n_bins : number of bins.

    Returns
    -------
    ``n_bins + 1`` edges: 0, the inner quantiles, and the largest training time (finite, so the
    edges serialise to JSON); :func:`assign_bins` puts later times in the last bin.
    """
    times = np.asarray(times, dtype=np.float64)
    observed = times[np.asarray(events).astype(bool)]
    if len(observed) < n_bins:
        if len(times) < n_bins:
            raise DataError(
                f"survival bins: {len(times)} training case(s), need at least n_bins = {n_bins}")
        log.warning("only %d uncensored training cases for %d bins: binning all training times",
                    len(observed), n_bins)
        observed = times
    inner = np.quantile(observed, np.linspace(0, 1, n_bins + 1)[1:-1])
    last = float(max(times.max(), inner[-1] if len(inner) else 0.0))
    return [0.0, *[float(v) for v in inner], last]


def assign_bins(times: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Bin index ``(n,)`` of each time: ``edges[b] <= t < edges[b + 1]`` (clipped to the range)."""
    edges = np.asarray(edges, dtype=np.float64)
    idx = np.searchsorted(edges, np.asarray(times, dtype=np.float64), side="right") - 1
    return np.clip(idx, 0, len(edges) - 2).astype(np.int64)
