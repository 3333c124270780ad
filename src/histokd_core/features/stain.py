"""Stain normalisation of patches before they are encoded (Macenko or Reinhard, via torchstain).

Slides from different sites differ in staining, and patch features inherit the difference.
Normalising maps every patch onto one *reference* appearance:

- **Macenko** (Macenko et al., ISBI 2009): per patch, the H and E optical-density vectors and the
  99th-percentile stain concentrations are estimated and the patch is re-synthesised with the
  reference's stain matrix ``HERef (3, 2)`` and maximum concentrations ``maxCRef (2,)``.
- **Reinhard** (Reinhard et al., 2001): per patch, the mean and standard deviation of each LAB
  channel are matched to the reference's ``means (3,)`` and ``stds (3,)``.

The reference is fitted **once per cohort** (:func:`cohort_reference`: a mosaic of tissue patches
sampled from every slide of the cohort), stored as ``stain_reference.json`` at the feature-store
root and in every slide group's attrs, and reused on resume; an external cohort is normalised to
the training cohort's reference by passing that file or the trained checkpoint, which records
the reference its features were made with (``--stain-reference``, :func:`load_reference`).

torchstain implements both methods (ported from the reference implementations) and is
maintained on PyPI; it runs on torch, which the project already needs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histokd_core.errors import DataError

log = logging.getLogger(__name__)

#: Values of ``--stain``.
STAIN_METHODS = ("none", "macenko", "reinhard")
#: File holding the cohort's reference at the feature-store root.
REFERENCE_FILE = "stain_reference.json"
_PARAMS = {"macenko": ("HERef", "maxCRef"), "reinhard": ("means", "stds")}


def check_method(method: str) -> str:
    """``method`` if it is one of :data:`STAIN_METHODS`, else :class:`DataError`."""
    if method not in STAIN_METHODS:
        raise DataError(f"stain normalisation {method!r} is unknown; expected one of {', '.join(STAIN_METHODS)}")
    return method


@dataclass(frozen=True)
class StainReference:
    """A fitted reference appearance.

    Attributes
    ----------
    method : ``"macenko"`` or ``"reinhard"``.
    params : macenko: ``HERef`` (3, 2) optical-density stain vectors (columns H, E) and
        ``maxCRef`` (2,) 99th-percentile concentrations; reinhard: LAB ``means`` (3,) and ``stds``
        (3,) (L in 0..100, a/b centred on 0).
    n_patches : patches the reference was fitted on.
    source : where they came from (e.g. ``"24 slides x 16 patches at 0.5 um/px, seed 0"``).
    """

    method: str
    params: dict[str, list] = field(hash=False)
    n_patches: int = 0
    source: str = ""

    @property
    def id(self) -> str:
        """``"<method>:<12 hex>"``: identifies the reference (stored features must share it)."""
        blob = json.dumps({"method": self.method, "params": self.params}, sort_keys=True)
        return f"{self.method}:{hashlib.sha256(blob.encode()).hexdigest()[:12]}"

    def to_attrs(self) -> dict[str, Any]:
        """JSON-serialisable form (stored in the feature store's attrs)."""
        return {"method": self.method, "params": self.params, "n_patches": self.n_patches,
                "source": self.source, "id": self.id}

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any], where: str = "stain reference") -> StainReference:
        """Rebuild from :meth:`to_attrs`; :class:`DataError` naming ``where`` if malformed."""
        try:
            method = check_method(str(attrs["method"]))
            shapes = {"HERef": (3, 2), "maxCRef": (2,), "means": (3,), "stds": (3,)}
            params = {}
            for key in _PARAMS[method]:
                value = np.asarray(attrs["params"][key], dtype=np.float64)
                if value.shape != shapes[key] or not np.isfinite(value).all():
                    raise ValueError(f"{key} must be finite with shape {shapes[key]}, got {value.shape}")
                params[key] = value.tolist()
            return cls(method, params, int(attrs.get("n_patches", 0)), str(attrs.get("source", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{where}: not a valid stain reference ({exc})") from exc


def mosaic(tiles: np.ndarray) -> np.ndarray:
    """Tiles ``(n, h, w, 3)`` uint8 arranged row-major in a near-square ``(H, W, 3)`` image
    (empty cells white, which both methods ignore or barely weigh)."""
    n, h, w, _ = tiles.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    out = np.full((rows * h, cols * w, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        out[r * h : (r + 1) * h, c * w : (c + 1) * w] = tile
    return out


def _chw(image: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)


def fit_reference(tiles: np.ndarray, method: str, source: str = "") -> StainReference:
    """Fit a ``method`` reference on tissue tiles ``(n, h, w, 3)`` uint8 (one mosaic of them)."""
    check_method(method)
    if method == "none":
        raise DataError("fit_reference: method 'none' has no reference")
    tiles = np.asarray(tiles, dtype=np.uint8)
    if tiles.ndim != 4 or tiles.shape[-1] != 3 or len(tiles) == 0:
        raise DataError(f"fit_reference: expected tiles (n, h, w, 3) uint8 with n > 0, got {tiles.shape}")
    import torch
    from torchstain.torch.normalizers import TorchMacenkoNormalizer, TorchReinhardNormalizer

    image = _chw(mosaic(tiles))
    try:
        if method == "macenko":
            normalizer = TorchMacenkoNormalizer()
            normalizer.fit(image)
            params = {"HERef": normalizer.HERef, "maxCRef": normalizer.maxCRef}
        else:
            normalizer = TorchReinhardNormalizer()
            normalizer.fit(image)
            params = {"means": normalizer.target_means, "stds": normalizer.target_stds}
    except (RuntimeError, IndexError, ValueError) as exc:  # too little tissue to fit
        raise DataError(f"stain reference ({source or 'tiles'}): {method} fit failed ({exc}); "
                        "sample more tissue patches") from exc
    params = {k: torch.as_tensor(v).double().tolist() for k, v in params.items()}
    ref = StainReference(method, params, int(len(tiles)), source)
    return StainReference.from_attrs(ref.to_attrs(), where=source or "fitted reference")


#: Optical density (``Io = 240``) at or above which a channel counts as stained (torchstain's ``beta``).
OD_THRESHOLD = 0.15
#: Tiles with a smaller fraction of tissue pixels (mostly glass) are left as they are.
MIN_TISSUE_FRACTION = 0.1
#: Macenko fits a tile's stain vectors on its pixels stained in *every* channel; a tile with
#: fewer such pixels is left as it is (too few for the eigenvectors and 1 % angle percentiles).
MIN_FIT_PIXELS = 256


def _optical_density(tile: np.ndarray, io: float = 240.0) -> np.ndarray:
    return -np.log((np.asarray(tile).astype(np.float32) + 1.0) / io)


def tissue_fraction(tile: np.ndarray, io: float = 240.0) -> float:
    """Fraction of pixels of ``tile`` ``(h, w, 3)`` uint8 whose optical density reaches
    :data:`OD_THRESHOLD` in at least one channel (glass reaches it in none; pale eosin-stained
    tissue only in green and blue)."""
    return float((_optical_density(tile, io) >= OD_THRESHOLD).any(axis=-1).mean())


def fit_pixel_count(tile: np.ndarray, io: float = 240.0) -> int:
    """Pixels of ``tile`` whose optical density reaches :data:`OD_THRESHOLD` in every channel:
    those Macenko's stain-vector fit uses."""
    return int((_optical_density(tile, io) >= OD_THRESHOLD).all(axis=-1).sum())


class StainNormalizer:
    """Applies a :class:`StainReference` to tiles, ``(h, w, 3)`` uint8 -> ``(h, w, 3)`` uint8.

    A tile with under :data:`MIN_TISSUE_FRACTION` tissue pixels (mostly glass: Macenko's
    percentiles then blow noise up to black, Reinhard tints the glass), a Macenko tile with under
    :data:`MIN_FIT_PIXELS` pixels stained in every channel, or one the method fails on is returned
    unchanged and counted in ``n_unchanged``. Tissue is tested on *any* channel: pale
    eosin-stained tissue absorbs little red, and a test on every channel (the fit's own pixel
    rule) would leave such tiles of one site unnormalised while the same tiles of a site whose
    stain absorbs more red are normalised.
    """

    def __init__(self, reference: StainReference) -> None:
        import torch
        from torchstain.torch.normalizers import TorchMacenkoNormalizer, TorchReinhardNormalizer

        self.reference = reference
        self.n_unchanged = 0
        if reference.method == "macenko":
            self._norm = TorchMacenkoNormalizer()
            self._norm.HERef = torch.tensor(reference.params["HERef"], dtype=torch.float32)
            self._norm.maxCRef = torch.tensor(reference.params["maxCRef"], dtype=torch.float32)
        else:
            self._norm = TorchReinhardNormalizer()
            self._norm.target_means = torch.tensor(reference.params["means"], dtype=torch.float32)
            self._norm.target_stds = torch.tensor(reference.params["stds"], dtype=torch.float32)

    def __call__(self, tile: np.ndarray) -> np.ndarray:
        import torch

        if tissue_fraction(tile) < MIN_TISSUE_FRACTION or (
            self.reference.method == "macenko" and fit_pixel_count(tile) < MIN_FIT_PIXELS
        ):
            self.n_unchanged += 1
            return tile
        try:
            if self.reference.method == "macenko":
                out, _, _ = self._norm.normalize(_chw(tile), stains=False)
            else:
                out = self._norm.normalize(_chw(tile))  # (h, w, 3)
            return out.clamp(0, 255).to(torch.uint8).numpy()
        except (RuntimeError, IndexError, ValueError):
            self.n_unchanged += 1
            return tile


def sample_tissue_tiles(
    slide_path: str | os.PathLike,
    n: int,
    target_mpp: float = 0.5,
    patch_px: int = 256,
    mpp: float | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Up to ``n`` random tissue patches ``(k, patch_px, patch_px, 3)`` uint8 of one slide."""
    from histokd_core.slide import open_slide, patch_grid

    with open_slide(slide_path, mpp=mpp) as slide:
        grid = patch_grid(slide, target_mpp=target_mpp, patch_px=patch_px, min_tissue=0.8)
        if len(grid) == 0:
            return np.zeros((0, patch_px, patch_px, 3), np.uint8)
        rng = np.random.default_rng(seed)
        picks = rng.choice(len(grid), size=min(n, len(grid)), replace=False)
        ds = slide.level_downsamples[grid.read_level]
        size = max(1, int(round(grid.patch_size_level0 / ds)))
        tiles = []
        for i in sorted(picks):
            x, y = (int(v) for v in grid.coords[i])
            tile = slide.read_region((x, y), grid.read_level, (size, size))
            if size != patch_px:
                from skimage.transform import resize

                tile = (resize(tile, (patch_px, patch_px, 3), preserve_range=True, anti_aliasing=True) + 0.5).astype(np.uint8)
            tiles.append(tile)
    return np.stack(tiles)


def stain_id(reference: StainReference | None) -> str:
    """The ``stain`` attribute of features normalised to ``reference`` (``"none"`` without one)."""
    return reference.id if reference is not None else "none"


def reference_from_meta(meta: dict[str, Any], where: str) -> StainReference | None:
    """The stain reference a checkpoint's features were normalised to (``None``: not normalised).

    ``meta`` is the checkpoint metadata; its ``data_info`` records ``stain`` (the features'
    :func:`stain_id`) and ``stain_reference`` (:meth:`StainReference.to_attrs`). A checkpoint
    written before these were recorded was trained on unnormalised features.
    """
    info = meta.get("data_info", {}) if isinstance(meta, dict) else {}
    stain = str(info.get("stain", "none"))
    if stain == "none":
        return None
    attrs = info.get("stain_reference") or {}
    if not attrs:
        raise DataError(f"{where}: trained on features normalised with {stain}, but the reference "
                        "parameters are not recorded")
    ref = StainReference.from_attrs(attrs, where=f"{where} (stain reference)")
    if ref.id != stain:
        raise DataError(f"{where}: records stain {stain} but its reference parameters give {ref.id}")
    return ref


def load_reference(path: str | os.PathLike) -> StainReference | None:
    """A stain reference from a ``stain_reference.json``, a checkpoint (``.safetensors``) or the
    checkpoint's ``.json`` beside it. ``None`` for a checkpoint trained on unnormalised features.

    Raises :class:`DataError` naming the file when it is missing, unreadable or malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such stain reference file")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="np") as f:
                attrs = json.loads((f.metadata() or {})["histokd"])
        else:
            attrs = json.loads(path.read_text())
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: cannot read the stain reference ({type(exc).__name__}: {exc})") from exc
    if not isinstance(attrs, dict):
        raise DataError(f"{path}: not a stain reference (a JSON object was expected)")
    if "data_info" in attrs:  # checkpoint metadata
        return reference_from_meta(attrs, str(path))
    return StainReference.from_attrs(attrs, where=str(path))


def resolve_reference(
    slides: Sequence[str | os.PathLike],
    method: str,
    root: str | os.PathLike | None = None,
    reference_file: str | os.PathLike | None = None,
    overwrite: bool = False,
    per_slide: int = 16,
    target_mpp: float = 0.5,
    patch_px: int = 256,
    mpp: float | None = None,
    seed: int = 0,
) -> StainReference | None:
    """The stain reference an extraction into ``root`` uses, without writing it.

    Order: ``reference_file`` if given (:func:`load_reference`: e.g. the training cohort's
    ``stain_reference.json`` or the trained checkpoint itself); else ``<root>/stain_reference.json``
    from an earlier run (resume); else fitted on ``per_slide`` random tissue patches of every slide.
    ``None`` for ``method="none"``. A stored reference of another method, or one stored where
    ``"none"`` is asked, is a :class:`DataError` (features of one store share one normalisation)
    unless ``overwrite`` (the store's slides are then to be extracted again).
    """
    check_method(method)
    stored = Path(root) / REFERENCE_FILE if root is not None else None
    stored_ref = None
    if stored is not None and stored.is_file():
        stored_ref = load_reference(stored)
    if method == "none":
        if reference_file is not None:
            given = load_reference(reference_file)
            if given is not None:
                raise DataError(f"{reference_file}: holds a {given.method} stain reference, but --stain none was asked")
        if stored_ref is not None and not overwrite:
            raise DataError(
                f"{stored}: the feature store's features are normalised with {stored_ref.id}; "
                "--stain none would mix unnormalised features into it: use another output folder, "
                f"--stain {stored_ref.method}, or --overwrite to extract its slides again"
            )
        return None
    if reference_file is not None:
        ref = load_reference(reference_file)
        if ref is None:
            raise DataError(f"{reference_file}: the model was trained on features without stain "
                            f"normalisation, but --stain {method} was asked; use --stain none")
        if ref.method != method:
            raise DataError(f"{reference_file}: holds a {ref.method} stain reference, but --stain {method} was asked")
        return ref
    if stored_ref is not None:
        if stored_ref.method == method:
            return stored_ref
        if not overwrite:
            raise DataError(f"{stored}: holds a {stored_ref.method} stain reference, but --stain {method} was asked")
    tiles = [sample_tissue_tiles(s, per_slide, target_mpp, patch_px, mpp, seed + i) for i, s in enumerate(slides)]
    tiles = [t for t in tiles if len(t)]
    if not tiles:
        raise DataError("stain reference: no tissue patch found in any slide")
    source = f"{len(tiles)} slides x up to {per_slide} tissue patches at {target_mpp} um/px, seed {seed}"
    ref = fit_reference(np.concatenate(tiles), method, source)
    log.info("stain reference %s fitted on %s", ref.id, source)
    return ref


def save_reference(root: str | os.PathLike, reference: StainReference | None, overwrite: bool = False) -> None:
    """Keep ``reference`` as ``<root>/stain_reference.json`` (atomic; nothing for ``None``).

    Another reference already there is a :class:`DataError` naming both, unless ``overwrite``
    (it is then replaced; with ``reference=None`` removed).
    """
    from histokd_core.io import atomic_write_text

    path = Path(root) / REFERENCE_FILE
    if path.is_file():
        old = load_reference(path)
        if reference is not None and old is not None and old.id == reference.id:
            return
        if not overwrite:
            raise DataError(
                f"{path}: the feature store already holds the stain reference {old.id if old else '?'}, "
                f"not {stain_id(reference)}; use another output folder so features normalised "
                "differently are not mixed"
            )
        if reference is None:
            path.unlink()
    if reference is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(reference.to_attrs(), indent=1))


def cohort_reference(
    slides: Sequence[str | os.PathLike],
    method: str,
    root: str | os.PathLike | None = None,
    reference_file: str | os.PathLike | None = None,
    per_slide: int = 16,
    target_mpp: float = 0.5,
    patch_px: int = 256,
    mpp: float | None = None,
    seed: int = 0,
) -> StainReference | None:
    """The cohort's stain reference, loaded or fitted once (:func:`resolve_reference`) and kept
    at ``<root>/stain_reference.json`` (:func:`save_reference`) when ``root`` is given."""
    ref = resolve_reference(slides, method, root, reference_file, per_slide=per_slide,
                            target_mpp=target_mpp, patch_px=patch_px, mpp=mpp, seed=seed)
    if root is not None:
        save_reference(root, ref)
    return ref
