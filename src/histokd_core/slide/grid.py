"""Patch grids: level-0 top-left coordinates of tissue patches at a target resolution.

A patch of ``patch_px`` px at ``target_mpp`` covers ``patch_size_level0 = round(patch_px *
target_mpp / mpp)`` level-0 px. Patches lie on one global lattice from the slide origin with
stride ``stride_level0`` (equal to the patch size unless an overlap is asked for, as in TRIDENT),
are kept whole inside the slide, and kept when their tissue fraction is at least ``min_tissue``.
"""

from __future__ import annotations

import io as _io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histokd_core.errors import DataError
from histokd_core.io import atomic_path
from histokd_core.slide.reader import Slide
from histokd_core.slide.tissue import TissueMask, tissue_mask

_CSV_MAGIC = "# histokd patch grid"


@dataclass
class PatchGrid:
    """Patches of one slide.

    Attributes
    ----------
    coords : ``(n, 2)`` int64 level-0 top-left ``(x, y)`` px.
    tissue_fraction : ``(n,)`` float32 tissue fraction of each patch (0..1).
    patch_size_level0 : patch side in level-0 px.
    stride_level0 : lattice step in level-0 px.
    target_mpp : microns per pixel the patches are meant to be read at.
    patch_px : patch side in px at ``target_mpp``.
    read_level : the finest native level not finer than needed (read there, then resize).
    mpp : microns per level-0 px of the slide.
    slide_dimensions : slide level-0 ``(width, height)`` px.
    slide_path : where the slide was.
    """

    coords: np.ndarray
    tissue_fraction: np.ndarray
    patch_size_level0: int
    stride_level0: int
    target_mpp: float
    patch_px: int
    read_level: int
    mpp: float
    slide_dimensions: tuple[int, int]
    slide_path: str = ""
    attrs: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.coords)

    def info(self) -> dict[str, Any]:
        """The scalar attributes as a JSON-serialisable dict."""
        return {
            "patch_size_level0": int(self.patch_size_level0),
            "stride_level0": int(self.stride_level0),
            "target_mpp": float(self.target_mpp),
            "patch_px": int(self.patch_px),
            "read_level": int(self.read_level),
            "mpp": float(self.mpp),
            "slide_dimensions": [int(v) for v in self.slide_dimensions],
            "slide_path": self.slide_path,
            "n_patches": len(self),
            **self.attrs,
        }

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write atomically as ``.csv`` (``x,y,tissue_fraction`` + ``#`` header) or ``.npz``."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".csv", ".npz"):
            raise DataError(f"{path}: patch grids are saved as .csv or .npz, not {path.suffix!r}")
        with atomic_path(path, overwrite=overwrite) as tmp:
            if suffix == ".npz":
                with open(tmp, "wb") as fh:
                    np.savez(
                        fh,
                        coords=self.coords.astype(np.int64),
                        tissue_fraction=self.tissue_fraction.astype(np.float32),
                        info=np.array(json.dumps(self.info())),
                    )
            else:
                buf = _io.StringIO()
                buf.write(f"{_CSV_MAGIC} {json.dumps(self.info())}\n")
                buf.write("x,y,tissue_fraction\n")
                for (x, y), f in zip(self.coords.tolist(), self.tissue_fraction.tolist()):
                    buf.write(f"{x},{y},{f:.4f}\n")
                tmp.write_text(buf.getvalue())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> PatchGrid:
        """Read a grid written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: no such patch-grid file")
        try:
            if path.suffix.lower() == ".npz":
                with np.load(path, allow_pickle=False) as z:
                    coords, frac = z["coords"], z["tissue_fraction"]
                    info = json.loads(str(z["info"]))
            else:
                with open(path) as fh:
                    first = fh.readline()
                    if not first.startswith(_CSV_MAGIC):
                        raise ValueError(f"first line should start with {_CSV_MAGIC!r}")
                    info = json.loads(first[len(_CSV_MAGIC) :])
                    table = np.loadtxt(fh, delimiter=",", skiprows=1, ndmin=2)
                coords = table[:, :2].astype(np.int64) if table.size else np.zeros((0, 2), np.int64)
                frac = table[:, 2].astype(np.float32) if table.size else np.zeros(0, np.float32)
        except (ValueError, KeyError, OSError) as exc:
            raise DataError(f"{path}: not a histokd patch grid ({exc})") from exc
        info.pop("n_patches", None)
        known = {k: info.pop(k) for k in list(info) if k in _FIELDS}
        return cls(
            coords=coords.reshape(-1, 2),
            tissue_fraction=frac,
            slide_dimensions=tuple(known.pop("slide_dimensions")),
            **known,
            attrs=info,
        )


_FIELDS = {
    "patch_size_level0",
    "stride_level0",
    "target_mpp",
    "patch_px",
    "read_level",
    "mpp",
    "slide_dimensions",
    "slide_path",
}


def lattice(dimensions: tuple[int, int], patch_size_level0: int, stride_level0: int) -> np.ndarray:
    """Top-left ``(x, y)`` ``(n, 2)`` of every whole patch on the global lattice, row-major."""
    w, h = dimensions
    xs = np.arange(0, w - patch_size_level0 + 1, stride_level0, dtype=np.int64)
    ys = np.arange(0, h - patch_size_level0 + 1, stride_level0, dtype=np.int64)
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


def patch_grid(
    slide: Slide,
    target_mpp: float = 0.5,
    patch_px: int = 256,
    min_tissue: float = 0.5,
    mask: TissueMask | None = None,
    overlap_px: int = 0,
) -> PatchGrid:
    """Tissue patches of ``slide`` at ``target_mpp`` (0.5 um/px = 20x, 1.0 um/px = 10x).

    Parameters
    ----------
    slide : an open slide; its mpp is required (:class:`MissingMppError` otherwise).
    target_mpp : microns per pixel of the patches as they will be read.
    patch_px : patch side in px at ``target_mpp``.
    min_tissue : keep patches whose tissue fraction is at least this (0..1); 0 keeps all.
    mask : a precomputed :func:`tissue_mask`; computed when omitted (and not needed when
        ``min_tissue`` is 0).
    overlap_px : overlap between neighbours in px at ``target_mpp``.
    """
    mpp = slide.require_mpp()
    if target_mpp <= 0:
        raise DataError(f"target_mpp must be > 0 um/px, got {target_mpp}")
    if patch_px <= 0:
        raise DataError(f"patch_px must be > 0, got {patch_px}")
    if not 0 <= overlap_px < patch_px:
        raise DataError(f"overlap_px must be in [0, patch_px), got {overlap_px}")
    if not 0.0 <= min_tissue <= 1.0:
        raise DataError(f"min_tissue must be between 0 and 1, got {min_tissue}")
    scale = target_mpp / mpp
    size0 = max(1, int(round(patch_px * scale)))
    stride0 = max(1, int(round((patch_px - overlap_px) * scale)))
    coords = lattice(slide.dimensions, size0, stride0)
    if min_tissue > 0 or mask is not None:
        mask = tissue_mask(slide) if mask is None else mask
        frac = mask.box_fractions(coords, size0)
    else:
        frac = np.ones(len(coords), dtype=np.float32)
    keep = frac >= min_tissue if min_tissue > 0 else np.ones(len(coords), dtype=bool)
    return grid_of_patches(slide, coords[keep], frac[keep], size0, stride0, target_mpp, patch_px)


def grid_of_patches(
    slide: Slide,
    coords: np.ndarray,
    tissue_fraction: np.ndarray,
    patch_size_level0: int,
    stride_level0: int,
    target_mpp: float,
    patch_px: int,
    attrs: dict[str, Any] | None = None,
) -> PatchGrid:
    """A :class:`PatchGrid` of the chosen patches ``coords`` ``(n, 2)`` (level-0 top-left) with
    their ``tissue_fraction`` ``(n,)`` on ``slide`` (its mpp is required): the read level,
    mpp, dimensions and path come from the slide."""
    mpp = slide.require_mpp()
    scale = target_mpp / mpp
    return PatchGrid(
        coords=coords,
        tissue_fraction=np.asarray(tissue_fraction).astype(np.float32),
        patch_size_level0=int(patch_size_level0),
        stride_level0=int(stride_level0),
        target_mpp=float(target_mpp),
        patch_px=int(patch_px),
        read_level=min(
            slide.best_level_for_downsample(max(scale, 1.0)), slide.native_level_count - 1
        ),
        mpp=float(mpp),
        slide_dimensions=tuple(slide.dimensions),
        slide_path=str(slide.path),
        attrs=dict(attrs or {}),
    )
