"""Predict slides: a trained slide-only model's prediction and per-patch maps, written as CSV + JSON,
for one slide (:func:`predict_slide`) or every slide of a feature store (:func:`predict_cohort`)."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from histokd_core.cancel import CancelToken
from histokd_core.errors import DataError
from histokd_core.progress import ProgressFn, report

if TYPE_CHECKING:
    from histokd_core.methods.base import Explanation

log = logging.getLogger(__name__)


@dataclass
class SlidePrediction:
    """What :func:`predict_slide` wrote: the ``summary`` (``slide_id``, ``stage``, ``method``,
    ``n_patches``, ``risk`` or ``probabilities``, ``pathway_scores``, ``top_patches``), the
    model's :class:`Explanation`, and the CSV path (the JSON summary is beside it)."""

    summary: dict
    explanation: Explanation
    path: Path

    def line(self) -> str:
        """``<slide_id>\\trisk=<r>`` or ``<slide_id>\\tprobability=<p>`` (positive class)."""
        if "risk" in self.summary:
            return f"{self.summary['slide_id']}\trisk={self.summary['risk']:.4f}"
        return f"{self.summary['slide_id']}\tprobability={self.summary['probabilities'][-1]:.4f}"


def explanation_table(expl: Explanation) -> tuple[list[str], np.ndarray]:
    """Columns and ``(n, c)`` values of every per-patch map of an Explanation."""
    n = expl.coords.shape[0]
    cols = ["x", "y", "patch_size"]
    values = [expl.coords[:, 0], expl.coords[:, 1], np.full(n, expl.patch_size)]
    if expl.attention is not None:
        cols.append("attention")
        values.append(expl.attention)
    for name, arr in expl.pathway_maps.items():
        cols.append(f"pathway:{name}")
        values.append(arr)
    if expl.memory is not None:
        names = expl.memory_names or [f"component{i}" for i in range(expl.memory.shape[0])]
        for name, row in zip(names, expl.memory):
            cols.append(f"memory:{name}")
            values.append(row)
    for name, arr in expl.clusters.items():
        cols.append(f"cluster:{name}")
        values.append(arr)
    return cols, np.stack([np.asarray(v, dtype=np.float64) for v in values], 1)


def predict_slide(
    checkpoint: str | os.PathLike,
    features: str | os.PathLike,
    out: str | os.PathLike,
    slide_id: str | None = None,
    device: str = "cpu",
    overwrite: bool = False,
) -> SlidePrediction:
    """Predict one slide and write one CSV row per patch plus a JSON summary beside it.

    Parameters
    ----------
    checkpoint : ``<stage>.safetensors`` of a slide-only model (a student or a WSI baseline).
    features : one slide's ``.zarr`` / ``.h5`` / ``.pt`` features, or a store / folder with
        ``slide_id``.
    out : the per-patch CSV: level-0 ``x``, ``y``, ``patch_size``, ``attention`` and every other
        map the model explains (``pathway:<name>``, ``memory:<component>``, ``cluster:<map>``);
        ``out`` with suffix ``.json`` gets the summary.
    device : ``"cpu"``, ``"cuda"``, ``"auto"``.
    overwrite : replace existing outputs (otherwise an existing file is an error).
    """
    from histokd_core.devices import resolve_device
    from histokd_core.workflows.inference import load_slide_model

    out = Path(out)
    _check_outputs(out, overwrite)
    dev = resolve_device(device)
    model, meta = load_slide_model(checkpoint, dev)
    return _predict(model, meta, checkpoint, features, slide_id, out, dev, overwrite)


def predict_cohort(
    checkpoint: str | os.PathLike,
    features: str | os.PathLike,
    out_dir: str | os.PathLike,
    slide_ids: Sequence[str] | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    cancel: CancelToken | threading.Event | Callable[[], bool] | None = None,
) -> list[SlidePrediction]:
    """Predict every slide of a feature store or folder with one model (loaded once).

    Writes ``out_dir/<slide_id>.csv`` + ``.json`` per slide (as :func:`predict_slide`) and
    ``out_dir/predictions.csv`` with one row per slide (``slide_id``, ``n_patches`` and ``risk``
    or ``prob_positive``). ``slide_ids`` defaults to every slide under ``features``; every
    output is checked before the first slide is predicted, so nothing is half replaced.
    """
    import pandas as pd

    from histokd_core.devices import resolve_device
    from histokd_core.features.store import available_slide_ids
    from histokd_core.io import atomic_path
    from histokd_core.workflows.inference import load_slide_model

    out_dir = Path(out_dir)
    token = CancelToken.of(cancel)
    ids = list(slide_ids) if slide_ids is not None else available_slide_ids(features)
    if not ids:
        raise DataError(f"{features}: no slide features to predict")
    for slide_id in ids:
        _check_outputs(out_dir / f"{slide_id}.csv", overwrite)
    _check_outputs(out_dir / "predictions.csv", overwrite)
    dev = resolve_device(device)
    model, meta = load_slide_model(checkpoint, dev)
    results = []
    for i, slide_id in enumerate(ids):
        token.check(f"prediction of {slide_id}")
        report(progress, i / len(ids), f"{slide_id} ({i + 1}/{len(ids)})")
        results.append(_predict(model, meta, checkpoint, features, slide_id,
                                out_dir / f"{slide_id}.csv", dev, overwrite))
    rows = [{"slide_id": r.summary["slide_id"], "n_patches": r.summary["n_patches"],
             **({"risk": r.summary["risk"]} if "risk" in r.summary
                else {"prob_positive": r.summary["probabilities"][-1]})} for r in results]
    with atomic_path(out_dir / "predictions.csv", overwrite=overwrite) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    report(progress, 1.0, f"{len(ids)} slides predicted into {out_dir}")
    return results


def _check_outputs(out: Path, overwrite: bool) -> None:
    from histokd_core.io import check_writable

    check_writable(out, overwrite=overwrite)
    check_writable(out.with_suffix(".json"), overwrite=overwrite)


def _predict(model, meta: dict, checkpoint, features, slide_id: str | None, out: Path, dev,
             overwrite: bool) -> SlidePrediction:
    import pandas as pd
    import torch

    from histokd_core.io import atomic_path, atomic_write_text
    from histokd_core.workflows.inference import read_slide_bag

    bag, _ = read_slide_bag(features, slide_id, meta, checkpoint)
    with torch.no_grad():
        expl = model.explain(bag.to(dev))
        pred = model.predict(bag.to(dev))
    summary = {
        "slide_id": bag.case_id,
        "checkpoint": str(checkpoint),
        "stage": meta["stage"],
        "method": meta["method"],
        "n_patches": int(bag.feats.shape[0]),
    }
    if model.task == "classification":
        summary["probabilities"] = pred.class_probabilities().tolist()
    else:
        summary["risk"] = pred.survival_risk()
    summary["pathway_scores"] = {k: float(v) for k, v in expl.pathway_scores.items()}
    summary["top_patches"] = {k: np.asarray(v).tolist() for k, v in expl.top_patches.items()}
    cols, values = explanation_table(expl)
    with atomic_path(out, overwrite=overwrite) as tmp:
        pd.DataFrame(values, columns=cols).astype({"x": int, "y": int, "patch_size": int}).to_csv(
            tmp, index=False
        )
    atomic_write_text(out.with_suffix(".json"), json.dumps(summary, indent=1) + "\n")
    log.info("patch maps written to %s", out)
    return SlidePrediction(summary, expl, out)
