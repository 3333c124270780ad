"""Implausible decoded tiles: found per slide with their positions, so garbage pixels never
become features silently.

Two kinds of evidence:

* **the decoder's**: a tile whose read raised (reported by :class:`TileDataset` as
  ``decode_failed``), and, for JPEG 2000 TIFF slides (Aperio 33003/33005, 34712), a tile whose
  codestream does not start with SOC (``FF4F``) or end with EOC (``FFD9``): corrupted or truncated
  bytes, which OpenJPEG decodes with only a warning into wrong pixels
  (:func:`jpeg2000_bad_tiles`);
* **the pixels'** (:func:`tile_stats`, compared by :func:`implausible_tiles` with the tile's
  grid neighbours, which are tissue: every kept patch is): an all-constant tile, a tile with
  many green-dominant pixels (no H&E or IHC stain is green) or a noise-like tile: far rougher
  than the tissue around it *and* rough like independent pixel noise, whose adjacent pixels
  differ by about their whole spread (tissue texture, however coarse, changes over several
  pixels: a dense lymphoid aggregate beside smooth stroma is 3x rougher than its neighbours
  but not noise). A tile needs at least :data:`MIN_NEIGHBOURS` plausible neighbours
  to be judged by its pixels.

:func:`histokd_core.features.extract.extract_slide` then fails the slide or, with
``bad_tiles="skip"``, leaves those patches out and marks the slide ``degraded`` in the store.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: Columns of :func:`tile_stats`.
STAT_NAMES = ("decode_failed", "std", "green_fraction", "roughness")
#: A tile whose channels all vary less than this (std over its pixels, 0..255) is constant.
CONSTANT_STD = 2.0
#: Fraction of green-dominant pixels (G above both R and B by 30) that is out of gamut.
GREEN_FRACTION = 0.2
#: A tile rougher than this many times its neighbours' median (and than ROUGH_MIN) is noise
#: when its roughness is also at least NOISE_ROUGH_STD x its std: independent pixel noise gives
#: ~1.13 (uniform 1.15, Gaussian 1.12), tissue 0.19-0.36 (median, max of the tissue tiles of the
#: two real slides in shared/data at level 0) and 0.35-0.41 on the synthetic slides (a dense
#: lymphoid aggregate included, which ROUGH_RATIO alone flagged).
ROUGH_RATIO, ROUGH_MIN = 2.5, 25.0
NOISE_ROUGH_STD = 0.7
#: Plausible neighbours (8-connected grid cells) needed to judge a tile by its pixels.
MIN_NEIGHBOURS = 2
#: TIFF compression codes of JPEG 2000 (Aperio YCbCr / RGB, and the TIFF registry's).
JPEG2000_CODES = frozenset({33003, 33004, 33005, 34712})


@dataclass(frozen=True)
class BadTile:
    """One implausible patch: level-0 top-left ``(x, y)`` px and why."""

    x: int
    y: int
    reason: str

    def to_list(self) -> list:
        return [self.x, self.y, self.reason]


def tile_stats(tile: np.ndarray, decode_failed: bool = False) -> np.ndarray:
    """``(4,)`` float32 of :data:`STAT_NAMES` for an ``(h, w, 3)`` uint8 tile."""
    t = np.asarray(tile, dtype=np.int16)
    r, g, b = t[..., 0], t[..., 1], t[..., 2]
    green = float(np.mean((g > r + 30) & (g > b + 30)))
    rough = 0.5 * (float(np.abs(np.diff(t, axis=1)).mean()) + float(np.abs(np.diff(t, axis=0)).mean()))
    std = float(t.reshape(-1, t.shape[-1]).std(axis=0).max())  # per channel: a flat colour is 0
    return np.array([float(decode_failed), std, green, rough], dtype=np.float32)


def implausible_tiles(coords: np.ndarray, stats: np.ndarray, stride: int) -> dict[int, str]:
    """Row index -> reason for the tiles of one grid that are implausible.

    Parameters
    ----------
    coords : ``(n, 2)`` level-0 top-left ``(x, y)`` of the grid's patches.
    stats : ``(n, 4)`` :func:`tile_stats` of each; a row of NaN is not judged (and not used as
        a neighbour).
    stride : grid step in level-0 px (neighbours are one step apart).
    """
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    stats = np.asarray(stats, dtype=np.float64).reshape(len(coords), len(STAT_NAMES))
    bad: dict[int, str] = {}
    for i in np.flatnonzero(stats[:, 0] > 0):
        bad[int(i)] = "the tile could not be decoded"
    cells = {(int(x) // stride, int(y) // stride): i for i, (x, y) in enumerate(coords)}
    unknown = np.isnan(stats).any(axis=1)  # not read now (kept from a cancelled run)
    suspect = ((stats[:, 1] < CONSTANT_STD) | (stats[:, 2] > GREEN_FRACTION)
               | (stats[:, 0] > 0) | unknown)
    for i, (x, y) in enumerate(coords):
        if i in bad or unknown[i]:
            continue
        cx, cy = int(x) // stride, int(y) // stride
        around = [cells[(cx + dx, cy + dy)] for dx in (-1, 0, 1) for dy in (-1, 0, 1)
                  if (dx or dy) and (cx + dx, cy + dy) in cells]
        around = [j for j in around if not suspect[j]]
        if len(around) < MIN_NEIGHBOURS:
            continue
        std, green, rough = stats[i, 1:]
        rough_around = float(np.median(stats[around, 3]))
        if std < CONSTANT_STD:
            bad[i] = (f"all-constant tile (std {std:.1f}) among tissue "
                      f"(neighbours' std ~{float(np.median(stats[around, 1])):.0f})")
        elif green > GREEN_FRACTION:
            bad[i] = f"out-of-gamut colours ({100 * green:.0f} % green-dominant pixels)"
        elif (rough > ROUGH_MIN and rough > ROUGH_RATIO * rough_around
              and rough >= NOISE_ROUGH_STD * std):
            bad[i] = (f"noise-like pixels (roughness {rough:.0f} vs ~{rough_around:.0f} "
                      "in the neighbouring tissue)")
    return bad


def jpeg2000_bad_tiles(
    slide_path: str | os.PathLike, level: int, coords: np.ndarray, size_level0: int,
    downsample: float,
) -> dict[int, str]:
    """Row index -> reason for patches over JPEG 2000 TIFF tiles with a broken codestream.

    Reads only the first and last two bytes of each TIFF tile of ``level`` (of the slide's
    first series); any other file, compression or level is not checked (empty result).
    """
    path = Path(slide_path)
    if path.suffix.lower() not in (".svs", ".tif", ".tiff"):
        return {}
    try:
        import tifffile

        with tifffile.TiffFile(path) as tf:
            levels = tf.series[0].levels
            if level >= len(levels):
                return {}
            page = levels[level].pages[0]
            if int(page.compression) not in JPEG2000_CODES or not page.is_tiled:
                return {}
            tw, th = int(page.tilewidth), int(page.tilelength)
            across = -(-int(page.imagewidth) // tw)
            fh = tf.filehandle
            broken: dict[int, str] = {}
            for k, (offset, count) in enumerate(zip(page.dataoffsets, page.databytecounts)):
                if count < 4:
                    broken[k] = "empty"
                    continue
                fh.seek(offset)
                head = fh.read(2)
                fh.seek(offset + count - 2)
                tail = fh.read(2)
                if head != b"\xff\x4f":
                    broken[k] = "no SOC marker at its start"
                elif tail != b"\xff\xd9":
                    broken[k] = "no EOC marker at its end (truncated or corrupted bytes)"
    except Exception as exc:  # noqa: BLE001 - a check, never the reason a read fails
        log.debug("%s: JPEG 2000 tile check skipped (%s)", path, exc)
        return {}
    if not broken:
        return {}
    bad: dict[int, str] = {}
    size = size_level0 / downsample
    for i, (x, y) in enumerate(np.asarray(coords).reshape(-1, 2)):
        x0, y0 = x / downsample, y / downsample
        for ty in range(int(y0 // th), int((y0 + size - 1) // th) + 1):
            for tx in range(int(x0 // tw), int((x0 + size - 1) // tw) + 1):
                k = ty * across + tx
                if k in broken:
                    bad[i] = f"JPEG 2000 tile ({tx}, {ty}) of level {level}: {broken[k]}"
    return bad
