"""Cohort-scale extraction: one dask.distributed task per slide.

By default a :class:`distributed.LocalCluster` of a few worker *processes* is started (one thread
each, so one slide per process); pass ``scheduler="tcp://host:8786"`` to use an existing cluster
whose workers see the same file system. Each worker builds the encoder once and reuses it for all
its slides. A slide that fails (corrupt file, missing mpp, ...) is reported in
:class:`CohortReport` and the others finish; finished slides are skipped on the next run
(:func:`histokd_core.features.extract_slide` is resumable).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from histokd_core.cluster import dask_client
from histokd_core.errors import DataError, HistoKDError
from histokd_core.features import lifeline

log = logging.getLogger(__name__)

#: ``progress(done, total, slide_id, ok)`` after each slide finishes.
CohortProgress = Callable[[int, int, str, bool], None]

_ENCODERS: dict[tuple[str, str], Any] = {}


@dataclass
class CohortReport:
    """What :func:`extract_cohort` did.

    Attributes
    ----------
    done : per finished slide, the ``extract_slide`` summary (slide_id, status, n_patches, timings).
    failed : slide path -> error message, for every slide that could not be extracted.
    """

    done: list[dict[str, Any]] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no slide failed."""
        return not self.failed

    def summary(self) -> str:
        """Human-readable multi-line summary (counts, then one line per failure)."""
        statuses = [d["status"] for d in self.done]
        degraded = {d["slide_id"]: d["bad_tiles"] for d in self.done if d.get("bad_tiles")}
        n_bad = sum(len(v) for tiles in degraded.values() for v in tiles.values())
        lines = [
            f"{len(self.done)} slide(s) extracted ({statuses.count('done')} new, "
            f"{statuses.count('resumed')} resumed, {statuses.count('skipped')} already complete), "
            f"{len(self.failed)} failed"
            + (f"; {len(degraded)} degraded ({n_bad} implausible patches left out)" if degraded else "")
        ]
        for slide_id, tiles in degraded.items():
            for mag, rows in tiles.items():
                where = ", ".join(f"({x}, {y})" for x, y, _ in rows[:8])
                lines.append(f"  DEGRADED {slide_id} {mag}: {len(rows)} patch(es) left out at "
                             f"level-0 {where}{' ...' if len(rows) > 8 else ''}: {rows[0][2]}")
        lines += [f"  FAILED {path}: {message}" for path, message in self.failed.items()]
        return "\n".join(lines)


def _worker_encoder(spec: str, device: str, backend: str = "auto"):
    from histokd_core.features.encoders import get_encoder

    key = (spec, device, backend)
    if key not in _ENCODERS:
        _ENCODERS[key] = get_encoder(spec, device=device, backend=backend)
    return _ENCODERS[key]


def extract_one(slide_path: str, root: str, spec: str, options: dict[str, Any]) -> dict[str, Any]:
    """Dask task: extract one slide; never raises for bad input (returns ``ok=False`` and the error)."""
    import dask

    from histokd_core.features.extract import extract_slide

    lifeline.watch_owner()
    torch_threads = options.pop("torch_threads", None)
    device = options.pop("device", "auto")
    backend = options.pop("backend", "auto")
    if torch_threads:
        import torch

        torch.set_num_threads(int(torch_threads))
    try:
        encoder = _worker_encoder(spec, device, backend)
        # slide reads are small dask graphs: run them here, not on the cluster's client
        with dask.config.set(scheduler="synchronous"):
            result = extract_slide(slide_path, root, encoder, **options)
    except HistoKDError as exc:
        return {"ok": False, "slide_path": slide_path, "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - report, let the other slides finish
        log.exception("unexpected error on %s", slide_path)
        return {"ok": False, "slide_path": slide_path, "error": f"{type(exc).__name__}: {exc}"}
    return {
        "ok": True,
        "slide_path": slide_path,
        "slide_id": result.slide_id,
        "group": result.group,
        "status": result.status,
        "n_patches": result.n_patches,
        "read_s": result.stats.read_s,
        "encode_s": result.stats.encode_s,
        "wall_s": result.stats.wall_s,
        "bad_tiles": result.bad_tiles,
    }


def extract_cohort(
    slides: Sequence[str | os.PathLike],
    root: str | os.PathLike,
    encoder: str = "efficientnet-lite0",
    magnifications: Sequence[str] = ("20x", "10x"),
    patch_px: int = 256,
    mpp: float | None = None,
    min_tissue: float = 0.5,
    batch_size: int | None = None,
    scheduler: str | None = None,
    n_workers: int = 2,
    loader_workers: int = 2,
    device: str = "auto",
    backend: str = "auto",
    overwrite: bool = False,
    progress: CohortProgress | None = None,
    stain: str = "none",
    stain_reference: str | os.PathLike | None = None,
    bad_tiles: str = "fail",
) -> CohortReport:
    """Extract features of many slides, one dask task per slide.

    Parameters
    ----------
    slides : slide files.
    root : feature store root (created if needed).
    encoder : encoder spec (built once per worker; see :func:`get_encoder`).
    magnifications, patch_px, mpp, min_tissue, batch_size, overwrite : as in :func:`extract_slide`.
    scheduler : address of an existing dask scheduler; ``None`` starts a LocalCluster.
    n_workers : worker processes of the LocalCluster (ignored with ``scheduler``).
    loader_workers : tile-reading processes per slide inside each worker.
    device : torch device for the encoder on the workers.
    backend : encoder runtime (``"auto"``, ``"torch"``, ``"openvino"``, ``"onnxruntime"``; see
        :func:`histokd_core.features.runtime.with_runtime`).
    progress : ``progress(done, total, slide_id, ok)`` after each slide.
    stain : ``"none"``, ``"macenko"`` or ``"reinhard"``: stain-normalise patches to one cohort
        reference, fitted once here (or loaded, see
        :func:`histokd_core.features.stain.cohort_reference`) and stored at the store root and in
        every slide's attrs.
    stain_reference : a reference to use instead of fitting one (e.g. the training cohort's
        ``stain_reference.json`` or the trained checkpoint, when extracting an external cohort).
    bad_tiles : ``"fail"`` (default: a slide with implausible decoded tiles fails, listing them)
        or ``"skip"`` (those patches are left out, the slide is marked degraded and listed in
        :meth:`CohortReport.summary`); see :func:`extract_slide`.

    A store whose slides were extracted with another stain setting or preprocessing version
    (:func:`histokd_core.features.store.check_store`) is refused before anything is extracted;
    with ``overwrite`` those of its slides that are in ``slides`` are extracted again.

    Returns
    -------
    CohortReport with the finished slides and the failures (the run never stops at a bad slide).
    """
    from distributed import as_completed

    from histokd_core.features.encoders import check_spec
    from histokd_core.features.slide_features import mag_to_mpp, slide_id_of
    from histokd_core.features.stain import resolve_reference, save_reference, stain_id
    from histokd_core.features.store import PREPROCESSING_VERSION, check_store

    if not slides:
        raise DataError("extract: no slide given")
    check_spec(encoder)
    paths = [str(Path(s).expanduser().resolve()) for s in slides]
    ids = [slide_id_of(p) for p in paths]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise DataError(f"extract: several slides share the id {', '.join(duplicates)}; their features would collide")
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DataError(f"extract: output {root} exists and is not a folder")
    root.mkdir(parents=True, exist_ok=True)
    reference = resolve_reference(
        paths, stain, root, stain_reference, overwrite, target_mpp=mag_to_mpp(magnifications[0]),
        patch_px=patch_px, mpp=mpp,
    )
    check_store(root, {"stain": stain_id(reference), "preprocessing": PREPROCESSING_VERSION}, ids, overwrite)
    save_reference(root, reference, overwrite)
    n_workers = max(1, min(int(n_workers), len(paths)))
    threads = max(1, (os.cpu_count() or 1) // n_workers) if not scheduler else None
    options = dict(
        magnifications=tuple(magnifications),
        patch_px=patch_px,
        mpp=mpp,
        min_tissue=min_tissue,
        batch_size=batch_size,
        num_workers=loader_workers,
        overwrite=overwrite,
        torch_threads=threads,
        device=device,
        stain=reference,
        backend=backend,
        bad_tiles=bad_tiles,
    )
    report = CohortReport()
    client, cluster = dask_client(scheduler, n_workers)
    try:
        futures = {
            client.submit(extract_one, p, str(root.resolve()), encoder, dict(options), key=f"extract-{i}-{slide_id_of(p)}", pure=False): p
            for i, p in enumerate(paths)
        }
        for done, future in enumerate(as_completed(futures), start=1):
            path = futures[future]
            try:
                outcome = future.result()
            except Exception as exc:  # noqa: BLE001 - a killed worker, not bad input
                outcome = {"ok": False, "slide_path": path, "error": f"worker failed: {type(exc).__name__}: {exc}"}
            if outcome["ok"]:
                report.done.append(outcome)
            else:
                report.failed[path] = outcome["error"]
                log.error("%s: %s", path, outcome["error"])
            if progress is not None:
                progress(done, len(paths), slide_id_of(path), bool(outcome["ok"]))
    except KeyboardInterrupt:
        # the cluster now kills busy workers; their complaints are expected, not news
        logging.getLogger("distributed").setLevel(logging.CRITICAL)
        raise
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    report.done.sort(key=lambda d: d["slide_id"])
    return report
