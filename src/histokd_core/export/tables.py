"""Top-k patches: a CSV table (coords, scores, cluster ids) and PNG crops read from the slide."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from histokd_core.errors import DataError, HistoKDError
from histokd_core.io import atomic_write_bytes, atomic_write_text, check_writable


def top_k(scores: np.ndarray, k: int, highest: bool = True) -> np.ndarray:
    """Indices of the ``k`` highest (or lowest) finite scores, best first."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    idx = np.flatnonzero(np.isfinite(s))
    order = idx[np.argsort(-s[idx] if highest else s[idx], kind="stable")]
    return order[: max(int(k), 0)]


def top_patches_table(
    coords: np.ndarray,
    scores: Mapping[str, np.ndarray],
    rank_by: str,
    k: int = 20,
    clusters: Mapping[str, np.ndarray] | None = None,
    patch_size: int | None = None,
    highest: bool = True,
) -> pd.DataFrame:
    """Table of the top-``k`` patches ranked by ``scores[rank_by]``.

    Columns: ``rank, patch_index, x, y`` (level-0 top-left), ``patch_size`` (when given), one
    column per score map and one ``cluster_<name>`` column per cluster map.
    """
    c = np.asarray(coords)
    if c.ndim != 2 or c.shape[1] != 2:
        raise DataError(f"coords: expected shape (n, 2), got {c.shape}")
    if rank_by not in scores:
        raise DataError(f"rank_by: {rank_by!r} is not one of the score maps {sorted(scores)}")
    for name, arr in {**scores, **(clusters or {})}.items():
        if len(np.asarray(arr).ravel()) != len(c):
            raise DataError(f"{name}: expected {len(c)} values (one per patch), got {len(np.asarray(arr).ravel())}")
    idx = top_k(scores[rank_by], k, highest=highest)
    table = {"rank": np.arange(1, len(idx) + 1), "patch_index": idx, "x": c[idx, 0], "y": c[idx, 1]}
    if patch_size is not None:
        table["patch_size"] = np.full(len(idx), int(patch_size))
    for name, arr in scores.items():
        table[name] = np.asarray(arr, dtype=np.float64).ravel()[idx]
    for name, arr in (clusters or {}).items():
        table[f"cluster_{name}"] = np.asarray(arr).ravel()[idx].astype(np.int64)
    return pd.DataFrame(table)


def write_top_patches_csv(path: str | os.PathLike, table: pd.DataFrame, overwrite: bool = False) -> Path:
    """Write a :func:`top_patches_table` as CSV, atomically, refusing to overwrite by default."""
    path = check_writable(path, overwrite=overwrite)
    return atomic_write_text(path, table.to_csv(index=False), overwrite=overwrite)


def _png_bytes(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def save_patch_crops(
    slide,
    coords: np.ndarray,
    patch_size: int,
    indices: Sequence[int],
    out_dir: str | os.PathLike,
    level: int = 0,
    prefix: str = "patch",
    overwrite: bool = False,
) -> list[Path]:
    """Save PNG crops of patches read at pyramid ``level``.

    Parameters
    ----------
    slide : an open :class:`histokd_core.slide.Slide` (anything with ``read_region`` and
        ``level_downsamples``).
    coords : ``(n, 2)`` level-0 top-left ``(x, y)``; patch_size : level-0 px.
    indices : which patches, in output order (file ``{prefix}_{rank:03d}_{x}_{y}.png``).
    level : pyramid level to read (crop side = ``patch_size / downsample`` px).

    Refuses to overwrite existing crops unless ``overwrite``; nothing is written when any
    target exists.
    """
    if not 0 <= level < len(slide.level_downsamples):
        raise HistoKDError(f"level: {level} does not exist in {slide.path} (0..{len(slide.level_downsamples) - 1})")
    out_dir = Path(out_dir)
    c = np.asarray(coords)
    side = max(1, int(round(patch_size / float(slide.level_downsamples[level]))))
    targets = [out_dir / f"{prefix}_{r + 1:03d}_{int(c[i, 0])}_{int(c[i, 1])}.png" for r, i in enumerate(indices)]
    for t in targets:
        check_writable(t, overwrite=overwrite)
    for t, i in zip(targets, indices):
        rgb = slide.read_region((int(c[i, 0]), int(c[i, 1])), level, (side, side))
        atomic_write_bytes(t, _png_bytes(rgb), overwrite=overwrite)
    return targets
