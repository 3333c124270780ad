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
    from histokd_core.export import PatchClasses
    from histokd_core.methods.base import Explanation

log = logging.getLogger(__name__)


@dataclass
class SlidePrediction:
    """What :func:`predict_slide` wrote: the ``summary`` (``slide_id``, ``stage``, ``method``,
    ``n_patches``, ``risk`` or ``probabilities``, ``pathway_scores``, ``top_patches``, ``units`` of
    the CSV's score columns), the
    model's :class:`Explanation`, and the CSV path (the JSON summary is beside it)."""

    summary: dict
    explanation: Explanation
    path: Path

    def line(self) -> str:
        """``<slide_id>\\trisk=<r>`` or ``<slide_id>\\tprobability=<p>`` (positive class)."""
        if "risk" in self.summary:
            return f"{self.summary['slide_id']}\trisk={self.summary['risk']:.4f}"
        return f"{self.summary['slide_id']}\tprobability={self.summary['probabilities'][-1]:.4f}"


#: the unit of each per-patch score column, written into the JSON summaries (a contribution's
#: starts with the model's unit, :func:`column_units`).
COLUMN_UNITS = {
    "attention": "share of the slide's attention (the patches sum to 1)",
    "contribution": "the patch's share of that model output, in its units (the patches sum to it "
                    "minus the model's bias; > 0 raises it)",
}


def column_units(expl: Explanation, cols: Sequence[str]) -> dict[str, str]:
    """The unit of each score column in ``cols`` (``explanation_table(expl)``'s) that has one
    (:data:`COLUMN_UNITS`; the contribution's led by the model's ``expl.contribution_unit``,
    e.g. ``"risk contribution (log-hazard): the patch's share of that model output, ..."``; a
    signed pathway map's: ``expl.pathway_unit``)."""
    units = {c: COLUMN_UNITS[c] for c in cols if c in COLUMN_UNITS}
    if "contribution" in units:
        from histokd_core.explain.colour import UNITS

        what = expl.contribution_unit or UNITS["contribution"]
        units["contribution"] = f"{what}: {units['contribution']}"
    for name in expl.pathway_maps if expl.pathway_unit is not None else ():
        units[f"pathway:{name}"] = (
            f"{expl.pathway_unit}: the patch's share of the pathway's predicted activity (the "
            "patches sum to it; > 0 raises it)")
    return units


def explanation_table(expl: Explanation) -> tuple[list[str], np.ndarray]:
    """Columns and ``(n, c)`` values of every per-patch map of an Explanation."""
    n = expl.coords.shape[0]
    cols = ["x", "y", "patch_size"]
    values = [expl.coords[:, 0], expl.coords[:, 1], np.full(n, expl.patch_size)]
    if expl.attention is not None:
        cols.append("attention")
        values.append(expl.attention)
    if expl.contribution is not None:
        cols.append("contribution")
        values.append(expl.contribution)
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
    qupath: str | os.PathLike | None = None,
) -> SlidePrediction:
    """Predict one slide and write one CSV row per patch plus a JSON summary beside it.

    Parameters
    ----------
    checkpoint : ``<stage>.safetensors`` of a slide-only model (a student or a WSI baseline).
    features : one slide's ``.zarr`` / ``.h5`` / ``.pt`` features, or a store / folder with
        ``slide_id``.
    out : the per-patch CSV: level-0 ``x``, ``y``, ``patch_size``, ``attention`` and every other
        map the model explains (``contribution``: the patch's share of the model's output, in the
        unit the summary's ``units`` give; ``pathway:<name>``, ``memory:<component>``,
        ``cluster:<map>``);
        ``out`` with suffix ``.json`` gets the summary.
    device : ``"cpu"``, ``"cuda"``, ``"auto"``.
    overwrite : replace existing outputs (otherwise an existing file is an error).
    qupath : also write a QuPath GeoJSON with one detection per patch (level-0 square, every map
        in ``measurements``, the first cluster map as class with colour;
        :func:`histokd_core.export.write_detections`).
    """
    from histokd_core.devices import resolve_device
    from histokd_core.io import check_writable
    from histokd_core.workflows.inference import load_slide_model

    out = Path(out)
    _check_outputs(out, overwrite)
    if qupath is not None:
        check_writable(qupath, overwrite=overwrite)
    dev = resolve_device(device)
    model, meta = load_slide_model(checkpoint, dev)
    pred = _predict(model, meta, checkpoint, features, slide_id, out, dev, overwrite)
    if qupath is not None:
        write_qupath(pred.explanation, qupath, overwrite=overwrite)
    return pred


def explanation_detections(
    expl: Explanation, cluster_map: str | None = None
) -> tuple[dict[str, np.ndarray], PatchClasses | None]:
    """Measurements and classes of an :class:`~histokd_core.methods.base.Explanation`'s patches.

    Measurements: ``attention`` (sums to 1 over the slide), ``contribution`` (the patch's share
    of the model's output, in ``expl.contribution_unit``; sums to it minus the model's bias),
    ``pathway:<name>``, ``memory:<component>`` and ``cluster:<map>`` (the id as a number). Classes: the cluster map
    ``cluster_map`` (default the first one, e.g. ``"tumor"``) as ``"<map> cluster <id>"`` with the
    viewer's cluster colours; None when the model has no cluster map.
    """
    from histokd_core.explain import label_color
    from histokd_core.export import PatchClasses

    meas: dict[str, np.ndarray] = {}
    if expl.attention is not None:
        meas["attention"] = np.asarray(expl.attention, dtype=np.float64)
    if expl.contribution is not None:
        meas["contribution"] = np.asarray(expl.contribution, dtype=np.float64)
    for name, arr in expl.pathway_maps.items():
        meas[f"pathway:{name}"] = np.asarray(arr, dtype=np.float64)
    if expl.memory is not None:
        names = expl.memory_names or [f"component{i}" for i in range(expl.memory.shape[0])]
        for name, row in zip(names, expl.memory):
            meas[f"memory:{name}"] = np.asarray(row, dtype=np.float64)
    for name, arr in expl.clusters.items():
        meas[f"cluster:{name}"] = np.asarray(arr, dtype=np.float64)
    classes = None
    if expl.clusters:
        key = cluster_map or next(iter(expl.clusters))
        if key not in expl.clusters:
            raise DataError(f"cluster map {key!r} not in the model's maps {sorted(expl.clusters)}")
        ids = np.asarray(expl.clusters[key]).astype(np.int64)
        colors = {int(k): label_color(int(k)) for k in np.unique(ids) if k >= 0}
        classes = PatchClasses(ids, colors=colors, prefix=f"{key} cluster")
    return meas, classes


def write_qupath(expl: Explanation, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """One QuPath detection per patch of ``expl`` (see :func:`histokd_core.export.write_detections`)."""
    from histokd_core.export import write_detections

    measurements, classes = explanation_detections(expl)
    written = write_detections(path, expl.coords, expl.patch_size, measurements, classes,
                               overwrite=overwrite)
    log.info("%d QuPath detections written to %s", len(expl.coords), written)
    return written


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
    summary["units"] = column_units(expl, cols)
    with atomic_path(out, overwrite=overwrite) as tmp:
        pd.DataFrame(values, columns=cols).astype({"x": int, "y": int, "patch_size": int}).to_csv(
            tmp, index=False
        )
    atomic_write_text(out.with_suffix(".json"), json.dumps(summary, indent=1) + "\n")
    log.info("patch maps written to %s", out)
    return SlidePrediction(summary, expl, out)
