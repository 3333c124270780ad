"""Fine heatmaps from overlapping patches: per-pixel averages, no blur, bounded memory.

CLAM draws its fine heatmaps from patches taken at a stride of half or a quarter of the patch
side; each output pixel then shows the mean score of every patch that covers it. This module
does the same for any per-patch values (attention, a pathway's map, a memory component):

* :func:`heatmap_grid` lays out the patches of a heatmap, separately from the training grid:
  stride ``patch / stride_div`` (2 or 4 as in CLAM), its own ``min_tissue`` (default 0.1, not the
  training grid's 0.5) and one extra column / row of whole patches flush with the right /
  bottom edge of the slide, so the strip narrower than a stride is not lost when it holds tissue.
* :func:`fine_map` turns ``(coords, values)`` into a :class:`FineMap`: a multiscale list of lazy
  dask arrays (float32, NaN where no patch), one chunk computed at a time. Pixel ``(r, c)`` of a
  level with downsample ``ds`` stands for the level-0 square ``[c ds, (c+1) ds) x [r ds,
  (r+1) ds)``; it is covered by a patch when its centre ``((c + 0.5) ds, (r + 0.5) ds)`` lies in
  the patch's footprint ``[x, x + P) x [y, y + P)``, and its value is the mean of the values of
  every covering patch. When ``ds`` divides the stride and the patch offsets (a lattice) this is
  the exact per-pixel average; otherwise edges are placed to within half an output pixel.

Memory: each chunk (``tile`` x ``tile`` output pixels) is painted with a 2-D difference array
(four corner updates per covering patch, then two cumulative sums), so a chunk costs
``O(tile^2 + patches)`` time and ``O(tile^2)`` memory; no level-0 array is ever made. A
100k x 100k px slide with 256 px patches at stride 64 is a 3125 x 3125 px map at the default
resolution (32 px: the edge patches sit half a stride off the lattice), 40 MB in float32 if
computed whole, 4 MB per chunk.

Signature for the viewer (napari multiscale image)::

    fm = fine_map(coords, values, patch_size, slide_dimensions, downsample=None)
    layer_data = fm.levels                          # list of dask arrays, finest first
    scale, translate = fm.transform(mpp)            # microns (pixels when mpp is None)
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from functools import partial, reduce

import numpy as np

from histokd_core.errors import DataError
from histokd_core.slide.geometry import Transform, infer_stride

#: output chunk side (pixels of each level).
TILE = 1024
#: a pyramid stops once its coarsest level fits in this many pixels per side.
MIN_LEVEL_SIDE = 512


@dataclass
class FineMap:
    """A per-pixel averaged map of overlapping patches, as a multiscale pyramid.

    Attributes
    ----------
    levels : lazy ``(rows, cols)`` float32 dask arrays, finest first; NaN where no patch covers
        a pixel (or, with a tissue mask, where the pixel's centre is not tissue).
    downsamples : level-0 px per pixel of each level (``downsample * 2**k``).
    slide_dimensions : level-0 ``(width, height)`` px the map covers.
    patch_size : patch side in level-0 px; stride : lattice step in level-0 px.
    n_patches : patches that were averaged.
    """

    levels: list
    downsamples: list[float]
    slide_dimensions: tuple[int, int]
    patch_size: int
    stride: int
    n_patches: int

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the finest level."""
        return tuple(int(v) for v in self.levels[0].shape)  # type: ignore[return-value]

    def transform(self, mpp: float | None) -> Transform:
        """napari ``scale``/``translate`` of the finest level in microns (level-0 px without mpp).

        Pixel centres sit at ``(c + 0.5) ds`` level-0 px; napari's level-0 slide layer has its
        pixel ``i`` centred at ``i`` (corner at ``i - 0.5``), so the map's pixel ``c`` is centred
        at ``(c + 0.5) ds - 0.5`` level-0 px.
        """
        unit = float(mpp) if mpp else 1.0
        ds = self.downsamples[0]
        t = (0.5 * ds - 0.5) * unit
        return Transform(scale=(ds * unit, ds * unit), translate=(t, t))

    def compute(self, level: int = 0) -> np.ndarray:
        """One level as a numpy array (fine for the coarse levels; the finest may be large)."""
        import dask

        with dask.config.set(scheduler="threads"):
            return np.asarray(self.levels[level].compute())


def heatmap_coords(
    dimensions: tuple[int, int], patch_size_level0: int, stride_level0: int
) -> np.ndarray:
    """Top-left ``(x, y)`` ``(n, 2)`` int64 of a heatmap lattice, row-major.

    The lattice of step ``stride_level0`` from the slide origin (whole patches only), plus one
    column at ``x = width - patch`` and one row at ``y = height - patch`` when the lattice does
    not end there, so that every level-0 pixel of the slide is covered by at least one patch. A
    slide narrower than one patch gets the single column ``x = 0`` (read with padding).
    """
    w, h = (int(v) for v in dimensions)
    p, s = int(patch_size_level0), int(stride_level0)
    if p <= 0 or s <= 0:
        raise DataError(f"patch size and stride must be > 0 level-0 px, got {p} and {s}")

    def axis(n: int) -> np.ndarray:
        if n <= p:
            return np.zeros(1, dtype=np.int64)
        a = np.arange(0, n - p + 1, s, dtype=np.int64)
        return a if a[-1] == n - p else np.append(a, n - p)

    gx, gy = np.meshgrid(axis(w), axis(h))
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


def heatmap_grid(
    slide,
    target_mpp: float = 0.5,
    patch_px: int = 256,
    stride_div: int = 4,
    min_tissue: float = 0.1,
    mask=None,
):
    """Patches for a fine heatmap of ``slide`` (a :class:`~histokd_core.slide.PatchGrid`).

    Parameters
    ----------
    slide : an open :class:`~histokd_core.slide.Slide` with a known mpp.
    target_mpp : microns per pixel the patches are read at (as the model's features were).
    patch_px : patch side in px at ``target_mpp`` (as the model's features were).
    stride_div : stride = patch / ``stride_div`` (1, 2 or 4; CLAM uses 2 or 4 for heatmaps).
    min_tissue : keep patches whose tissue fraction is at least this (0..1). Separate from the
        training grid's threshold (0.5): a patch a quarter full of tissue still belongs on the map.
    mask : a precomputed :class:`~histokd_core.slide.TissueMask` (computed when None).

    The grid includes patches flush with the right and bottom edges (:func:`heatmap_coords`).
    """
    from histokd_core.slide import tissue_mask
    from histokd_core.slide.grid import grid_of_patches

    if stride_div not in (1, 2, 4):
        raise DataError(f"stride_div must be 1, 2 or 4 (stride = patch / stride_div), got {stride_div}")
    if not 0.0 <= min_tissue <= 1.0:
        raise DataError(f"min_tissue must be between 0 and 1, got {min_tissue}")
    if target_mpp <= 0 or patch_px <= 0:
        raise DataError(f"target_mpp and patch_px must be > 0, got {target_mpp} and {patch_px}")
    mpp = slide.require_mpp()
    scale = target_mpp / mpp
    size0 = max(1, int(round(patch_px * scale)))
    stride0 = max(1, size0 // stride_div)
    coords = heatmap_coords(slide.dimensions, size0, stride0)
    mask = tissue_mask(slide) if mask is None else mask
    frac = mask.box_fractions(coords, size0)
    keep = frac >= min_tissue if min_tissue > 0 else frac > 0
    return grid_of_patches(
        slide, coords[keep], frac[keep], size0, stride0, target_mpp, patch_px,
        attrs={"heatmap": True, "stride_div": int(stride_div), "min_tissue": float(min_tissue)},
    )


def _spans(coords: np.ndarray, patch_size: int, ds: float) -> np.ndarray:
    """``(n, 4)`` int64 ``[c0, c1, r0, r1)`` output pixels whose centres lie in each footprint."""
    start = np.ceil(coords / ds - 0.5).astype(np.int64)
    stop = np.ceil((coords + patch_size) / ds - 0.5).astype(np.int64)
    return np.stack([start[:, 0], stop[:, 0], start[:, 1], stop[:, 1]], axis=1)


def paint_tile(
    spans: np.ndarray, values: np.ndarray, rows: tuple[int, int], cols: tuple[int, int]
) -> np.ndarray:
    """Mean of ``values`` over the spans covering each pixel of one output tile.

    Parameters
    ----------
    spans : ``(n, 4)`` ``[c0, c1, r0, r1)`` pixel spans of every patch (half-open).
    values : ``(n,)`` float values (NaN values are ignored: they neither add nor count).
    rows, cols : ``[start, stop)`` of the tile in output pixels.

    Returns ``(rows, cols)`` float32, NaN where no patch covers the pixel.
    """
    r0, r1 = rows
    c0, c1 = cols
    th, tw = r1 - r0, c1 - c0
    ok = (
        (spans[:, 0] < c1) & (spans[:, 1] > c0) & (spans[:, 2] < r1) & (spans[:, 3] > r0)
        & (spans[:, 1] > spans[:, 0]) & (spans[:, 3] > spans[:, 2]) & np.isfinite(values)
    )
    if not ok.any():
        return np.full((th, tw), np.nan, dtype=np.float32)
    s, v = spans[ok], values[ok].astype(np.float64)
    a0 = np.clip(s[:, 0] - c0, 0, tw)
    a1 = np.clip(s[:, 1] - c0, 0, tw)
    b0 = np.clip(s[:, 2] - r0, 0, th)
    b1 = np.clip(s[:, 3] - r0, 0, th)
    width = tw + 1
    idx = np.concatenate([b0 * width + a0, b0 * width + a1, b1 * width + a0, b1 * width + a1])
    size = (th + 1) * width
    sign = np.concatenate([np.ones_like(v), -np.ones_like(v), -np.ones_like(v), np.ones_like(v)])
    total = np.bincount(idx, weights=sign * np.tile(v, 4), minlength=size).reshape(th + 1, width)
    count = np.bincount(idx, weights=sign, minlength=size).reshape(th + 1, width)
    total = total.cumsum(0).cumsum(1)[:th, :tw]
    count = np.rint(count.cumsum(0).cumsum(1)[:th, :tw])
    out = np.full((th, tw), np.nan, dtype=np.float32)
    hit = count > 0
    out[hit] = total[hit] / count[hit]
    return out


def _tile_block(spans, values, tissue, ds, block_info=None):
    (r0, r1), (c0, c1) = block_info[None]["array-location"]
    out = paint_tile(spans, values, (r0, r1), (c0, c1))
    if tissue is not None:
        out[~_tissue_at(tissue, ds, (r0, r1), (c0, c1))] = np.nan
    return out


def _tissue_at(tissue, ds: float, rows, cols) -> np.ndarray:
    """Whether each output pixel's centre lies on tissue (nearest mask pixel)."""
    dy, dx = tissue.downsample_yx
    h, w = tissue.mask.shape
    yy = np.clip(((np.arange(*rows) + 0.5) * ds / dy).astype(np.int64), 0, h - 1)
    xx = np.clip(((np.arange(*cols) + 0.5) * ds / dx).astype(np.int64), 0, w - 1)
    return tissue.mask[np.ix_(yy, xx)]


def _default_downsample(coords: np.ndarray, patch_size: int, stride: int) -> int:
    """The gcd of the stride, the patch size and every offset from the first patch (an exact
    resolution), but never finer than a sixteenth of the patch."""
    off = (coords - coords.min(axis=0)).ravel()
    off = np.unique(off[off > 0])[:4096]
    g = reduce(math.gcd, (int(v) for v in off), math.gcd(int(stride), int(patch_size)))
    return max(g, int(math.ceil(patch_size / 16)))


def fine_map(
    coords: np.ndarray,
    values: np.ndarray,
    patch_size: int,
    slide_dimensions: tuple[int, int],
    downsample: float | None = None,
    stride: int | None = None,
    tissue=None,
    tile: int = TILE,
    min_level_side: int = MIN_LEVEL_SIDE,
) -> FineMap:
    """Average per-patch ``values`` per pixel over every patch covering the pixel, as a pyramid.

    Parameters
    ----------
    coords : ``(n, 2)`` level-0 top-left ``(x, y)`` of each patch (overlapping patches welcome).
    values : ``(n,)`` float score of each patch (NaN: patch ignored).
    patch_size : patch side in level-0 px.
    slide_dimensions : level-0 ``(width, height)`` px; the map covers the whole slide.
    downsample : level-0 px per pixel of the finest level; default the stride's exact divisor
        (:func:`_default_downsample`: the stride for a plain lattice, e.g. 64 px for 256 px
        patches at stride 64), at least ``patch_size / 16``.
    stride : lattice step in level-0 px (inferred from ``coords`` when None; only used for the
        default ``downsample``).
    tissue : an optional :class:`~histokd_core.slide.TissueMask`; pixels whose centre is not
        tissue become NaN (so glass covered by an edge patch stays transparent).
    tile : chunk side in output pixels (the unit of work and of memory).
    min_level_side : the pyramid halves until both sides are at most this many pixels.

    Returns
    -------
    :class:`FineMap` whose ``levels[k]`` has downsample ``downsample * 2**k`` and shape
    ``(ceil(height / ds_k), ceil(width / ds_k))``; nothing is computed until a chunk is read.
    """
    import dask.array as da

    c = np.asarray(coords)
    v = np.asarray(values, dtype=np.float64).ravel()
    if c.ndim != 2 or c.shape[1] != 2:
        raise DataError(f"coords: expected shape (n, 2) level-0 (x, y), got {c.shape}")
    if c.shape[0] != v.size:
        raise DataError(f"values: expected {c.shape[0]} values (one per patch), got {v.size}")
    if c.shape[0] == 0:
        raise DataError("coords: no patches to map")
    if not patch_size or patch_size <= 0:
        raise DataError(f"patch_size: expected a positive level-0 pixel size, got {patch_size}")
    w, h = (int(x) for x in slide_dimensions)
    if w <= 0 or h <= 0:
        raise DataError(f"slide_dimensions: expected positive (width, height), got {slide_dimensions}")
    if tile < 16:
        raise DataError(f"tile: expected at least 16 output pixels, got {tile}")
    c = np.rint(c).astype(np.int64)
    patch_size = int(patch_size)
    stride = int(stride) if stride else int(infer_stride(c, patch_size))
    ds0 = float(downsample) if downsample else float(_default_downsample(c, patch_size, stride))
    if ds0 <= 0:
        raise DataError(f"downsample: expected > 0 level-0 px per pixel, got {downsample}")
    levels, downsamples = [], []
    ds = ds0
    while True:
        shape = (int(math.ceil(h / ds)), int(math.ceil(w / ds)))
        spans = _spans(c, patch_size, ds)
        chunks = (min(tile, shape[0]), min(tile, shape[1]))
        lazy = da.map_blocks(
            partial(_tile_block, spans, v, tissue, ds),
            chunks=da.core.normalize_chunks(chunks, shape), dtype=np.float32,
            meta=np.empty((0, 0), np.float32), name=f"fine-map-{uuid.uuid4().hex}",
        )
        levels.append(lazy)
        downsamples.append(ds)
        if max(shape) <= min_level_side or min(shape) <= 1:
            break
        ds *= 2.0
    return FineMap(levels, downsamples, (w, h), patch_size, stride, int(c.shape[0]))
