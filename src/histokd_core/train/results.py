"""What a run writes and reads back: per-case predictions CSV, metric summaries over folds, fold
ensembles and the Kaplan-Meier plot of pooled test risks. Shared by cross-validation
(:mod:`histokd_core.train.cv`) and external evaluation (:mod:`histokd_core.workflows.evaluate`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from histokd_core.io import atomic_write_text
from histokd_core.survival.km import km_logrank, plot_km
from histokd_core.train.evaluation import Outputs

def summarize(task: str, folds: list[dict]) -> dict[str, dict[str, float]]:
    """Mean and (population) standard deviation over folds of each model's test metrics."""
    keys = ("c_index",) if task == "survival" else ("auc", "acc", "f1")
    models: list[str] = []
    for fold in folds:
        models += [m for m in fold["test"] if m not in models]
    out: dict[str, dict[str, float]] = {}
    for model in models:
        out[model] = {}
        for key in keys:
            values = np.array(
                [f["test"][model][key] for f in folds if model in f["test"]], dtype=np.float64
            )
            values = values[np.isfinite(values)]
            mean = float(values.mean()) if values.size else math.nan
            std = float(values.std()) if values.size else math.nan
            if task == "survival" or key == "auc":
                out[model][f"{key}_mean"], out[model][f"{key}_std"] = mean, std
            else:
                out[model][f"{key}_mean"] = mean
    return out


def write_predictions(
    path: Path, outputs: Mapping[str, Outputs], task: str, value_column: str | None = None
) -> None:
    """One row per model and case: ``model,case_id,time,event,label,<value>``, the value being the
    risk (survival) or the positive-class probability (classification); ``value_column``
    defaults to ``risk`` / ``prob_positive``. Written atomically."""
    column = value_column or ("risk" if task == "survival" else "prob_positive")
    lines = [f"model,case_id,time,event,label,{column}"]
    for name, out in outputs.items():
        for i, case in enumerate(out.case_ids):
            value = out.risk[i] if task == "survival" else out.probs[i, -1]
            lines.append(f"{name},{case},{out.time[i]},{out.event[i]},{out.label[i]},{value:.6g}")
    atomic_write_text(path, "\n".join(lines) + "\n")


def pick_km_model(names: Sequence[str], needs_omics: dict[str, bool]) -> str | None:
    """The model whose risk the KM plot shows: ``student`` when reported, else the first slide-only
    reported model, else the first one."""
    if "student" in names:
        return "student"
    slide_only = [n for n in names if not needs_omics.get(n, False)]
    return (slide_only or list(names) or [None])[0]


def pooled_km(outputs: Sequence[Outputs], path: Path, title: str) -> float:
    """Median split within each fold, groups pooled over folds, log-rank; writes the KM plot and
    returns the p-value."""
    time = np.concatenate([o.time for o in outputs])
    event = np.concatenate([o.event for o in outputs])
    centred = np.concatenate([o.risk - np.median(o.risk) for o in outputs])
    result = km_logrank(time, event, centred, threshold=0.0)
    plot_km(result, path, title=title)
    return result.p_value


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks of ``x`` scaled to (0, 1): ``(rank - 0.5) / n`` (ties get their mean rank)."""
    from scipy.stats import rankdata

    return (rankdata(x) - 0.5) / len(x)


def ensemble_outputs(outputs: Sequence[Outputs], task: str) -> Outputs:
    """The fold ensemble of several models' predictions on the same cases: the mean of their
    rank-normalised risks (survival: risks of different folds are on different scales) or of
    their class probabilities (classification)."""
    first = outputs[0]
    if task == "survival":
        risk = np.mean([_ranks(o.risk) for o in outputs], axis=0)
        return Outputs(first.case_ids, first.time, first.event, first.label, risk=risk)
    probs = np.mean([o.probs for o in outputs], axis=0)
    return Outputs(first.case_ids, first.time, first.event, first.label, probs=probs)


def paired_difference(
    metrics: Mapping, model: str, reference: str, metric: str | None = None
) -> dict[str, float | int]:
    """Per-fold paired difference ``model - reference`` of a test metric (same test cases).

    Parameters
    ----------
    metrics : a run's ``metrics.json`` content (``task``, ``folds[i]["test"][model][metric]``).
    model, reference : model names; folds where either is missing or not finite are skipped.
    metric : default ``c_index`` (survival) or ``auc`` (classification).

    Returns
    -------
    ``{"mean", "se", "better", "n"}``: mean difference, its standard error (sample sd / sqrt(n);
    NaN for fewer than 2 folds), folds where ``model`` scored higher, folds compared.
    """
    metric = metric or ("c_index" if metrics["task"] == "survival" else "auc")
    diffs = []
    for fold in metrics["folds"]:
        test = fold["test"]
        if model in test and reference in test:
            d = float(test[model][metric]) - float(test[reference][metric])
            if math.isfinite(d):
                diffs.append(d)
    values = np.array(diffs, dtype=np.float64)
    n = int(values.size)
    return {"mean": float(values.mean()) if n else math.nan,
            "se": float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
            "better": int((values > 0).sum()), "n": n}


def summary_rows(metrics: Mapping) -> list[tuple[str, str, str, str]]:
    """``(model, metric, mean, std)`` rows of ``metrics["summary"]``, formatted to 3 decimals
    (``nan`` for a missing value, an empty std when there is none)."""
    rows = []
    for model, values in metrics["summary"].items():
        for key, mean in values.items():
            if key.endswith("_mean"):
                name = key[: -len("_mean")]
                std = _fmt(values[f"{name}_std"]) if f"{name}_std" in values else ""
                rows.append((model, name, _fmt(mean), std))
    return rows


def summary_table(metrics: Mapping) -> str:
    """:func:`summary_rows` as an aligned text table with a header."""
    rows = [("model", "metric", "mean", "std"), *summary_rows(metrics)]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _fmt(value) -> str:
    return "nan" if value is None else f"{value:.3f}"
