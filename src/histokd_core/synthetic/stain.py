"""Planted per-site stain shifts: re-stain an RGB image or a whole slide as another lab would.

Colour follows Beer-Lambert: the optical density ``OD = -ln((I + 1) / 256)`` of a pixel is a
sum of stain vectors times concentrations. An image is decomposed on the Ruifrok-Johnston H&E
vectors (plus their cross product for the residual), each stain's concentration is scaled by a
gain, and the image is re-composed with the site's own (rotated) stain vectors. The identity
shift reproduces the input up to rounding. This is the kind of difference stain normalisation
is meant to remove, so the benchmark plants it and measures what normalisation leaves.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Ruifrok & Johnston (2001) optical-density vectors of haematoxylin and eosin (unit length).
HEMATOXYLIN = np.array([0.650, 0.704, 0.286])
EOSIN = np.array([0.072, 0.990, 0.105])


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _matrix(h: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Rows: H, E and their normalised cross product (the residual channel)."""
    h, e = _unit(h), _unit(e)
    return np.stack([h, e, _unit(np.cross(h, e))])


@dataclass(frozen=True)
class StainShift:
    """A site's staining relative to the reference protocol.

    Attributes
    ----------
    hematoxylin, eosin : the site's OD vectors (3,), any length (normalised here).
    h_gain, e_gain : multipliers of the haematoxylin and eosin concentrations.
    """

    hematoxylin: tuple[float, float, float] = tuple(HEMATOXYLIN)
    eosin: tuple[float, float, float] = tuple(EOSIN)
    h_gain: float = 1.0
    e_gain: float = 1.0

    @classmethod
    def tilted(cls, strength: float) -> StainShift:
        """A reproducible shift of size ``strength`` (0 = none, 1 = strong): haematoxylin tilted
        towards blue-grey and eosin towards orange, more haematoxylin and less eosin."""
        s = float(strength)
        return cls(
            hematoxylin=tuple(_unit(HEMATOXYLIN + s * np.array([0.25, 0.05, -0.20]))),
            eosin=tuple(_unit(EOSIN + s * np.array([-0.05, 0.0, 0.45]))),
            h_gain=1.0 + 0.45 * s,
            e_gain=1.0 - 0.35 * s,
        )


def restain(image: np.ndarray, shift: StainShift, io: float = 256.0) -> np.ndarray:
    """Apply ``shift`` to an ``(..., 3)`` uint8 RGB image; returns uint8 of the same shape.

    ``io`` is the transmitted (glass) intensity of the Beer-Lambert model, ``OD = -ln((I + 1) / io)``.
    With the default 256, near-white glass has a small optical density that the shift re-stains
    (the synthetic slides' glass, ~243, turns blue under ``StainShift.tilted(1.0)``); glass of
    intensity ``io`` has none and keeps its colour.
    """
    rgb = np.asarray(image)
    od = -np.log((rgb.astype(np.float64) + 1.0) / io).reshape(-1, 3)
    concentrations = od @ np.linalg.inv(_matrix(HEMATOXYLIN, EOSIN))
    concentrations[:, 0] *= shift.h_gain
    concentrations[:, 1] *= shift.e_gain
    out = io * np.exp(-(concentrations @ _matrix(np.array(shift.hematoxylin), np.array(shift.eosin)))) - 1.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(rgb.shape)


def write_restained_slide(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    shift: StainShift,
    tile: int = 256,
    quality: int = 90,
    io: float = 256.0,
) -> Path:
    """Re-stain every pixel of slide ``src`` (:func:`restain` with ``io``) and write a pyramidal
    tiled JPEG TIFF at ``dst``.

    Level 0 is read whole (meant for the benchmark's small synthetic slides), re-stained, and
    written with halved SubIFD levels and the same mpp; the write is atomic.
    """
    import tifffile

    from histokd_core.io import atomic_path
    from histokd_core.slide import open_slide

    with open_slide(src) as slide:
        level0 = restain(slide.levels[0].compute(), shift, io)
        mpp = slide.require_mpp()
    levels = [level0]
    while max(levels[-1].shape[:2]) > tile:
        prev = levels[-1]
        h, w = prev.shape[0] // 2, prev.shape[1] // 2
        block = prev[: 2 * h, : 2 * w].reshape(h, 2, w, 2, 3).astype(np.uint16)
        levels.append(((block.sum(axis=(1, 3)) + 2) // 4).astype(np.uint8))
    resolution = (1e4 / mpp, 1e4 / mpp)  # pixels per centimetre
    options = dict(photometric="rgb", tile=(tile, tile), compression="jpeg",
                   compressionargs={"level": quality}, resolutionunit="CENTIMETER")
    dst = Path(dst)
    with atomic_path(dst) as tmp, tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        tw.write(levels[0], subifds=len(levels) - 1, resolution=resolution, **options)
        for k, level in enumerate(levels[1:], start=1):
            tw.write(level, subfiletype=1, resolution=(resolution[0] / 2**k, resolution[1] / 2**k), **options)
    return dst
