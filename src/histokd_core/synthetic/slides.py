"""Synthetic whole-slide images: pyramidal, tiled, JPEG-compressed TIFFs with H&E-like texture.

The image is a procedural function of level-0 coordinates, so every tile of every pyramid level is
rendered on its own (bounded memory, up to 100k x 100k px and beyond) and the same seed always
gives the same slide. Tissue is a smooth random blob on white glass; on top of it sit *planted
regions* (rectangles in level-0 px) whose morphology is set by a kind and an intensity knob:

- ``"tumor"``: large, dense, dark and pleomorphic nuclei with a purple cytoplasm halo;
- ``"immune"``: packed small, round, very dark lymphocyte nuclei;
- ``"stroma"``: few nuclei, strongly striated pink collagen;
- ``"necrosis"``: pale eosinophilic area with small nuclear fragments.

``intensity`` blends a region between normal tissue (0) and the full pattern (1), so later issues
can tune how visible a planted signal is.
"""

from __future__ import annotations

import collections
import concurrent.futures
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

from histokd_core.io import atomic_path

#: Morphology kinds a planted region can have.
REGION_KINDS: tuple[str, ...] = ("tumor", "immune", "stroma", "necrosis")

_BACKGROUND_RGB = np.array([243.0, 242.0, 246.0], dtype=np.float32)
_CELL_A_UM = 9.0  # lattice of small nuclei (lymphocytes, fibroblasts)
_CELL_B_UM = 16.0  # lattice of large nuclei (epithelial / tumour cells)
_FIBRE_PERIOD_UM = 6.0


@dataclass(frozen=True)
class PlantedRegion:
    """A rectangle of level-0 pixels ``[y0, y1) x [x0, x1)`` with a planted morphology.

    Parameters
    ----------
    kind : one of ``REGION_KINDS``.
    y0, x0, y1, x1 : level-0 pixel bounds (top-left inclusive, bottom-right exclusive).
    intensity : 0 (looks like normal tissue) .. 1 (full pattern); values above 1 exaggerate.
    """

    kind: str
    y0: int
    x0: int
    y1: int
    x1: int
    intensity: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in REGION_KINDS:
            raise ValueError(f"PlantedRegion.kind must be one of {REGION_KINDS}, got {self.kind!r}")
        if not (self.y1 > self.y0 and self.x1 > self.x0):
            raise ValueError(f"PlantedRegion bounds are empty: {self}")
        if self.intensity < 0:
            raise ValueError(f"PlantedRegion.intensity must be >= 0, got {self.intensity}")

    @property
    def bounds_xywh(self) -> tuple[int, int, int, int]:
        """``(x, y, width, height)`` in level-0 px."""
        return self.x0, self.y0, self.x1 - self.x0, self.y1 - self.y0

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Boolean mask of level-0 points ``(x, y)`` inside the region."""
        return (x >= self.x0) & (x < self.x1) & (y >= self.y0) & (y < self.y1)

    def overlap_fraction(self, coords_xy: np.ndarray, patch_size_level0: int) -> np.ndarray:
        """Fraction ``(n,)`` of each square patch (level-0 top-left ``(x, y)``) in the region."""
        c = np.asarray(coords_xy, dtype=np.float64).reshape(-1, 2)
        p = float(patch_size_level0)
        ox = np.clip(np.minimum(c[:, 0] + p, self.x1) - np.maximum(c[:, 0], self.x0), 0, None)
        oy = np.clip(np.minimum(c[:, 1] + p, self.y1) - np.maximum(c[:, 1], self.y0), 0, None)
        return ox * oy / (p * p)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "y0": self.y0,
            "x0": self.x0,
            "y1": self.y1,
            "x1": self.x1,
            "intensity": self.intensity,
        }


@dataclass(frozen=True)
class SyntheticSlide:
    """What :func:`write_synthetic_slide` wrote.

    ``size_hw`` is level 0 ``(height, width)`` px, ``level_dimensions`` lists ``(width, height)``
    per pyramid level (openslide order), ``regions`` the planted regions in level-0 px.
    """

    path: Path
    size_hw: tuple[int, int]
    mpp: float
    seed: int
    tile: int
    regions: tuple[PlantedRegion, ...]
    level_dimensions: tuple[tuple[int, int], ...] = field(default=())

    @property
    def magnification(self) -> float:
        return 10.0 / self.mpp


@dataclass(frozen=True)
class _Style:
    """Rendering parameters of one tissue type; every field blends linearly with intensity."""

    density_a: float  # probability that a small-lattice cell holds a nucleus
    radius_a_um: float
    density_b: float  # probability that a large-lattice cell holds a nucleus
    radius_b_um: float
    halo: float  # cytoplasm halo strength around large nuclei
    fibre: float  # collagen striation amplitude
    stroma_rgb: tuple[float, float, float]
    nucleus_rgb: tuple[float, float, float]
    cytoplasm_rgb: tuple[float, float, float]

    def vector(self) -> np.ndarray:
        return np.array(
            [
                self.density_a,
                self.radius_a_um,
                self.density_b,
                self.radius_b_um,
                self.halo,
                self.fibre,
                *self.stroma_rgb,
                *self.nucleus_rgb,
                *self.cytoplasm_rgb,
            ],
            dtype=np.float32,
        )


# density_a, radius_a_um, density_b, radius_b_um, halo, fibre, stroma, nucleus, cytoplasm RGB
_NORMAL = _Style(0.22, 2.4, 0.10, 3.6, 0.2, 0.25, (236, 168, 200), (120, 78, 160), (222, 170, 212))
_STYLES: dict[str, _Style] = {
    "tumor": _Style(0.05, 2.4, 0.92, 5.6, 1.0, 0.05, (214, 150, 200), (72, 30, 112), (196, 132, 196)),  # noqa: E501
    "immune": _Style(0.95, 3.2, 0.0, 3.6, 0.0, 0.05, (226, 160, 205), (48, 22, 98), (222, 170, 212)),  # noqa: E501
    "stroma": _Style(0.05, 1.6, 0.02, 3.0, 0.0, 0.85, (246, 150, 182), (128, 84, 160), (222, 170, 212)),  # noqa: E501
    "necrosis": _Style(0.35, 1.0, 0.0, 3.0, 0.0, 0.0, (238, 196, 214), (150, 96, 170), (230, 196, 214)),  # noqa: E501
}
# column indices into _Style.vector()
_DA, _RA, _DB, _RB, _HALO, _FIBRE = range(6)
_STROMA, _NUC, _CYTO = slice(6, 9), slice(9, 12), slice(12, 15)


def _style_table(regions: Sequence[PlantedRegion]) -> np.ndarray:
    """``(1 + n_regions, 15)`` parameter rows: row 0 is normal tissue, row i the i-th region."""
    base = _NORMAL.vector()
    rows = [base]
    for r in regions:
        rows.append(base + np.float32(r.intensity) * (_STYLES[r.kind].vector() - base))
    table = np.stack(rows)
    table[:, [_DA, _DB]] = np.clip(table[:, [_DA, _DB]], 0.0, 1.0)
    table[:, _STROMA.start:] = np.clip(table[:, _STROMA.start:], 0.0, 255.0)
    return table


def _hash_uniform(iy: np.ndarray, ix: np.ndarray, seed: int, salt: int) -> np.ndarray:
    """Deterministic uniform [0, 1) values for integer lattice cells (a 64-bit mixing hash)."""
    h = (iy.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ (
        ix.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
    )
    h ^= np.uint64((seed * 0x165667B19E3779F9 + salt * 0x27D4EB2F165667C5) & 0xFFFFFFFFFFFFFFFF)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


class _ValueNoise:
    """Smooth 2-D noise: random values on a lattice of spacing ``step`` px, cosine-interpolated."""

    def __init__(self, rng: np.random.Generator, size_hw: tuple[int, int], step: float) -> None:
        self.step = float(step)
        ny = int(math.ceil(size_hw[0] / self.step)) + 2
        nx = int(math.ceil(size_hw[1] / self.step)) + 2
        self.values = rng.random((ny, nx), dtype=np.float32)

    def grid(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Noise on the grid of 1-D coordinates ``y (th,)`` x ``x (tw,)``: a separable product.

        Interpolation is separable, so the block is ``Wy @ V @ Wx.T`` with sparse weight
        matrices, far cheaper than evaluating every pixel on its own.
        """
        wy, y0, y1 = self._weights(y, self.values.shape[0])
        wx, x0, x1 = self._weights(x, self.values.shape[1])
        return (wy @ self.values[y0:y1, x0:x1] @ wx.T).astype(np.float32)

    def _weights(self, t: np.ndarray, n: int) -> tuple[np.ndarray, int, int]:
        f = t / self.step
        i = np.clip(np.floor(f).astype(np.int64), 0, n - 2)
        frac = (1 - np.cos(np.pi * np.clip(f - i, 0, 1))) / 2
        lo, hi = int(i.min()), int(i.max()) + 2
        w = np.zeros((t.size, hi - lo), dtype=np.float32)
        rows = np.arange(t.size)
        w[rows, i - lo] = 1 - frac
        w[rows, i - lo + 1] = frac
        return w, lo, hi


class _Renderer:
    """Renders any rectangle of any pyramid level from level-0 procedural definitions."""

    def __init__(
        self,
        size_hw: tuple[int, int],
        mpp: float,
        regions: Sequence[PlantedRegion],
        seed: int,
        tissue: bool,
    ) -> None:
        self.h, self.w = size_hw
        self.mpp = mpp
        self.seed = seed
        self.regions = tuple(regions)
        self.tissue = tissue
        self.styles = _style_table(self.regions)
        rng = np.random.default_rng(seed)
        side = min(self.h, self.w)
        self.shape_noise = (
            _ValueNoise(rng, size_hw, side / 3.0),
            _ValueNoise(rng, size_hw, side / 12.0),
        )
        self.angle_noise = _ValueNoise(rng, size_hw, max(64.0, 400.0 / mpp))
        self.cell_a = _CELL_A_UM / mpp
        self.cell_b = _CELL_B_UM / mpp
        self.fibre_period = _FIBRE_PERIOD_UM / mpp

    def _style_index(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Index into the style table for level-0 points (the last listed region wins)."""
        idx = np.zeros(np.broadcast_shapes(y.shape, x.shape), dtype=np.intp)
        for i, r in enumerate(self.regions, start=1):
            idx[r.contains(x, y)] = i
        return idx

    def _tissue(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Tissue mask on the grid ``y (th, 1)`` x ``x (1, tw)``: a noisy elliptical blob."""
        if not self.tissue:
            return np.zeros((y.size, x.size), dtype=bool)
        ey = (y / self.h - 0.5) * 2
        ex = (x / self.w - 0.5) * 2
        envelope = 1.0 - (ey**2 + ex**2)
        yv, xv = y.ravel(), x.ravel()
        noise = 0.45 * self.shape_noise[0].grid(yv, xv) + 0.2 * self.shape_noise[1].grid(yv, xv)
        return 0.7 * envelope + noise > 0.45

    def _nuclei(self, y, x, cell, dens_col, rad_col, salt, ds, pixel_params):
        """Per-pixel nucleus alpha and cytoplasm-halo alpha ``(th, tw)`` for one nucleus lattice.

        When a pixel covers several cells, alpha fades to the expected nuclear coverage (no
        aliasing speckle); once it covers a whole cell only the expectation is computed, so
        coarse levels of huge slides cost no more than fine ones.
        """
        w = float(np.clip((ds - 0.25 * cell) / (0.75 * cell), 0, 1))
        shape = (y.size, x.size)
        radius_px = pixel_params[..., rad_col] / self.mpp
        cov = pixel_params[..., dens_col] * np.pi * radius_px**2 / cell**2
        cov = np.broadcast_to(np.minimum(cov, 1.0), shape).astype(np.float32)
        halo_cov = np.minimum(2.25 * cov, 1.0)
        if w >= 1:
            return cov, halo_cov
        iy = np.floor(y / cell).astype(np.int64)  # (th, 1)
        ix = np.floor(x / cell).astype(np.int64)  # (1, tw)
        cy0, cx0 = int(iy.min()), int(ix.min())
        gy = np.arange(cy0, int(iy.max()) + 1)[:, None]
        gx = np.arange(cx0, int(ix.max()) + 1)[None, :]
        centre_y = (gy + 0.5) * cell
        centre_x = (gx + 0.5) * cell
        cell_style = self._style_index(centre_y, centre_x)
        uniform = cell_style.min() == cell_style.max()
        params = self.styles[cell_style[0, 0]] if uniform else self.styles[cell_style]
        u = [_hash_uniform(gy, gx, self.seed, salt + k) for k in range(4)]
        present = u[0] < params[..., dens_col]
        radius = params[..., rad_col] / self.mpp * (0.8 + 0.4 * u[1])
        radius = np.minimum(radius, 0.45 * cell)
        slack = np.maximum(0.5 * cell - radius, 0.0)
        ny = centre_y + (2 * u[2] - 1) * slack
        nx = centre_x + (2 * u[3] - 1) * slack
        ly, lx = iy - cy0, ix - cx0
        radius = np.broadcast_to(radius, present.shape)
        d = np.hypot((y - ny[ly, lx]).astype(np.float32), (x - nx[ly, lx]).astype(np.float32))
        r = radius[ly, lx]
        p = present[ly, lx]
        aa = max(1.0, ds)
        alpha = np.clip((r - d) / aa + 0.5, 0, 1) * p
        halo = np.clip((np.minimum(1.5 * r, 0.5 * cell) - d) / aa + 0.5, 0, 1) * p
        if w > 0:
            alpha = (1 - w) * alpha + w * cov
            halo = (1 - w) * halo + w * halo_cov
        return alpha.astype(np.float32), halo.astype(np.float32)

    def render(
        self, level_shape_hw: tuple[int, int], row0: int, col0: int, th: int, tw: int, key: tuple
    ) -> np.ndarray:
        """RGB uint8 ``(th, tw, 3)`` block of a level of shape ``level_shape_hw``."""
        dsy = self.h / level_shape_hw[0]
        dsx = self.w / level_shape_hw[1]
        ds = 0.5 * (dsy + dsx)
        y = ((np.arange(row0, row0 + th, dtype=np.float64) + 0.5) * dsy - 0.5)[:, None]
        x = ((np.arange(col0, col0 + tw, dtype=np.float64) + 0.5) * dsx - 0.5)[None, :]
        inside = (y < self.h) & (x < self.w)
        style = self._style_index(y, x)
        tissue = self._tissue(y, x) | (style > 0)
        rng = np.random.default_rng([self.seed, *key])
        grain = rng.standard_normal((th, tw, 1), dtype=np.float32)
        out = np.broadcast_to(_BACKGROUND_RGB, (th, tw, 3)) + 2.0 * grain
        if tissue.any():
            out = np.where(tissue[..., None], self._tissue_rgb(y, x, style, ds, grain), out)
        out = np.where(inside[..., None], out, np.float32(0))
        return np.clip(out, 0, 255).astype(np.uint8)

    def _tissue_rgb(self, y, x, style, ds, grain) -> np.ndarray:
        """H&E colours ``(th, tw, 3)`` float32 of stroma, cytoplasm and nuclei."""
        uniform = style.min() == style.max()
        params = self.styles[style.flat[0]] if uniform else self.styles[style]
        angle = self.angle_noise.grid(y.ravel(), x.ravel()) * np.float32(2 * np.pi)
        yf, xf = y.astype(np.float32), x.astype(np.float32)
        wavenumber = np.float32(2 * np.pi / self.fibre_period)
        phase = (xf * np.cos(angle) + yf * np.sin(angle)) * wavenumber
        fibre_amp = params[..., _FIBRE] * np.float32(max(0.0, 1.0 - ds / self.fibre_period))
        fibre = (fibre_amp * (0.5 + 0.5 * np.sin(phase)))[..., None]
        stroma = params[..., _STROMA] * (1 - 0.12 * fibre) - 18.0 * fibre

        alpha_a, _ = self._nuclei(y, x, self.cell_a, _DA, _RA, 101, ds, params)
        alpha_b, halo_b = self._nuclei(y, x, self.cell_b, _DB, _RB, 211, ds, params)
        halo = (halo_b * params[..., _HALO])[..., None]
        rgb = stroma * (1 - halo) + params[..., _CYTO] * halo
        nuc = np.maximum(alpha_a, alpha_b)[..., None]
        chromatin = params[..., _NUC] * (1 + 0.06 * grain)
        return rgb * (1 - nuc) + chromatin * nuc + 4.0 * grain


def level_shapes(size_hw: tuple[int, int], tile: int) -> list[tuple[int, int]]:
    """Pyramid level shapes ``(h, w)``: halve until the level fits in one tile."""
    h, w = size_hw
    shapes = [(h, w)]
    while max(h, w) > tile:
        h, w = max(1, h // 2), max(1, w // 2)
        shapes.append((h, w))
    return shapes


def default_regions(size_hw: tuple[int, int], seed: int = 0) -> tuple[PlantedRegion, ...]:
    """One tumour and one immune region near the slide centre, each about 1/6 of the short side."""
    h, w = size_hw
    rng = np.random.default_rng(seed + 7919)
    side = max(8, min(h, w) // 6)
    regions = []
    for kind, (cy, cx) in zip(("tumor", "immune"), ((0.42, 0.36), (0.58, 0.64))):
        y0 = int(np.clip(cy * h + rng.uniform(-0.04, 0.04) * h - side / 2, 0, h - side))
        x0 = int(np.clip(cx * w + rng.uniform(-0.04, 0.04) * w - side / 2, 0, w - side))
        regions.append(PlantedRegion(kind, y0, x0, y0 + side, x0 + side, 1.0))
    return tuple(regions)


def _ordered_tiles(render, jobs: Iterator[tuple], workers: int) -> Iterator[np.ndarray]:
    """Yield ``render(*job)`` in order, computing at most ``2 * workers`` tiles ahead."""
    if workers <= 1:
        for job in jobs:
            yield render(*job)
        return
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending: collections.deque = collections.deque()
        for job in jobs:
            pending.append(pool.submit(render, *job))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def write_synthetic_slide(
    path: str | os.PathLike,
    size_hw: tuple[int, int] = (4096, 4096),
    mpp: float = 0.5,
    regions: Sequence[PlantedRegion] | None = None,
    seed: int = 0,
    tile: int = 256,
    quality: int = 85,
    tissue: bool = True,
    overwrite: bool = False,
    workers: int | None = None,
) -> SyntheticSlide:
    """Write a pyramidal, tiled, JPEG-compressed H&E-like TIFF and return what was planted.

    The file is a BigTIFF whose level 0 is the first page and whose lower levels are its SubIFDs
    (halving until a level fits in one tile), with resolution tags giving ``mpp``. tiffslide,
    tifffile, OpenSlide and QuPath read it as a pyramid. Tiles are rendered one by one, so memory
    stays bounded (a few tiles per worker) whatever the size.

    Parameters
    ----------
    path : output file (``.tif``/``.tiff``); written atomically.
    size_hw : level-0 ``(height, width)`` in px.
    mpp : microns per level-0 pixel (0.5 = 20x).
    regions : planted regions in level-0 px; ``None`` plants :func:`default_regions`,
        an empty sequence plants none.
    seed : everything random derives from it; the same arguments give the same pixels.
    tile : TIFF tile side in px (a multiple of 16).
    quality : JPEG quality 1-100.
    tissue : ``False`` leaves only the planted regions as tissue on white glass.
    overwrite : replace an existing file.
    workers : rendering threads (default: up to 4, by CPU count).
    """
    h, w = (int(v) for v in size_hw)
    if h < 1 or w < 1:
        raise ValueError(f"size_hw must be positive, got {size_hw}")
    if tile % 16 or tile <= 0:
        raise ValueError(f"tile must be a positive multiple of 16, got {tile}")
    if mpp <= 0:
        raise ValueError(f"mpp must be > 0, got {mpp}")
    regions = default_regions((h, w), seed) if regions is None else tuple(regions)
    for r in regions:
        if r.y0 < 0 or r.x0 < 0 or r.y1 > h or r.x1 > w:
            raise ValueError(f"planted region {r} lies outside the {h}x{w} slide")
    renderer = _Renderer((h, w), mpp, regions, seed, tissue)
    shapes = level_shapes((h, w), tile)
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    res = 1e4 / mpp  # pixels per centimetre

    def tiles(level: int) -> Iterator[np.ndarray]:
        lh, lw = shapes[level]
        jobs = (
            ((lh, lw), r, c, tile, tile, (level, r // tile, c // tile))
            for r in range(0, lh, tile)
            for c in range(0, lw, tile)
        )
        return _ordered_tiles(renderer.render, jobs, workers)

    options = dict(
        tile=(tile, tile),
        photometric="rgb",
        compression="jpeg",
        compressionargs={"level": int(quality)},
        resolution=(res, res),
        resolutionunit="CENTIMETER",
        dtype=np.uint8,
        metadata=None,
        maxworkers=workers,
        buffersize=4 * workers * tile * tile * 3,  # tifffile batches raw tiles for its encoders
    )
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
            tif.write(
                tiles(0),
                shape=(h, w, 3),
                subifds=len(shapes) - 1,
                description=f"histokd synthetic slide seed={seed} mpp={mpp}",
                software="histokd",
                **options,
            )
            for level in range(1, len(shapes)):
                tif.write(tiles(level), shape=(*shapes[level], 3), subfiletype=1, **options)
    return SyntheticSlide(
        path=path,
        size_hw=(h, w),
        mpp=float(mpp),
        seed=int(seed),
        tile=int(tile),
        regions=tuple(regions),
        level_dimensions=tuple((lw, lh) for lh, lw in shapes),
    )
