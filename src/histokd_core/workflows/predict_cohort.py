"""Cohort maps on dask.distributed: every slide of a cohort through a run's model, one task per slide.

:func:`predict_cohort_maps` (``histokd predict --run RUN --cohort C --features F --maps OUT``)
writes, per slide, into ``OUT/<slide_id>/``::

    maps.csv       one row per patch: x, y, patch_size and every map (as ``histokd predict``)
    maps.json      prediction, pathway ranking, top patches, fold and checkpoint
    maps.zarr/     coords (n, 2) int64, one (n,) float array per map, and each map painted on the
                   slide's patch grid under ``grid/<map>`` (attrs origin_xy, cell, footprint)
    maps.geojson   one QuPath detection per patch (every map in ``measurements``)
    <map>.png      the map on one colour scale shared by every slide (cohort-wide), with its unit
    done.json      written last: the slide is finished (a rerun skips it)

and ``OUT/summary.csv`` (one row per slide: status ``done`` / ``skipped`` / ``failed``, the reason
of a failure, fold, prediction, seconds) and ``OUT/colour_scale.json`` (the cohort-wide range of
each rendered map). Each slide is predicted with the fold model that held its case out (its test
fold, read from the run's ``fold_<k>/predictions.csv``); a case no fold tested (an external
cohort) uses the first fold's model and is marked ``out_of_fold = False``. The colour scale is
pooled over the out-of-fold slides (the run's test cases), or over all slides when none is.

Predictions run as one dask task per slide on a :class:`distributed.LocalCluster` (or an existing
scheduler's workers, which must see the same files); the PNGs are a second round of per-slide
tasks once the scale is known. A failing slide is reported with its reason and never stops the
others.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histokd_core.cancel import CancelToken
from histokd_core.errors import DataError
from histokd_core.progress import ProgressFn, report

log = logging.getLogger(__name__)

_MODELS: dict[tuple[str, str], Any] = {}
#: seconds between two looks at the running slides (and at the cancel token).
POLL_S = 0.1


@dataclass
class CohortMaps:
    """What :func:`predict_cohort_maps` did.

    Attributes
    ----------
    rows : one dict per slide (the rows of ``summary.csv``).
    out : the output folder; scales : map name -> the cohort-wide ``MapScale`` used for PNGs.
    """

    rows: list[dict[str, Any]]
    out: Path
    scales: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["status"] == "failed"]

    @property
    def ok(self) -> bool:
        """True when no slide failed."""
        return not self.failed

    def summary(self) -> str:
        """Counts, then one line per failed slide with its reason."""
        status = [r["status"] for r in self.rows]
        lines = [f"{len(self.rows)} slide(s): {status.count('done')} predicted, "
                 f"{status.count('skipped')} already done, {status.count('failed')} failed "
                 f"-> {self.out / 'summary.csv'}"]
        lines += [f"  FAILED {r['slide_id']}: {r['reason']}" for r in self.failed]
        return "\n".join(lines)


def map_kind(name: str, pathway_unit: str | None = None) -> str:
    """Colour kind of a map column: attention and pathway maps (attention over patches, sum 1)
    are ``"attention"``; a per-patch contribution, and pathway maps that state a
    ``pathway_unit`` (signed contributions to a pathway's predicted activity), are
    ``"contribution"``; memory activations are ``"similarity"``."""
    if name.startswith("pathway:"):
        return "contribution" if pathway_unit else "attention"
    if name == "attention":
        return "attention"
    if name == "contribution":
        return "contribution"
    if name.startswith("memory:"):
        return "similarity"
    raise DataError(f"map {name!r} has no colour scale (cluster maps are classes, not scores)")


def run_of_checkpoint(checkpoint: str | os.PathLike) -> tuple[Path, str] | None:
    """``(run directory, stage)`` of a checkpoint saved in a run (``RUN/fold_<k>/<stage>.safetensors``
    beside ``RUN/config.yaml``), None for a checkpoint outside a run."""
    path = Path(checkpoint)
    run = path.parent.parent
    if (path.suffix != ".safetensors" or not path.parent.name.startswith("fold_")
            or not (run / "config.yaml").is_file()):
        return None
    return run, path.name[: -len(".safetensors")]


def _fold_of_cases(run: Path, folds: Sequence[int], stage: str) -> dict[str, int]:
    import pandas as pd

    out: dict[str, int] = {}
    for fold in folds:
        path = run / f"fold_{fold}" / "predictions.csv"
        if not path.is_file():
            continue
        table = pd.read_csv(path, dtype={"case_id": str})
        for case in table.loc[table["model"] == stage, "case_id"]:
            out.setdefault(str(case), int(fold))
    return out


def _stage(run: Path, folds: Sequence[int], stage: str | None) -> str:
    fold_dir = run / f"fold_{folds[0]}"
    found = sorted(p.name[: -len(".safetensors")] for p in fold_dir.glob("*.safetensors")
                   if not p.name.endswith(".state.safetensors"))
    if stage is not None:
        if stage not in found:
            raise DataError(f"{fold_dir}: no {stage}.safetensors (trained stages: {', '.join(found)})")
        return stage
    import torch

    from histokd_core.train import load_model

    for name in dict.fromkeys(("student", *found)):
        if name in found and not load_model(fold_dir / f"{name}.safetensors", torch.device("cpu"))[0].needs_omics:
            return name
    raise DataError(f"{run}: no trained slide-only model in {fold_dir}")


def _model(checkpoint: str, device: str):
    """The checkpoint's model, loaded once per worker process."""
    from histokd_core.devices import resolve_device
    from histokd_core.workflows.inference import load_slide_model

    key = (checkpoint, device)
    if key not in _MODELS:
        dev = resolve_device(device)
        model, meta = load_slide_model(checkpoint, dev)
        _MODELS[key] = (model, meta, dev)
    return _MODELS[key]


def predict_one(job: dict[str, Any]) -> dict[str, Any]:
    """One slide: predict, write maps.csv/.json/.zarr/.geojson and done.json; never raises.

    ``job`` holds ``slide_id``, ``case_id``, ``fold``, ``out_of_fold``, ``checkpoint``,
    ``features``, ``slide_dir``, ``device``, ``threads``. Returns the summary row.
    """
    import torch

    from histokd_core.io import write_json
    from histokd_core.workflows.inference import explain_bag, read_slide_bag
    from histokd_core.workflows.predict import column_units, explanation_table, write_qupath

    start = time.perf_counter()
    row = {k: job[k] for k in ("slide_id", "case_id", "fold", "out_of_fold")}
    slide_dir = Path(job["slide_dir"])
    done = slide_dir / "done.json"
    try:
        if done.is_file():
            previous = json.loads(done.read_text())
            if previous.get("checkpoint") == job["checkpoint"]:
                return {**row, **previous["row"], "status": "skipped", "reason": "",
                        "seconds": round(time.perf_counter() - start, 3)}
        if job.get("threads"):
            torch.set_num_threads(int(job["threads"]))
        model, meta, dev = _model(job["checkpoint"], job["device"])
        bag, _ = read_slide_bag(job["features"], job["slide_id"], meta, job["checkpoint"])
        expl = explain_bag(model, bag, dev)
        slide_dir.mkdir(parents=True, exist_ok=True)
        cols, values = explanation_table(expl)
        _write_csv(slide_dir / "maps.csv", cols, values)
        _write_zarr(slide_dir / "maps.zarr", expl, cols, values)
        write_qupath(expl, slide_dir / "maps.geojson", overwrite=True)
        pred: dict[str, Any] = {"n_patches": int(len(expl.coords))}
        if expl.risk is not None:
            pred["risk"] = float(expl.risk)
        if expl.probability is not None:
            pred["prob_positive"] = float(expl.probability)
        summary = {**row, **pred, "checkpoint": job["checkpoint"], "stage": meta.get("stage"),
                   "method": meta.get("method"),
                   "pathway_scores": {k: float(v) for k, v in expl.pathway_scores.items()},
                   "top_patches": {k: np.asarray(v).tolist() for k, v in expl.top_patches.items()},
                   "units": column_units(expl, cols)}
        write_json(slide_dir / "maps.json", summary)
        write_json(done, {"checkpoint": job["checkpoint"], "row": pred})
        return {**row, **pred, "status": "done", "reason": "",
                "seconds": round(time.perf_counter() - start, 3)}
    except Exception as exc:  # noqa: BLE001 - any failure is this slide's, reported with its reason
        log.error("%s: %s: %s", job["slide_id"], type(exc).__name__, exc)
        return {**row, "status": "failed", "reason": f"{type(exc).__name__}: {exc}",
                "seconds": round(time.perf_counter() - start, 3)}


def _write_csv(path: Path, cols: list[str], values: np.ndarray) -> None:
    import pandas as pd

    from histokd_core.io import atomic_path

    with atomic_path(path) as tmp:
        pd.DataFrame(values, columns=cols).astype({"x": int, "y": int, "patch_size": int}).to_csv(
            tmp, index=False)


def _write_zarr(path: Path, expl, cols: list[str], values: np.ndarray) -> None:
    import zarr

    from histokd_core.explain import rasterize
    from histokd_core.io import atomic_path

    maps = [c for c in cols if c not in ("x", "y", "patch_size")]
    attrs = {"patch_size_level0": int(expl.patch_size), "maps": maps,
             "coords": "level-0 top-left (x, y) px of each patch"}
    if expl.contribution_unit is not None:
        attrs["contribution_unit"] = expl.contribution_unit
    if expl.pathway_unit is not None:
        attrs["pathway_unit"] = expl.pathway_unit
    with atomic_path(path) as tmp:
        g = zarr.open_group(tmp, mode="w", attributes=attrs)
        g.create_array("coords", data=np.asarray(expl.coords, dtype=np.int64))
        grids = g.create_group("grid")
        for j, name in enumerate(maps, start=3):
            key = name.replace("/", "_")
            g.create_array(key, data=values[:, j].astype(np.float32))
            r = rasterize(expl.coords, values[:, j], expl.patch_size)
            arr = grids.create_array(key, data=r.grid.astype(np.float32))
            arr.attrs.put({"map": name, "origin_xy": list(r.origin_xy), "cell_level0": r.cell,
                           "footprint_level0": r.footprint, "mode": r.mode})


def _read_map(slide_dir: Path, name: str) -> np.ndarray | None:
    import zarr

    g = zarr.open_group(slide_dir / "maps.zarr", mode="r")
    key = name.replace("/", "_")
    return np.asarray(g[key][:], dtype=np.float64) if key in g else None


def render_one(slide_dir: str, slide_id: str, scales: dict[str, Any]) -> dict[str, Any]:
    """Draw one slide's maps as PNGs on the cohort-wide scales; returns ``{"ok", "error"}``."""
    try:
        import zarr

        from histokd_core.explain.colour import map_scale, to_display

        g = zarr.open_group(Path(slide_dir) / "maps.zarr", mode="r")
        coords = np.asarray(g["coords"][:])
        for name, cohort in scales.items():
            key = name.replace("/", "_")
            if key not in g:
                continue
            display = to_display(np.asarray(g[key][:], dtype=np.float64), cohort.kind, len(coords))
            scale = map_scale(display, cohort.kind, mode="cohort", cohort=cohort)
            _png(Path(slide_dir) / f"{key.replace(':', '_')}.png", coords,
                 int(g.attrs["patch_size_level0"]), display, scale, f"{slide_id}: {name}")
        return {"ok": True, "error": ""}
    except Exception as exc:  # noqa: BLE001 - reported per slide
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def _png(path: Path, coords, patch_size: int, display, scale, title: str) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from histokd_core.explain import rasterize
    from histokd_core.io import atomic_write_bytes

    r = rasterize(coords, display, patch_size)
    rows, cols = r.shape
    pad = (r.footprint - r.cell) / 2.0
    x0, y0 = r.origin_xy[0] + pad, r.origin_xy[1] + pad
    cmap = ListedColormap(scale.colormap, name=scale.colormap_name)
    fig, ax = plt.subplots(figsize=(6.0, max(3.0, 6.0 * rows / max(cols, 1))), dpi=100)
    ax.set_facecolor("white")
    shown = ax.imshow(np.ma.masked_invalid(r.grid), cmap=cmap, vmin=scale.low, vmax=scale.high,
                      extent=(x0, x0 + cols * r.cell, y0 + rows * r.cell, y0),
                      interpolation="nearest")
    ax.set_xlabel("x (level-0 px)")
    ax.set_ylabel("y (level-0 px)")
    ax.set_title(title + (f"\n{scale.note}" if scale.note else ""), fontsize=8)
    bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label(scale.label, fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _row(job: dict[str, Any], status: str, reason: str) -> dict[str, Any]:
    """A summary row for a slide that produced nothing (failed or cancelled)."""
    return {k: job[k] for k in ("slide_id", "case_id", "fold", "out_of_fold")} | {
        "status": status, "reason": reason}


def _finished(futures, token: CancelToken) -> Iterator[Any]:
    """Yield each future as it finishes; on cancel, cancel the pending ones and stop within
    :data:`POLL_S` (a slide being predicted is abandoned: the cluster closes under it)."""
    pending = set(futures)
    while pending:
        if token.cancelled():
            for future in pending:
                future.cancel()
            return
        finished = [f for f in pending if f.done()]
        if not finished:
            time.sleep(POLL_S)
        for future in finished:
            pending.discard(future)
            yield future


def pooled_scales(slide_dirs: Sequence[Path], names: Sequence[str]) -> dict[str, Any]:
    """The cohort-wide colour scale of each map in ``names``, pooled over the slides' ``maps.zarr``.

    Parameters
    ----------
    slide_dirs : ``OUT/<slide_id>`` folders written by :func:`predict_one`.
    names : map names (``"attention"``, ``"contribution"``, ``"pathway:<name>"``,
        ``"memory:<component>"``); a map no slide has is left out.

    Returns
    -------
    map name -> :class:`~histokd_core.explain.colour.MapScale` (``mode="cohort"``, its range from
    :func:`~histokd_core.explain.colour.cohort_scale` over every patch of those slides, in display
    units: attention and pathway maps as multiples of uniform; a contribution, and signed pathway
    maps, in the model's unit, :func:`contribution_unit`).
    """
    from histokd_core.explain.colour import cohort_scale, to_display

    scales: dict[str, Any] = {}
    pathway_unit = contribution_unit(slide_dirs, "pathway_unit")
    for name in names:
        kind = map_kind(name, pathway_unit)
        values = [v for d in slide_dirs if (v := _read_map(d, name)) is not None]
        unit = (None if kind != "contribution" else pathway_unit if name.startswith("pathway:")
                else contribution_unit(slide_dirs))
        if values:
            scales[name] = cohort_scale([to_display(v, kind, len(v)) for v in values], kind,
                                        unit=unit)
    return scales


def contribution_unit(slide_dirs: Sequence[Path], attr: str = "contribution_unit") -> str | None:
    """The contribution unit the model stated for the slides' ``maps.zarr`` (``attr``:
    ``"contribution_unit"``, or ``"pathway_unit"`` for signed pathway maps; one model, one unit;
    a class-wise unit, e.g. the predicted class's centred logit, can differ between slides, and
    then the scale says so); None when none states one."""
    import zarr

    stated = (zarr.open_group(d / "maps.zarr", mode="r").attrs.get(attr)
              for d in slide_dirs if (d / "maps.zarr").is_dir())
    units = sorted({u for u in stated if u})
    if len(units) > 1:
        return f"contribution ({len(units)} units, one per slide: see its maps.json)"
    return units[0] if units else None


def run_colour_scales(maps_dir: str | os.PathLike, names: Sequence[str] | None = None) -> dict[str, Any]:
    """The cohort-wide colour scales of a finished cohort-maps folder, for any of its maps.

    Reads ``maps_dir/summary.csv`` (written by :func:`predict_cohort_maps`) and pools the slides
    done or skipped there, out-of-fold ones only when there are any (the run's test cases), so a
    single slide analysed later is drawn on the same scale as every slide of the run.

    Parameters
    ----------
    maps_dir : the ``--maps`` folder of ``histokd predict --run``.
    names : maps wanted (default: every scored map of the first pooled slide: attention, the
        risk contribution, each pathway, each memory component).

    Returns
    -------
    map name -> ``MapScale``; :class:`DataError` when the folder holds no finished slide.
    """
    import pandas as pd
    import zarr

    maps_dir = Path(maps_dir)
    summary = maps_dir / "summary.csv"
    if not summary.is_file():
        raise DataError(f"cohort colour scale: {maps_dir} holds no cohort maps (no summary.csv); "
                        "predict all slides of the run into it first")
    table = pd.read_csv(summary, dtype={"slide_id": str})
    ok = table[table["status"].isin(["done", "skipped"])]
    held_out = ok[ok["out_of_fold"].astype(bool)] if "out_of_fold" in ok else ok.iloc[:0]
    pool = [maps_dir / s for s in (held_out if len(held_out) else ok)["slide_id"]]
    pool = [d for d in pool if (d / "maps.zarr").is_dir()]
    if not pool:
        raise DataError(f"cohort colour scale: no finished slide in {summary}")
    if names is None:
        attrs = zarr.open_group(pool[0] / "maps.zarr", mode="r").attrs
        names = [n for n in attrs["maps"] if not n.startswith("cluster:")]
    return pooled_scales(pool, names)


def check_cohort_scales(scales: dict[str, Any], expl, maps_dir: str | os.PathLike) -> None:
    """Raise :class:`DataError` when ``scales`` (:func:`run_colour_scales` of ``maps_dir``) lack a
    scored map of the Explanation ``expl`` (its slides were predicted with another model)."""
    from histokd_core.workflows.predict import explanation_table

    names = [c for c in explanation_table(expl)[0][3:] if not c.startswith("cluster:")]
    missing = [n for n in names if n not in scales]
    if missing:
        raise DataError(f"cohort colour scale: the cohort maps in {maps_dir} have no {missing[0]!r} map "
                        f"({len(missing)} of {len(names)} missing; made with another model?): predict all "
                        "slides of this run with this checkpoint")


def _start_client(scheduler: str | None, n_workers: int, token: CancelToken):
    """:func:`~histokd_core.cluster.dask_client`, or None when cancelled while the cluster starts
    (it is then closed once up). From the main thread (the CLI, whose Ctrl-C handling needs the
    workers started there) a plain call; elsewhere (a GUI's worker thread) it starts in a helper
    thread, so a cancel never waits for the worker processes to come up."""
    from histokd_core.cluster import dask_client

    if threading.current_thread() is threading.main_thread():
        return dask_client(scheduler, n_workers)
    box: dict[str, Any] = {}

    def start():
        try:
            box["started"] = dask_client(scheduler, n_workers)
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            box["error"] = exc

    starter = threading.Thread(target=start, name="histokd-start-cluster", daemon=True)
    starter.start()
    while starter.is_alive() and not token.cancelled():
        starter.join(POLL_S)
    if starter.is_alive():
        def close_when_up():
            starter.join()
            if "started" in box:
                _close(*box["started"], behind=False)

        closer = threading.Thread(target=close_when_up, name="histokd-close-cluster", daemon=True)
        closer.start()
        atexit.register(closer.join, 30)
        return None
    if "error" in box:
        raise box["error"]
    return box["started"]


def _close(client, cluster, behind: bool) -> None:
    """Close the client and the LocalCluster (None for an existing scheduler); ``behind``: the
    cluster in a background thread (a busy worker takes seconds to stop), which finishes before
    distributed's own exit hook (registered earlier) runs."""
    client.close()
    if cluster is None:
        return
    if not behind:
        cluster.close()
        return
    closer = threading.Thread(target=cluster.close, name="histokd-close-cluster", daemon=True)
    closer.start()
    atexit.register(closer.join, 30)


def predict_cohort_maps(
    run: str | os.PathLike,
    cohort: str | os.PathLike,
    features: str | os.PathLike,
    out: str | os.PathLike,
    *,
    stage: str | None = None,
    png_maps: Sequence[str] = ("attention", "contribution"),
    label_column: str | None = None,
    scheduler: str | None = None,
    n_workers: int = 2,
    device: str = "cpu",
    progress: ProgressFn | None = None,
    cancel: CancelToken | threading.Event | Callable[[], bool] | None = None,
) -> CohortMaps:
    """Predict and draw every slide's maps of a cohort with a trained run, one dask task per slide.

    Parameters
    ----------
    run : run directory of ``histokd train`` (``config.yaml``, ``fold_<k>/<stage>.safetensors``).
    cohort : cohort table (``case_id``, ``slide_id``, ...), the run's own or an external one.
    features : feature store / folder holding every slide's features.
    out : output folder (see the module docstring for its layout); reruns resume in it.
    stage : the model (default ``student`` when trained, else the first slide-only stage).
    png_maps : maps drawn as PNG on a cohort-wide scale (``"attention"``, ``"contribution"``,
        ``"pathway:<name>"``, ``"memory:<component>"``); every map is in the CSV, zarr and
        GeoJSON anyway.
    label_column : the cohort's label column for classification runs.
    scheduler : address of an existing dask scheduler; None starts a LocalCluster of
        ``n_workers`` processes (one thread each).
    device : torch device on the workers.
    progress : ``"message"`` events after each slide; cancel : checked every :data:`POLL_S` s
        (slides not finished are abandoned and reported as failed with the reason "cancelled";
        finished slides keep their maps; a run cancelled before its predictions finished draws
        no PNG and writes no colour_scale.json).

    Returns
    -------
    :class:`CohortMaps` (``ok`` is False when any slide failed; ``summary.csv`` lists every slide).
    """
    import pandas as pd

    from histokd_core.cohort import load_cohort
    from histokd_core.io import atomic_path, write_json
    from histokd_core.train.cv import read_run_config

    run, out = Path(run), Path(out)
    token = CancelToken.of(cancel)
    cfg = read_run_config(run)
    folds = [int(f) for f in cfg["folds"]]
    stage = _stage(run, folds, stage)
    for name in png_maps:
        map_kind(name)
    table = load_cohort(cohort, task=cfg["task"], label_column=label_column).table
    case_fold = _fold_of_cases(run, folds, stage)
    if out.exists() and not out.is_dir():
        raise DataError(f"--maps {out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    n_workers = max(1, min(int(n_workers), len(table)))
    threads = max(1, (os.cpu_count() or 1) // n_workers) if not scheduler else None
    jobs = []
    for slide_id, case_id in zip(table["slide_id"].astype(str), table["case_id"].astype(str)):
        fold = case_fold.get(case_id, folds[0])
        jobs.append({"slide_id": slide_id, "case_id": case_id, "fold": fold,
                     "out_of_fold": case_id in case_fold,
                     "checkpoint": str((run / f"fold_{fold}" / f"{stage}.safetensors").resolve()),
                     "features": str(Path(features).resolve()),
                     "slide_dir": str((out / slide_id).resolve()), "device": device,
                     "threads": threads})
    rows: dict[str, dict] = {}
    scales: dict[str, Any] = {}
    report(progress, 0.0, f"starting {n_workers} dask worker(s) for {len(jobs)} slide(s)"
           if not scheduler else f"connecting to {scheduler}")
    ok: list[dict[str, Any]] = []
    started = _start_client(scheduler, n_workers, token)
    if started is not None:
        client, cluster = started
        try:
            futures = {client.submit(predict_one, job, key=f"maps-{i}-{job['slide_id']}", pure=False): job
                       for i, job in enumerate(jobs)}
            for future in _finished(futures, token):
                job = futures[future]
                try:
                    row = future.result()
                except Exception as exc:  # noqa: BLE001 - a killed worker, not bad input
                    row = _row(job, "failed", f"worker failed: {type(exc).__name__}: {exc}")
                rows[job["slide_id"]] = row
                report(progress, 0.9 * len(rows) / len(jobs),
                       f"{job['slide_id']}: {row['status']} ({len(rows)}/{len(jobs)})")
            ok = [j for j in jobs
                  if j["slide_id"] in rows and rows[j["slide_id"]]["status"] in ("done", "skipped")]
            if not token.cancelled():
                pool = [j for j in ok if j["out_of_fold"]] or ok
                scales = pooled_scales([Path(j["slide_dir"]) for j in pool], png_maps)
            if scales and ok:
                report(progress, 0.9, f"drawing {len(ok)} slide(s) on the cohort-wide colour scale")
                renders = {client.submit(render_one, j["slide_dir"], j["slide_id"], scales,
                                         key=f"png-{i}-{j['slide_id']}", pure=False): j
                           for i, j in enumerate(ok)}
                for future in _finished(renders, token):
                    j = renders[future]
                    outcome = future.result()
                    if not outcome["ok"]:
                        rows[j["slide_id"]].update(status="failed", reason=f"PNG: {outcome['error']}")
        finally:
            _close(client, cluster, behind=token.cancelled())
    for job in jobs:  # cancelled: a slide not finished is reported, never dropped
        rows.setdefault(job["slide_id"], _row(job, "failed", "cancelled"))
    if scales:
        write_json(out / "colour_scale.json", {
            name: {"kind": s.kind, "unit": s.unit, "low": s.low, "high": s.high, "mode": s.mode,
                   "pooled_over": "out-of-fold slides" if any(j["out_of_fold"] for j in ok) else "all slides"}
            for name, s in scales.items()})
    ordered = [rows[j["slide_id"]] for j in jobs]
    with atomic_path(out / "summary.csv") as tmp:
        pd.DataFrame(ordered).to_csv(tmp, index=False)
    result = CohortMaps(ordered, out, scales)
    report(progress, 1.0, result.summary().splitlines()[0])
    return result
