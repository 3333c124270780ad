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
the training cohort's reference by passing that file (``--stain-reference``).

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


#: Optical density below which a channel counts as unstained (torchstain's ``beta``).
OD_THRESHOLD = 0.15
#: Tiles with a smaller fraction of stained pixels are left as they are (see StainNormalizer).
MIN_STAINED_FRACTION = 0.1


def stained_fraction(tile: np.ndarray, io: float = 240.0) -> float:
    """Fraction of pixels whose optical density exceeds :data:`OD_THRESHOLD` in every channel."""
    od = -np.log((tile.astype(np.float32) + 1.0) / io)
    return float((od >= OD_THRESHOLD).all(axis=-1).mean())


class StainNormalizer:
    """Applies a :class:`StainReference` to tiles, ``(h, w, 3)`` uint8 -> ``(h, w, 3)`` uint8.

    A tile with under :data:`MIN_STAINED_FRACTION` stained pixels (mostly glass: Macenko's
    percentiles then blow noise up to black, Reinhard tints the glass) or one the method fails on
    is returned unchanged and counted in ``n_unchanged``.
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

        if stained_fraction(tile) < MIN_STAINED_FRACTION:
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
    """The cohort's stain reference: loaded or fitted once, and kept at the store root.

    Order: ``reference_file`` if given (e.g. the training cohort's, for an external cohort);
    else ``<root>/stain_reference.json`` from an earlier run (resume); else fitted on
    ``per_slide`` random tissue patches of every slide and written there atomically. Returns
    ``None`` for ``method="none"``. A stored reference of another method is a
    :class:`DataError` (features of one store must share one normalisation).
    """
    from histokd_core.io import atomic_write_text

    check_method(method)
    if method == "none":
        if reference_file is not None:
            raise DataError("--stain-reference given with --stain none; choose macenko or reinhard")
        return None
    stored = Path(root) / REFERENCE_FILE if root is not None else None
    for path in (reference_file, stored):
        if path is not None and Path(path).is_file():
            try:
                attrs = json.loads(Path(path).read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise DataError(f"{path}: cannot read the stain reference ({exc})") from exc
            ref = StainReference.from_attrs(attrs, where=str(path))
            if ref.method != method:
                raise DataError(f"{path}: holds a {ref.method} stain reference, but --stain {method} was asked")
            if path == reference_file and stored is not None:
                _store(stored, ref, atomic_write_text)
            return ref
        if path is not None and path == reference_file:
            raise DataError(f"{path}: no such stain reference file")
    tiles = [sample_tissue_tiles(s, per_slide, target_mpp, patch_px, mpp, seed + i) for i, s in enumerate(slides)]
    tiles = [t for t in tiles if len(t)]
    if not tiles:
        raise DataError("stain reference: no tissue patch found in any slide")
    source = f"{len(tiles)} slides x up to {per_slide} tissue patches at {target_mpp} um/px, seed {seed}"
    ref = fit_reference(np.concatenate(tiles), method, source)
    if stored is not None:
        _store(stored, ref, atomic_write_text)
    log.info("stain reference %s fitted on %s", ref.id, source)
    return ref


def _store(path: Path, ref: StainReference, write) -> None:
    if path.is_file():
        try:
            if json.loads(path.read_text()).get("id") == ref.id:
                return
        except (OSError, json.JSONDecodeError):
            pass
        raise DataError(
            f"{path}: the feature store already holds another stain reference; use another output "
            "folder so features normalised differently are not mixed"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path, json.dumps(ref.to_attrs(), indent=1))
