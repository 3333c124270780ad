"""Extract patch features of one slide into the feature store, resumably.

Tiles are read by a torch ``DataLoader`` whose worker processes each open the slide once and read
patches in parallel with the model; the main process only encodes. For every requested
magnification :func:`extract_slide` builds a tissue patch grid
(:func:`histokd_core.slide.patch_grid`), encodes it and writes it atomically
(:func:`histokd_core.features.store.write_slide_features`). Re-running skips a slide whose stored
attributes (encoder id, weights hash, patch size, stain normalisation, preprocessing version)
match and that is complete; after a crash only the magnifications not yet written are computed.
Within a magnification, a cancelled or failed extraction keeps the patches encoded so far in
``<root>/.<slide_id>.<mag>.partial.npz`` (written atomically, no pickles); the next run with the
same encoder, preprocessing and grid starts after them.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histokd_core.cancel import CancelToken
from histokd_core.errors import DataError
from histokd_core.features import lifeline
from histokd_core.features.base import PatchEncoder
from histokd_core.features.encoders import get_encoder
from histokd_core.features.slide_features import mag_to_mpp, slide_id_of
from histokd_core.features.stain import StainNormalizer, StainReference
from histokd_core.features.tile_sanity import (
    STAT_NAMES,
    BadTile,
    implausible_tiles,
    jpeg2000_bad_tiles,
    tile_stats,
)
from histokd_core.features.store import (
    IDENTITY_DEFAULTS,
    IDENTITY_KEYS,
    PREPROCESSING_VERSION,
    mark_complete,
    read_slide_attrs,
    slide_group_path,
    write_slide_features,
)

log = logging.getLogger(__name__)

#: What :func:`extract_slide` does with implausible decoded tiles.
BAD_TILE_POLICIES = ("fail", "skip")
#: ``progress(done, total)`` in patches over all magnifications still to compute.
ProgressCallback = Callable[[int, int], None]

#: the encoder works on sub-batches of about this many seconds, so progress moves and a
#: cancellation is seen at least this often (plus the time to read the next tiles).
STEP_SECONDS = 0.25


@dataclass
class ExtractStats:
    """Where the time of an extraction went (seconds).

    Attributes
    ----------
    n_patches : patches encoded.
    read_s : slide-read time summed over loader workers (decode + resize of every tile).
    wait_s : time the model waited for tiles (the read bottleneck as seen by the main process).
    encode_s : time spent in ``encoder.encode``.
    wall_s : total wall time.
    tile_stats : ``(n_patches, 4)`` pixel statistics of the tiles just encoded
        (:data:`~histokd_core.features.tile_sanity.STAT_NAMES`), or ``None``.
    """

    n_patches: int = 0
    read_s: float = 0.0
    wait_s: float = 0.0
    encode_s: float = 0.0
    wall_s: float = 0.0
    tile_stats: np.ndarray | None = None

    def add(self, other: ExtractStats) -> None:
        for name in ("n_patches", "read_s", "wait_s", "encode_s", "wall_s"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def patches_per_s(self) -> float:
        return self.n_patches / self.wall_s if self.wall_s > 0 else 0.0


@dataclass
class ExtractResult:
    """Outcome of :func:`extract_slide`.

    Attributes
    ----------
    slide_id, slide_path, group : the slide and its zarr group.
    status : ``"done"`` (all computed now), ``"resumed"`` (some magnifications or patches were
        already stored) or ``"skipped"`` (complete with matching attributes).
    n_patches : patches per magnification computed now (including kept ones resumed; implausible
        tiles left out).
    n_resumed : patches per magnification taken from a cancelled run's kept features.
    stats : timings of what was computed now.
    bad_tiles : magnification -> ``[[x, y, reason], ...]`` of the implausible tiles left out
        (``bad_tiles="skip"``); empty when none.
    """

    slide_id: str
    slide_path: str
    group: str
    status: str
    n_patches: dict[str, int] = field(default_factory=dict)
    n_resumed: dict[str, int] = field(default_factory=dict)
    stats: ExtractStats = field(default_factory=ExtractStats)
    bad_tiles: dict[str, list] = field(default_factory=dict)


class TileDataset:
    """Map-style dataset of the patches of one grid, read from the slide in each worker process.

    Item ``i`` is ``(tile, seconds, stats)``: ``tile`` a ``(patch_px, patch_px, 3)`` uint8 tensor
    read at ``read_level`` from level-0 top-left ``coords[i]`` and resized (bilinear, antialiased)
    when the read size differs, then stain-normalised when ``stain`` is given; ``seconds`` the time
    it took; ``stats`` the ``(4,)`` :func:`~histokd_core.features.tile_sanity.tile_stats` of the
    decoded pixels. A tile whose read raises is returned as zeros with ``decode_failed`` set, so
    the slide's report lists it (:func:`extract_slide`).
    """

    def __init__(
        self,
        slide_path: str | os.PathLike,
        coords: np.ndarray,
        patch_size_level0: int,
        read_level: int,
        patch_px: int,
        mpp: float | None = None,
        stain: StainReference | None = None,
    ) -> None:
        self.slide_path = str(slide_path)
        self.stain = stain
        self._normalizer: StainNormalizer | None = None
        self.coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        self.patch_size_level0 = int(patch_size_level0)
        self.read_level = int(read_level)
        self.patch_px = int(patch_px)
        self.mpp = mpp
        self._slide = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.coords)

    def _open(self):
        if self._slide is None or self._pid != os.getpid():
            from histokd_core.slide import open_slide

            self._slide = open_slide(self.slide_path, mpp=self.mpp)
            self._pid = os.getpid()
        return self._slide

    def close(self) -> None:
        """Close the slide opened in this process (loader workers close theirs on exit)."""
        if self._slide is not None:
            self._slide.close()
            self._slide = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_slide"] = None
        state["_pid"] = None
        state["_normalizer"] = None
        return state

    def __getitem__(self, index: int):
        import dask
        import torch
        import torch.nn.functional as F

        start = time.perf_counter()
        slide = self._open()
        ds = slide.level_downsamples[self.read_level]
        size = max(1, int(round(self.patch_size_level0 / ds)))
        x, y = (int(v) for v in self.coords[index])
        failed = False
        try:
            with dask.config.set(scheduler="synchronous"):
                region = slide.read_region((x, y), self.read_level, (size, size))
        except Exception as exc:  # noqa: BLE001 - a decoder error of one tile: reported per slide
            log.debug("%s: tile at (%d, %d) not decoded: %s", self.slide_path, x, y, exc)
            region, failed = np.zeros((size, size, 3), np.uint8), True
        stats = torch.from_numpy(tile_stats(region, failed))
        tile = torch.from_numpy(np.ascontiguousarray(region))
        if size != self.patch_px:
            t = tile.permute(2, 0, 1)[None].float()
            t = F.interpolate(t, size=(self.patch_px, self.patch_px), mode="bilinear", antialias=True)
            tile = t[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8)
        if self.stain is not None:
            if self._normalizer is None:
                self._normalizer = StainNormalizer(self.stain)
            tile = torch.from_numpy(self._normalizer(tile.numpy()))
        return tile, time.perf_counter() - start, stats


def loader_workers(requested: int) -> int:
    """``requested`` loader processes, or 0 inside a daemonic process (which cannot have children)."""
    if requested > 0 and multiprocessing.current_process().daemon:
        log.info("running inside a daemonic process: reading tiles in the main process")
        return 0
    return max(0, int(requested))


def loader_context():
    """Multiprocessing context of the tile loader: ``forkserver`` where available, else ``spawn``.

    Plain ``fork`` is unsafe here: zarr and dask keep background threads whose locks a forked
    child would inherit held (a deadlock). The fork server imports torch and this module once,
    so later loader processes start in milliseconds. The fork server and every loader process
    run a :mod:`~histokd_core.features.lifeline`, so none outlives a killed extraction.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["torch", __name__, lifeline.__name__])
        return ctx
    return multiprocessing.get_context("spawn")


def encode_tiles(
    dataset: TileDataset,
    encoder: PatchEncoder,
    batch_size: int | None = None,
    num_workers: int = 2,
    progress: Callable[[int], None] | None = None,
    cancel: CancelToken | None = None,
    out: np.ndarray | None = None,
    step_seconds: float = STEP_SECONDS,
) -> tuple[np.ndarray, ExtractStats]:
    """Encode every tile of ``dataset``: features ``(n, d)`` float32 and timings.

    ``batch_size`` tiles per loader batch (default the encoder's own ``batch_size``, else 64).
    ``num_workers`` loader processes read tiles while the main process encodes the previous batch.

    Each loader batch is encoded in sub-batches sized so that one takes about ``step_seconds``
    (measured on the previous sub-batch); after each, ``progress(n_done)`` is called and ``cancel``
    checked (raising :class:`~histokd_core.errors.Cancelled`). ``out`` (``(n, d)`` float32) receives
    the features as they are computed, so a caller keeps the rows ``< n_done`` when this raises.
    """
    import torch
    from torch.utils.data import DataLoader

    wall = time.perf_counter()
    stats = ExtractStats()
    feats = out if out is not None else np.empty((len(dataset), encoder.dim), dtype=np.float32)
    if feats.shape != (len(dataset), encoder.dim):
        raise DataError(f"encode_tiles: out must be ({len(dataset)}, {encoder.dim}), got {feats.shape}")
    stats.tile_stats = np.zeros((len(dataset), len(STAT_NAMES)), dtype=np.float32)
    if len(dataset) == 0:
        return feats, stats
    workers = loader_workers(num_workers)
    batch_size = int(batch_size or getattr(encoder, "batch_size", 64))
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        multiprocessing_context=loader_context() if workers else None,
        prefetch_factor=4 if workers else None,
        worker_init_fn=functools.partial(lifeline.loader_worker_init, os.getpid()) if workers else None,
        pin_memory=encoder.device.startswith("cuda") and torch.cuda.is_available(),
    )
    done = 0
    chunk = 1  # the first sub-batch measures the encoder's speed; the first progress comes early
    tick = time.perf_counter()
    try:
        for tiles, seconds, tile_stats_batch in loader:
            stats.wait_s += time.perf_counter() - tick
            stats.read_s += float(seconds.sum())
            tiles_np = tiles.numpy()
            stats.tile_stats[done : done + len(tiles_np)] = tile_stats_batch.numpy()
            lo = 0
            while lo < len(tiles_np):
                if cancel is not None:
                    cancel.check("feature extraction")
                part = tiles_np[lo : lo + chunk]
                lo += len(part)
                start = time.perf_counter()
                feats[done : done + len(part)] = encoder.encode(part)
                took = time.perf_counter() - start
                stats.encode_s += took
                done += len(part)
                stats.n_patches = done
                chunk = int(np.clip(step_seconds * len(part) / max(took, 1e-6), 1, batch_size))
                if progress is not None:
                    progress(done)
            tick = time.perf_counter()
        if cancel is not None:
            cancel.check("feature extraction")
    finally:
        dataset.close()
        stats.wall_s = time.perf_counter() - wall
    return feats, stats


def partial_path(root: str | os.PathLike, slide_id: str, mag: str) -> Path:
    """Where the patches encoded before a cancellation are kept: ``<root>/.<slide_id>.<mag>.partial.npz``."""
    return Path(root) / f".{slide_id_of(slide_id)}.{mag}.partial.npz"


def _grid_key(identity: dict[str, Any], coords: np.ndarray, patch_size_level0: int, read_level: int) -> str:
    import hashlib
    import json

    h = hashlib.sha256(json.dumps(identity, sort_keys=True).encode())
    h.update(np.ascontiguousarray(coords, dtype=np.int64).tobytes())
    h.update(f"{patch_size_level0}/{read_level}".encode())
    return h.hexdigest()


def save_partial(path: Path, feats: np.ndarray, key: str) -> None:
    """Keep ``feats`` (the first rows of a grid) for a later run, atomically."""
    import io

    from histokd_core.io import atomic_write_bytes

    buffer = io.BytesIO()
    np.savez(buffer, feats=np.asarray(feats, dtype=np.float32), key=np.array(key))
    atomic_write_bytes(path, buffer.getvalue())


def load_partial(path: Path, key: str, dim: int) -> np.ndarray | None:
    """Features kept by :func:`save_partial` for the same encoder and grid, else None."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["key"]) != key:
                log.info("%s: kept features are for another encoder or grid; starting over", path)
                return None
            feats = np.asarray(data["feats"], dtype=np.float32)
    except (OSError, ValueError, KeyError) as exc:
        log.warning("%s: unreadable kept features (%s); starting over", path, exc)
        return None
    return feats if feats.ndim == 2 and feats.shape[1] == dim else None


def _reusable_mags(existing: dict[str, Any] | None, identity: dict[str, Any], group: Path) -> set[str]:
    if existing is None:
        return set()
    if any(existing.get(k, IDENTITY_DEFAULTS.get(k)) != identity[k] for k in IDENTITY_KEYS):
        return set()
    return {m for m in existing.get("magnifications", []) if (group / m / "zarr.json").is_file()}


def extract_slide(
    slide_path: str | os.PathLike,
    root: str | os.PathLike,
    encoder: PatchEncoder | str = "efficientnet-lite0",
    magnifications: Sequence[str] = ("20x", "10x"),
    patch_px: int = 256,
    mpp: float | None = None,
    min_tissue: float = 0.5,
    batch_size: int | None = None,
    num_workers: int = 2,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    slide_id: str | None = None,
    stain: StainReference | None = None,
    cancel: CancelToken | None = None,
    bad_tiles: str = "fail",
) -> ExtractResult:
    """Extract the features of one slide into ``<root>/<slide_id>.zarr``.

    Parameters
    ----------
    slide_path : whole-slide image.
    root : feature store root directory.
    encoder : a :class:`PatchEncoder` or an encoder spec for :func:`get_encoder`.
    magnifications : names such as ``"20x"`` (0.5 um/px) and ``"10x"`` (1.0 um/px).
    patch_px : patch side in px at each magnification.
    mpp : microns per level-0 px, overriding/providing the slide metadata.
    min_tissue : minimum tissue fraction of a kept patch (0..1).
    batch_size : patches per encoder call (default the encoder's).
    num_workers : tile-reading processes (0: read in this process).
    overwrite : replace stored features made with another encoder or patch size (otherwise
        :class:`DataError`).
    progress : ``progress(done, total)`` in patches, every ~0.25 s of encoding; raising from it
        aborts cleanly (the patches done so far are kept for the next run).
    cancel : checked between encoder sub-batches; a cancelled token raises
        :class:`~histokd_core.errors.Cancelled` after keeping the patches done so far.
    slide_id : store name; default the file name without its slide extension.
    stain : stain-normalisation reference applied to every patch before encoding
        (:func:`histokd_core.features.stain.cohort_reference`); ``None`` encodes patches as read.
    bad_tiles : what to do with implausible decoded tiles
        (:mod:`~histokd_core.features.tile_sanity`: decode errors, broken JPEG 2000 codestreams,
        constant / out-of-gamut / noise tiles among tissue): ``"fail"`` (default) raises
        :class:`DataError` listing them; ``"skip"`` leaves those patches out, lists them in
        ``ExtractResult.bad_tiles`` and marks the slide ``degraded`` in the store (attrs
        ``degraded``, ``bad_tiles``). More than half of a grid implausible always fails.

    Returns
    -------
    ExtractResult (``status`` ``"skipped"`` when complete features with matching attributes exist).
    """
    from histokd_core.slide import open_slide, patch_grid, tissue_mask

    wall = time.perf_counter()
    if bad_tiles not in BAD_TILE_POLICIES:
        raise DataError(f"bad_tiles must be one of {', '.join(BAD_TILE_POLICIES)}, got {bad_tiles!r}")
    slide_path = Path(slide_path)
    slide_id = slide_id or slide_id_of(slide_path)
    if isinstance(encoder, str):
        encoder = get_encoder(encoder)
    mags = list(dict.fromkeys(magnifications))
    if not mags:
        raise DataError("extract_slide: no magnification requested")
    for mag in mags:
        mag_to_mpp(mag)
    identity = {
        "encoder_id": encoder.id,
        "weights_hash": encoder.weights_hash,
        "patch_px": int(patch_px),
        "stain": stain.id if stain is not None else "none",
        "preprocessing": PREPROCESSING_VERSION,
    }
    group = slide_group_path(root, slide_id)
    existing = read_slide_attrs(root, slide_id)
    reusable = _reusable_mags(existing, identity, group)
    if existing is not None and not reusable and existing.get("magnifications") and not overwrite:
        raise DataError(
            f"{group} holds features made with { {k: existing.get(k) for k in IDENTITY_KEYS} }, "
            f"not {identity}; use another output folder or overwrite=True (--overwrite)"
        )
    todo = [m for m in mags if m not in reusable]
    result = ExtractResult(slide_id, str(slide_path), str(group), "done")
    if not todo:
        if not existing.get("complete"):
            mark_complete(root, slide_id)
        result.status = "skipped"
        log.info("%s: features complete in %s, skipped", slide_id, group)
        return result
    if reusable & set(mags):
        result.status = "resumed"

    with open_slide(slide_path, mpp=mpp) as slide:
        slide_mpp = slide.require_mpp()
        mask = tissue_mask(slide) if min_tissue > 0 else None
        grids = {
            m: patch_grid(slide, target_mpp=mag_to_mpp(m), patch_px=patch_px, min_tissue=min_tissue, mask=mask)
            for m in todo
        }
        dimensions = [int(v) for v in slide.dimensions]
        downsamples = [float(d) for d in slide.level_downsamples]
    total = sum(len(g) for g in grids.values())
    token = CancelToken.of(cancel)
    offset = 0
    for i, mag in enumerate(todo):
        grid = grids[mag]
        key = _grid_key(identity, grid.coords, grid.patch_size_level0, grid.read_level)
        kept_path = partial_path(root, slide_id, mag)
        feats = np.empty((len(grid), encoder.dim), dtype=np.float32)
        kept = load_partial(kept_path, key, encoder.dim)
        start = 0 if kept is None else min(len(kept), len(grid))
        if start:
            feats[:start] = kept[:start]
            log.info("%s %s: resuming after %d kept patches", slide_id, mag, start)
            result.status = "resumed"
            result.n_resumed[mag] = start
        dataset = TileDataset(
            slide_path, grid.coords[start:], grid.patch_size_level0, grid.read_level, patch_px, mpp, stain
        )
        n_done = [start]

        def report(n: int, base: int = offset + start, first: int = start) -> None:
            n_done[0] = first + n
            if progress is not None:
                progress(base + n, total)

        if start and progress is not None:
            progress(offset + start, total)
        try:
            _, stats = encode_tiles(dataset, encoder, batch_size=batch_size, num_workers=num_workers,
                                    progress=report, cancel=token, out=feats[start:])
        except BaseException:
            if n_done[0] > start:
                save_partial(kept_path, feats[: n_done[0]], key)
                log.info("%s %s: kept %d of %d patches in %s", slide_id, mag, n_done[0], len(grid), kept_path)
            raise
        offset += len(grid)
        coords = grid.coords
        pixel_stats = np.full((len(grid), len(STAT_NAMES)), np.nan, dtype=np.float32)
        pixel_stats[start:] = stats.tile_stats  # patches kept from a cancelled run: not judged
        bad = {
            **implausible_tiles(grid.coords, pixel_stats, grid.stride_level0),
            **jpeg2000_bad_tiles(slide_path, grid.read_level, grid.coords, grid.patch_size_level0,
                                 downsamples[grid.read_level]),
        }
        if bad:
            listed = [BadTile(int(grid.coords[i][0]), int(grid.coords[i][1]), r) for i, r in sorted(bad.items())]
            where = "; ".join(f"({t.x}, {t.y}) {t.reason}" for t in listed[:5])
            more = f" (+{len(listed) - 5} more)" if len(listed) > 5 else ""
            if bad_tiles == "fail" or 2 * len(bad) > len(grid):
                raise DataError(
                    f"{slide_path}: {len(bad)} of {len(grid)} patches at {mag} decode to implausible "
                    f"pixels, at level-0 (x, y): {where}{more}; their features would describe garbage: "
                    "re-copy or re-export the slide, or pass --bad-tiles skip (bad_tiles='skip') to "
                    "leave them out and mark the slide degraded"
                    + (" (more than half the patches: always an error)" if 2 * len(bad) > len(grid) else "")
                )
            log.warning("%s %s: left out %d implausible tile(s): %s%s", slide_id, mag, len(bad), where, more)
            keep = np.ones(len(grid), dtype=bool)
            keep[list(bad)] = False
            feats, coords = feats[keep], grid.coords[keep]
            result.bad_tiles[mag] = [t.to_list() for t in listed]
        attrs = {
            **identity,
            "feat_dim": encoder.dim,
            "mpp": slide_mpp,
            "slide_path": str(slide_path.resolve()),
            "slide_dimensions": dimensions,
            "min_tissue": float(min_tissue),
            "target_mpp": grid.target_mpp,
            "patch_size_level0": grid.patch_size_level0,
            "stride_level0": grid.stride_level0,
            "read_level": grid.read_level,
            "complete": False,
        }
        if stain is not None:
            attrs["stain_reference"] = stain.to_attrs()
        kept = {m: v for m, v in ((existing or {}).get("bad_tiles") or {}).items() if m in reusable}
        attrs["bad_tiles"] = {**kept, **result.bad_tiles}
        attrs["degraded"] = bool(attrs["bad_tiles"])
        write_slide_features(root, slide_id, mag, feats, coords, attrs, overwrite=overwrite and i == 0)
        kept_path.unlink(missing_ok=True)
        result.n_patches[mag] = len(coords)
        result.stats.add(stats)
        log.info(
            "%s %s: %d patches, %.1f patches/s (read %.1fs, encode %.1fs)",
            slide_id, mag, len(grid), stats.patches_per_s, stats.read_s, stats.encode_s,
        )
    mark_complete(root, slide_id)
    result.stats.wall_s = time.perf_counter() - wall
    return result
