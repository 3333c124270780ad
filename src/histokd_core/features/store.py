"""Feature store: one zarr group per slide, one sub-group per magnification.

Layout under a root directory::

    <root>/<slide_id>.zarr/              attrs: format, histokd_version, slide_id, encoder_id, weights_hash,
                                                feat_dim, patch_px, stain, stain_reference,
                                                preprocessing, mpp, slide_path,
                                                slide_dimensions, magnifications, complete
        20x/                             attrs: target_mpp, patch_size_level0, stride_level0, ...
            feats   (n, d)  float32      patch features
            coords  (n, 2)  int64        level-0 top-left (x, y) px
        10x/ ...
    <root>/stain_reference.json          the stain reference of a normalised store
                                         (:mod:`histokd_core.features.stain`)

Each magnification sub-group is written under a temporary name and renamed into place
(:func:`histokd_core.io.atomic_path`), and the group attributes are one file that zarr replaces
atomically, so an interrupted write never leaves a half-written magnification: a magnification is
either absent or complete. ``complete`` is set once every requested magnification is written.

:func:`open_features` reads this store or a folder of CLAM/TRIDENT ``.h5`` / ``.pt`` bags
(:mod:`histokd_core.features.importers`).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from histokd_core import __version__
from histokd_core.errors import DataError
from histokd_core.features import importers
from histokd_core.features.slide_features import SlideFeatures, mag_to_mpp, slide_id_of
from histokd_core.io import atomic_path, to_jsonable

log = logging.getLogger(__name__)

FORMAT = "histokd-features-1"
#: Attribute keys stored per magnification; all other attrs are stored per slide.
MAG_ATTR_KEYS = frozenset({"target_mpp", "patch_size_level0", "stride_level0", "read_level", "n_patches"})
#: Version of the pipeline from slide pixels to encoder input, stored as the ``preprocessing``
#: attr. 1: stores written before the attr existed (until 2026-12-02 the encoder resized float32
#: tiles; from then on CPU encoders resize in uint8, which moves inputs by up to 0.5/255 per
#: pixel: such stores cannot be told apart and count as 1). 2: tiles rounded to uint8 after the
#: resize to ``patch_px``, then resized to the encoder input in uint8 on CPU (float32 on CUDA).
PREPROCESSING_VERSION = 2
#: Slide attributes that must agree for stored features to be reused or extended.
IDENTITY_KEYS = ("encoder_id", "weights_hash", "patch_px", "stain", "preprocessing")
#: Slide attributes that must agree across all slides of one store (see :func:`check_store`).
STORE_KEYS = ("stain", "preprocessing")
#: Value of an identity key in stores written before the key existed.
IDENTITY_DEFAULTS = {"stain": "none", "preprocessing": 1}
_CHUNK_ROWS = 4096


def slide_group_path(root: str | os.PathLike, slide_id: str) -> Path:
    """``<root>/<slide_id>.zarr`` (``slide_id`` may carry a slide extension)."""
    return Path(root) / f"{slide_id_of(slide_id)}.zarr"


def _check_arrays(feats: np.ndarray, coords: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    feats = np.asarray(feats)
    coords = np.asarray(coords)
    if feats.ndim != 2:
        raise DataError(f"{where}: feats must be (n_patches, d), got shape {feats.shape}")
    if coords.shape != (len(feats), 2):
        raise DataError(f"{where}: coords must be (n_patches, 2) = ({len(feats)}, 2), got shape {coords.shape}")
    if not np.issubdtype(coords.dtype, np.integer):
        if not np.all(np.isfinite(coords)) or not np.all(coords == np.round(coords)):
            raise DataError(f"{where}: coords must be integer level-0 pixels")
    return feats.astype(np.float32, copy=False), coords.astype(np.int64, copy=False)


def read_slide_attrs(root: str | os.PathLike, slide_id: str) -> dict[str, Any] | None:
    """Slide attributes of ``<root>/<slide_id>.zarr``, or ``None`` when there is no such group."""
    import zarr

    path = slide_group_path(root, slide_id)
    if not (path / "zarr.json").is_file():
        return None
    try:
        return dict(zarr.open_group(path, mode="r").attrs)
    except Exception as exc:  # noqa: BLE001 - zarr raises many types on corrupt metadata
        raise DataError(f"{path}: corrupt feature store group ({type(exc).__name__}: {exc})") from exc


def store_identity(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`STORE_KEYS` of a slide group's attrs (defaults for stores that predate them)."""
    return {k: attrs.get(k, IDENTITY_DEFAULTS[k]) for k in STORE_KEYS}


def check_store(
    root: str | os.PathLike,
    identity: Mapping[str, Any],
    slide_ids: Sequence[str],
    overwrite: bool = False,
) -> None:
    """Refuse to add features made with another stain setting or preprocessing version to a store.

    Every ``<root>/*.zarr`` group is compared on :data:`STORE_KEYS` with ``identity``. A group
    that differs raises :class:`DataError` naming both settings and the slides, unless
    ``overwrite`` and it is one of ``slide_ids`` (it is then extracted again); a differing group
    of a slide outside ``slide_ids`` is always refused (the store would stay mixed).
    """
    want = {k: identity[k] for k in STORE_KEYS}
    ids = {slide_id_of(s) for s in slide_ids}
    other: dict[str, list[str]] = {}
    root = Path(root)
    if not root.is_dir():
        return
    for group in sorted(root.glob("*.zarr")):
        attrs = read_slide_attrs(root, group.name[: -len(".zarr")])
        if attrs is None:
            continue
        have = store_identity(attrs)
        if have != want:
            other.setdefault(repr(have), []).append(group.name[: -len(".zarr")])
    if not other:
        return
    stuck = sorted(s for names in other.values() for s in names if s not in ids)
    if overwrite and not stuck:
        return
    listing = "; ".join(
        f"{have}: {len(names)} slide(s) ({', '.join(names[:4])}{' ...' if len(names) > 4 else ''})"
        for have, names in other.items()
    )
    fix = (
        f"these slides are not in this run, so --overwrite cannot re-extract them: "
        f"{', '.join(stuck[:6])}{' ...' if len(stuck) > 6 else ''}; add them, or "
        if overwrite else "pass --overwrite (overwrite=True) to extract these slides again, or "
    )
    raise DataError(
        f"{root}: the feature store holds features made with {listing}, not {want}; mixing them "
        f"would shift features between slides: {fix}use another output folder"
    )


def _matches(existing: Mapping[str, Any], attrs: Mapping[str, Any]) -> bool:
    return all(existing.get(k) in (None, attrs[k]) for k in IDENTITY_KEYS if k in attrs)


def write_slide_features(
    root: str | os.PathLike,
    slide_id: str,
    mag: str,
    feats: np.ndarray,
    coords: np.ndarray,
    attrs: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the features of one magnification of one slide, atomically.

    Parameters
    ----------
    root : store root directory (created if needed).
    slide_id : slide id (a slide file name is accepted; its extension is dropped).
    mag : magnification name, e.g. ``"20x"``.
    feats : ``(n_patches, d)`` features (stored float32).
    coords : ``(n_patches, 2)`` level-0 top-left ``(x, y)`` px (stored int64).
    attrs : ``encoder_id``, ``weights_hash``, ``patch_px``, ``mpp``, ``slide_path``, ... stored on the
        slide group; the keys of :data:`MAG_ATTR_KEYS` (``patch_size_level0`` ...) on the
        magnification. ``complete`` (default True) marks the slide as finished.
    overwrite : replace a group written with another encoder / patch size; without it such a
        group raises :class:`DataError`.

    Returns
    -------
    Path of the slide group.
    """
    import zarr

    attrs = to_jsonable(dict(attrs or {}))
    group_path = slide_group_path(root, slide_id)
    feats, coords = _check_arrays(feats, coords, f"{group_path} [{mag}]")
    mag_to_mpp(mag)
    slide_attrs = {k: v for k, v in attrs.items() if k not in MAG_ATTR_KEYS}
    mag_attrs = {k: v for k, v in attrs.items() if k in MAG_ATTR_KEYS}
    mag_attrs.setdefault("target_mpp", mag_to_mpp(mag))
    mag_attrs["n_patches"] = len(feats)
    complete = bool(slide_attrs.pop("complete", True))

    existing = read_slide_attrs(root, slide_id)
    if existing is not None and not _matches(existing, slide_attrs):
        if not overwrite:
            raise DataError(
                f"{group_path} holds features made with "
                f"{ {k: existing.get(k) for k in IDENTITY_KEYS} }, not "
                f"{ {k: slide_attrs.get(k) for k in IDENTITY_KEYS} }; remove it or pass overwrite=True"
            )
        shutil.rmtree(group_path)
        existing = None
    if existing is not None and existing.get("feat_dim") not in (None, feats.shape[1]):
        raise DataError(
            f"{group_path}: feature dimension {feats.shape[1]} differs from the stored {existing['feat_dim']}"
        )
    if existing is None:
        with atomic_path(group_path) as tmp:
            zarr.open_group(tmp, mode="w", attributes={"format": FORMAT, "magnifications": []})

    for stale in group_path.glob(f".{mag}.*.tmp"):  # left by a killed process
        shutil.rmtree(stale, ignore_errors=True)
    with atomic_path(group_path / mag) as tmp:
        sub = zarr.open_group(tmp, mode="w", attributes=mag_attrs)
        rows = max(1, min(len(feats), _CHUNK_ROWS))
        sub.create_array("feats", data=feats, chunks=(rows, max(1, feats.shape[1])))
        sub.create_array("coords", data=coords, chunks=(rows, 2))

    group = zarr.open_group(group_path, mode="r+")
    merged = dict(group.attrs)
    merged.update(slide_attrs)
    merged.update(
        format=FORMAT,
        histokd_version=__version__,
        slide_id=slide_id_of(slide_id),
        feat_dim=int(feats.shape[1]),
        magnifications=sorted(set(merged.get("magnifications", [])) | {mag}, key=mag_to_mpp),
        complete=complete,
    )
    group.attrs.put(merged)
    return group_path


def mark_complete(root: str | os.PathLike, slide_id: str, complete: bool = True) -> None:
    """Set the ``complete`` flag of a slide group (after its last magnification is written)."""
    import zarr

    group = zarr.open_group(slide_group_path(root, slide_id), mode="r+")
    group.attrs.update(complete=bool(complete))


def _open_zarr_group(path: Path, slide_id: str) -> SlideFeatures:
    import zarr

    try:
        group = zarr.open_group(path, mode="r")
        attrs = dict(group.attrs)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path}: not a readable zarr feature group ({type(exc).__name__}: {exc})") from exc
    mags = attrs.get("magnifications")
    if mags is None:
        raise DataError(f"{path}: zarr group without 'magnifications' attribute; not a histokd feature store")
    mag_attrs = {}
    for mag in mags:
        if not (path / mag / "zarr.json").is_file():
            raise DataError(f"{path}: magnification {mag} listed in the attrs but missing on disk")
        mag_attrs[mag] = dict(group[mag].attrs)

    if not attrs.get("complete", False):
        log.warning("%s: extraction not complete (magnifications so far: %s)", path, ", ".join(mags) or "none")

    def load(mag: str, name: str) -> np.ndarray:
        array = group[mag][name][:]
        return array.astype(np.float32 if name == "feats" else np.int64, copy=False)

    return SlideFeatures(slide_id_of(slide_id), path, attrs, mag_attrs, load)


def open_features(features_path: str | os.PathLike, slide_id: str, default_magnification: str = "20x") -> SlideFeatures:
    """Open the features of ``slide_id`` from a zarr store root or a folder of ``.h5``/``.pt`` bags.

    Parameters
    ----------
    features_path : a histokd store root (``<slide_id>.zarr`` groups), a folder of CLAM/TRIDENT
        ``.h5`` or ``.pt`` files (also CLAM's ``h5_files/`` and ``pt_files/`` sub-folders), or one
        such file / group directly.
    slide_id : matched with or without its slide extension (``X.svs`` finds ``X.zarr``, ``X.h5``,
        ``X.pt``).
    default_magnification : magnification name given to imported bags that do not record one.

    Raises
    ------
    DataError
        No features for the slide, or an unreadable/invalid file (the message names it).
    """
    base = Path(features_path).expanduser()
    if not base.exists():
        raise DataError(f"features path {base} does not exist")
    if base.suffix == ".zarr" and base.is_dir():
        return _open_zarr_group(base, slide_id)
    if base.is_file():
        return importers.open_bag(base, slide_id, default_magnification)
    stem = slide_id_of(slide_id)
    names = dict.fromkeys([stem, str(slide_id)])
    for name in names:
        group = base / f"{name}.zarr"
        if group.is_dir():
            return _open_zarr_group(group, stem)
    found = importers.find_bag(base, list(names))
    if found is not None:
        return importers.open_bag(found, stem, default_magnification)
    raise DataError(
        f"no features for slide {slide_id!r} in {base} (looked for {stem}.zarr, {stem}.h5, {stem}.pt"
        f"{', h5_files/, pt_files/' if base.is_dir() else ''})"
    )


def available_slide_ids(features_path: str | os.PathLike) -> list[str]:
    """Slide ids with features under ``features_path`` (zarr groups, ``.h5`` and ``.pt`` bags)."""
    base = Path(features_path).expanduser()
    if not base.is_dir():
        raise DataError(f"features path {base} is not a directory")
    ids = set()
    for folder in (base, base / "h5_files", base / "pt_files"):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if entry.name.startswith("."):
                continue
            if entry.suffix == ".zarr" and (entry / "zarr.json").is_file():
                ids.add(entry.name[: -len(".zarr")])
            elif entry.suffix in (".h5", ".pt") and entry.is_file():
                ids.add(entry.stem)
    return sorted(ids)
