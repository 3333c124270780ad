"""Tissue detection on a low-resolution level: saturation + Otsu threshold, then morphology."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from histokd_core.slide.reader import Slide

#: Saturation below this is never tissue (white glass, grey dust), whatever Otsu says.
MIN_SATURATION = 0.05


@dataclass(frozen=True)
class TissueMask:
    """Boolean tissue mask of one slide level.

    Attributes
    ----------
    mask : ``(h, w)`` bool, True on tissue.
    level : slide level the mask was computed on.
    downsample_yx : level-0 px per mask px along y and x.
    threshold : saturation threshold used (0..1).
    """

    mask: np.ndarray
    level: int
    downsample_yx: tuple[float, float]
    threshold: float

    @property
    def fraction(self) -> float:
        """Fraction of the slide area covered by tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def box_fractions(self, coords: np.ndarray, size_level0: float) -> np.ndarray:
        """Tissue fraction ``(n,)`` of level-0 squares with top-left ``coords (n, 2)`` ``(x, y)``.

        Uses a summed-area table with area-weighted partial mask pixels, so it is exact for
        the mask as a piecewise-constant image and costs O(1) per box.
        """
        coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
        if len(coords) == 0:
            return np.zeros(0, dtype=np.float32)
        dy, dx = self.downsample_yx
        x0, y0 = coords[:, 0] / dx, coords[:, 1] / dy
        x1, y1 = (coords[:, 0] + size_level0) / dx, (coords[:, 1] + size_level0) / dy
        sat = np.zeros((self.mask.shape[0] + 1, self.mask.shape[1] + 1), dtype=np.float64)
        sat[1:, 1:] = self.mask.astype(np.float64).cumsum(0).cumsum(1)
        covered = _area(sat, y1, x1) - _area(sat, y0, x1) - _area(sat, y1, x0) + _area(sat, y0, x0)
        area = (y1 - y0) * (x1 - x0)
        return np.clip(covered / area, 0.0, 1.0).astype(np.float32)


def _area(sat: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Mask sum over ``[0, y) x [0, x)`` for real-valued ``y, x`` (bilinear in the summed table)."""
    h, w = sat.shape[0] - 1, sat.shape[1] - 1
    y = np.clip(y, 0, h)
    x = np.clip(x, 0, w)
    iy = np.minimum(np.floor(y).astype(np.int64), h - 1) if h else np.zeros_like(y, dtype=np.int64)
    ix = np.minimum(np.floor(x).astype(np.int64), w - 1) if w else np.zeros_like(x, dtype=np.int64)
    fy, fx = y - iy, x - ix
    s00 = sat[iy, ix]
    s01 = sat[iy, ix + 1]
    s10 = sat[iy + 1, ix]
    s11 = sat[iy + 1, ix + 1]
    return s00 * (1 - fy) * (1 - fx) + s01 * (1 - fy) * fx + s10 * fy * (1 - fx) + s11 * fy * fx


def hsv_saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation ``(h, w)`` float32 in 0..1 of an RGB uint8 image: ``(max - min) / max``."""
    mx = rgb.max(axis=-1).astype(np.float32)
    mn = rgb.min(axis=-1).astype(np.float32)
    return np.divide(mx - mn, mx, out=np.zeros_like(mx), where=mx > 0)


def saturation_mask(
    rgb: np.ndarray,
    min_saturation: float = MIN_SATURATION,
    sigma_px: float = 0.0,
    closing_px: int = 2,
    min_object_px: int = 64,
    min_hole_px: int = 64,
) -> tuple[np.ndarray, float]:
    """Tissue mask of an RGB image ``(h, w, 3)`` uint8 and the saturation threshold used.

    Saturation is smoothed with a Gaussian of ``sigma_px`` px (so nuclei and stroma blend into
    one tissue class and Otsu separates tissue from glass, not nuclei from stroma), then
    Otsu-thresholded (floored at ``min_saturation`` so a blank slide gives an empty mask),
    closed with a disk of ``closing_px`` px, and small objects and holes are removed.
    """
    from scipy import ndimage
    from skimage.filters import threshold_otsu
    from skimage.morphology import disk

    saturation = hsv_saturation(rgb)
    if sigma_px > 0:
        saturation = ndimage.gaussian_filter(saturation, sigma_px, mode="nearest")
    if saturation.max() - saturation.min() < 1e-3:
        threshold = max(float(saturation.max()) + 1e-6, min_saturation)
    else:
        threshold = max(float(threshold_otsu(saturation)), min_saturation)
    mask = saturation > threshold
    if closing_px > 0:
        padded = np.pad(mask, closing_px, mode="edge")
        closed = ndimage.binary_closing(padded, disk(closing_px))
        mask = closed[closing_px:-closing_px, closing_px:-closing_px]
    if min_object_px > 0:
        mask = _remove_small(mask, min_object_px)
    if min_hole_px > 0:
        mask = ~_remove_small(~mask, min_hole_px)
    return mask, threshold


def _remove_small(mask: np.ndarray, min_px: int) -> np.ndarray:
    """Drop 8-connected components of ``mask`` smaller than ``min_px`` pixels."""
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_px
    keep[0] = False
    return keep[labels]


def mask_level(slide: Slide, max_side: int = 2048) -> int:
    """The finest level whose longer side is at most ``max_side`` px (else the coarsest level)."""
    for i, (w, h) in enumerate(slide.level_dimensions):
        if max(w, h) <= max_side:
            return i
    return slide.level_count - 1


def tissue_mask(
    slide: Slide,
    level: int | None = None,
    max_side: int = 2048,
    min_saturation: float = MIN_SATURATION,
    smooth_um: float = 8.0,
    min_object_um2: float = 20_000.0,
) -> TissueMask:
    """Detect tissue on a low-resolution level of ``slide``.

    Parameters
    ----------
    slide : an open slide.
    level : level to use; default the finest level no larger than ``max_side`` px.
    min_saturation : saturation floor (0..1) below which nothing is tissue.
    smooth_um : Gaussian smoothing (sigma, um) of the saturation before thresholding.
    min_object_um2 : tissue pieces and holes smaller than this area (um^2) are removed; with no
        mpp the slide is assumed to be at 0.5 um/px for this purpose only.
    """
    level = mask_level(slide, max_side) if level is None else level
    rgb = slide.levels[level].compute()
    ds = slide.level_downsamples[level]
    mpp = slide.mpp if slide.mpp is not None else 0.5
    min_px = int(min_object_um2 / (mpp * ds) ** 2)
    mask, threshold = saturation_mask(
        rgb,
        min_saturation=min_saturation,
        sigma_px=smooth_um / (mpp * ds),
        closing_px=2 if ds * mpp < 16 else 1,
        min_object_px=min_px,
        min_hole_px=min_px,
    )
    w0, h0 = slide.dimensions
    return TissueMask(
        mask=mask,
        level=level,
        downsample_yx=(h0 / mask.shape[0], w0 / mask.shape[1]),
        threshold=threshold,
    )
