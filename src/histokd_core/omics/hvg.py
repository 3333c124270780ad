"""Highly variable genes, chosen on the training fold."""

from __future__ import annotations

import numpy as np
import pandas as pd

from histokd_core.errors import DataError


def select_hvg(train_expr: pd.DataFrame, fraction: float = 0.3) -> list[str]:
    """Top ``fraction`` of genes by variance across the training cases.

    Parameters
    ----------
    train_expr : ``(n_train, g)`` expression of the training fold only (choosing genes on all
        cases would leak test information).
    fraction : share of genes kept, in (0, 1]; at least one gene is kept.

    Returns
    -------
    Gene names in the table's column order (ties broken by that order).
    """
    if not 0 < fraction <= 1:
        raise DataError(f"select_hvg: fraction must be in (0, 1], got {fraction}")
    if len(train_expr) < 2:
        raise DataError("select_hvg: need at least two training cases to measure variance")
    var = train_expr.to_numpy(dtype=np.float64).var(axis=0, ddof=1)
    k = max(1, int(round(fraction * len(var))))
    keep = np.sort(np.argsort(-var, kind="stable")[:k])
    return [str(train_expr.columns[i]) for i in keep]
