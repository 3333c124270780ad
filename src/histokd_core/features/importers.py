"""Read features other tools wrote: CLAM / TRIDENT ``.h5`` and CLAM / SurvPath / MCAT ``.pt`` bags.

``.h5`` (CLAM ``extract_features_fp.py``, TRIDENT): dataset ``features`` ``(n, d)`` (a leading
axis of 1, ``(1, n, d)``, is squeezed) and ``coords`` ``(n, 2)`` level-0 top-left ``(x, y)``.
TRIDENT stores ``patch_size_level0`` and ``target_magnification`` as attributes of ``coords``
(CLAM stores ``patch_size`` and ``patch_level``/``downsample`` when present); when the file does
not say, the patch size is inferred as the most common step between neighbouring patches
(:func:`~histokd_core.slide.geometry.infer_stride`; ``patch_size_inferred``).

``.pt``: a tensor ``(n, d)`` (CLAM ``pt_files/``, SurvPath, MCAT) or a dict with ``features`` and
optionally ``coords``. CLAM writes ``h5_files/`` beside ``pt_files/``; coordinates are taken from
the sibling ``.h5`` when the ``.pt`` has none. A bag without any coordinates gets coords of -1
and ``attrs["coords_missing"] = True`` (fine for training, no overlays).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from histokd_core.errors import DataError
from histokd_core.features.slide_features import SlideFeatures, slide_id_of
from histokd_core.slide.geometry import infer_stride

log = logging.getLogger(__name__)

_FEATURE_KEYS = ("features", "feats", "feature")


def find_bag(folder: Path, names: list[str]) -> Path | None:
    """The first ``<name>.h5`` / ``<name>.pt`` in ``folder`` or its CLAM sub-folders, else None."""
    for sub in (folder, folder / "h5_files", folder / "pt_files"):
        for name in names:
            for ext in (".h5", ".pt"):
                path = sub / f"{name}{ext}"
                if path.is_file():
                    return path
    return None


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _patch_size(coord_attrs: dict[str, Any], coords: np.ndarray, path: Path) -> tuple[int | None, bool]:
    if "patch_size_level0" in coord_attrs:
        return int(coord_attrs["patch_size_level0"]), False
    if "patch_size" in coord_attrs:
        downsample = coord_attrs.get("downsample")
        factor = float(np.ravel(downsample)[0]) if downsample is not None else 1.0
        if downsample is None and int(coord_attrs.get("patch_level", 0)) != 0:
            log.warning("%s: patch_level > 0 without downsample; patch size may be in level px", path)
        return int(round(int(coord_attrs["patch_size"]) * factor)), False
    return infer_stride(coords), True


def _mag_name(coord_attrs: dict[str, Any], default: str) -> str:
    mag = coord_attrs.get("target_magnification")
    if mag is None:
        return default
    value = float(mag)
    return f"{int(value)}x" if value.is_integer() else f"{value}x"


def read_h5(path: Path) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """``features (n, d)``, ``coords (n, 2)`` or None, and the attributes of ``coords``."""
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            key = next((k for k in _FEATURE_KEYS if k in fh), None)
            if key is None:
                raise DataError(
                    f"{path}: no 'features' dataset (found {', '.join(fh.keys()) or 'nothing'}); "
                    "expected a CLAM/TRIDENT feature file"
                )
            feats = np.asarray(fh[key][()])
            coords, attrs = None, {}
            if "coords" in fh:
                coords = np.asarray(fh["coords"][()])
                attrs = {k: _decode(v) for k, v in fh["coords"].attrs.items()}
            attrs.update({k: _decode(v) for k, v in fh.attrs.items() if k not in attrs})
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - h5py raises OSError/KeyError/... on bad files
        raise DataError(f"{path}: cannot read as HDF5 features ({type(exc).__name__}: {exc})") from exc
    return feats, coords, attrs


def read_pt(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Features and optional coords of a ``.pt`` bag (loaded with ``weights_only=True``)."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path}: cannot read as a torch feature bag ({type(exc).__name__}: {exc})") from exc
    coords = None
    if isinstance(obj, dict):
        key = next((k for k in _FEATURE_KEYS if k in obj), None)
        if key is None:
            raise DataError(f"{path}: dict without a 'features' entry (keys: {', '.join(map(str, obj))})")
        coords = obj.get("coords")
        obj = obj[key]
    if not isinstance(obj, torch.Tensor):
        raise DataError(f"{path}: expected a tensor (n_patches, d), got {type(obj).__name__}")
    feats = obj.detach().float().numpy()
    if coords is not None:
        coords = np.asarray(coords.numpy() if isinstance(coords, torch.Tensor) else coords)
    return feats, coords


def open_bag(path: Path, slide_id: str, default_magnification: str = "20x") -> SlideFeatures:
    """A :class:`~histokd_core.features.slide_features.SlideFeatures` over one ``.h5`` or ``.pt`` file."""
    attrs: dict[str, Any] = {}
    if path.suffix == ".h5":
        feats, coords, attrs = read_h5(path)
    elif path.suffix == ".pt":
        feats, coords = read_pt(path)
        sibling = path.parent.parent / "h5_files" / f"{path.stem}.h5"
        if coords is None and sibling.is_file():
            _, coords, attrs = read_h5(sibling)
    else:
        raise DataError(f"{path}: unsupported feature file (expected .h5, .pt or a .zarr store)")
    if feats.ndim == 3 and feats.shape[0] == 1:
        feats = feats[0]
    if feats.ndim != 2:
        raise DataError(f"{path}: features must be (n_patches, d), got shape {feats.shape}")
    coords_missing = coords is None
    if coords_missing:
        log.warning("%s: no patch coordinates; using -1 (no overlays for this slide)", path)
        coords = np.full((len(feats), 2), -1, dtype=np.int64)
    coords = np.asarray(coords)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise DataError(f"{path}: coords must be (n_patches, 2), got shape {coords.shape}")
    if len(coords) != len(feats):
        raise DataError(f"{path}: {len(feats)} feature rows but {len(coords)} coords rows")
    coords = coords.astype(np.int64)
    feats = feats.astype(np.float32, copy=False)
    patch_size, inferred = (None, False) if coords_missing else _patch_size(attrs, coords, path)
    mag = _mag_name(attrs, default_magnification)
    mag_attrs = {"patch_size_level0": patch_size, "n_patches": len(feats)}
    slide_attrs = {
        "format": f"imported-{path.suffix[1:]}",
        "slide_id": slide_id_of(slide_id),
        "feat_dim": int(feats.shape[1]),
        "encoder_id": attrs.get("encoder", attrs.get("encoder_id")),
        "source_attrs": {k: v for k, v in attrs.items() if isinstance(v, (str, int, float, bool, list))},
        "patch_size_inferred": inferred,
        "coords_missing": coords_missing,
        "complete": True,
    }
    arrays = {"feats": feats, "coords": coords}
    return SlideFeatures(slide_id_of(slide_id), path, slide_attrs, {mag: mag_attrs}, lambda _m, name: arrays[name])
