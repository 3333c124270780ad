"""Classification metrics (scikit-learn): AUC, accuracy, macro F1."""

from __future__ import annotations

import math

import numpy as np


def classification_metrics(labels, probs) -> dict[str, float]:
    """AUC, accuracy and macro F1 of class probabilities.

    Parameters
    ----------
    labels : ``(n,)`` int class indices.
    probs : ``(n, C)`` class probabilities (rows sum to 1).

    Returns
    -------
    ``{"auc", "acc", "f1"}``; AUC is one-vs-rest macro for C > 2 and NaN when ``labels`` holds
    a single class. Predictions are the arg-max class.
    """
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    labels = np.asarray(labels).astype(int).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != labels.shape[0]:
        raise ValueError(f"probs must be (n, C) with n = {labels.shape[0]}, got {probs.shape}")
    pred = probs.argmax(1)
    n_classes = probs.shape[1]
    if np.unique(labels).size < 2:
        auc = math.nan
    elif n_classes == 2:
        auc = float(roc_auc_score(labels, probs[:, 1]))
    else:
        auc = float(roc_auc_score(labels, probs, multi_class="ovr", labels=list(range(n_classes))))
    return {
        "auc": auc,
        "acc": float(accuracy_score(labels, pred)),
        "f1": float(
            f1_score(labels, pred, average="macro", labels=list(range(n_classes)), zero_division=0)
        ),
    }
