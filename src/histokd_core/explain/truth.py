"""Maps checked against the truth of a synthetic slide: localisation, pathway ranking, clusters.

On a synthetic slide (:mod:`histokd_core.synthetic`) every planted region is a known rectangle in
level-0 px and its factor drives the outcome (factor 0 = ``tumor`` raises the risk, factor 1 =
``immune`` lowers it). Three measures:

* :func:`pixel_auroc`: the area under the ROC curve of a map's pixels against a planted mask, over
  the pixels the map covers (tissue patches). The map is the per-pixel average of the patches
  covering each pixel (:func:`histokd_core.explain.fine.fine_map`); a pixel is positive when its
  centre lies in a planted region. 0.5 is chance, 1.0 a perfect separation.
* :func:`contribution_aurocs`: the same for a signed per-patch risk contribution (e.g. the linear
  AMKD student's): the contribution against the risk-raising region, minus it against the
  protective one, and its distance from the slide's median against every planted region.
* :func:`ranking_auroc`: how often a planted driver pathway is ranked above a noise pathway
  (by ``|score|``; 1.0 = every driver above every noise pathway).
* :func:`region_ari`: the adjusted Rand index between a cluster map's patch labels and the planted
  region type under each patch's centre (0 = chance agreement, 1 = identical partitions).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from histokd_core.errors import DataError

#: region kind of each planted factor (as :mod:`histokd_core.synthetic.cohort` plants them).
FACTOR_KINDS = ("tumor", "immune", "stroma", "necrosis")


def region_mask(regions: Iterable, shape: tuple[int, int], downsample: float,
                kinds: Sequence[str] | None = None) -> np.ndarray:
    """``(rows, cols)`` bool: pixel centres ``((c + 0.5) ds, (r + 0.5) ds)`` inside a planted
    region (of one of ``kinds``, default any)."""
    rows, cols = shape
    cy = (np.arange(rows) + 0.5) * downsample
    cx = (np.arange(cols) + 0.5) * downsample
    mask = np.zeros(shape, dtype=bool)
    for r in regions:
        if kinds is not None and r.kind not in kinds:
            continue
        inside_y = (cy >= r.y0) & (cy < r.y1)
        inside_x = (cx >= r.x0) & (cx < r.x1)
        mask |= inside_y[:, None] & inside_x[None, :]
    return mask


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Mann-Whitney AUROC of ``scores`` for ``positive`` (ties count one half); NaN when one class
    is empty."""
    from scipy.stats import rankdata

    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(positive, dtype=bool).ravel()
    if s.shape != y.shape:
        raise DataError(f"auroc: {s.size} scores for {y.size} labels")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def pixel_auroc(coords: np.ndarray, values: np.ndarray, patch_size: int,
                slide_dimensions: tuple[int, int], regions: Iterable,
                kinds: Sequence[str] | None = None, downsample: float | None = None) -> float:
    """AUROC of a per-patch map's pixels (overlap-averaged, over covered pixels) against the
    planted regions (of ``kinds``, default all)."""
    from histokd_core.explain.fine import fine_map

    fm = fine_map(coords, values, patch_size, slide_dimensions, downsample=downsample)
    img = fm.compute(0)
    mask = region_mask(list(regions), img.shape, fm.downsamples[0], kinds)
    on = np.isfinite(img)
    return auroc(img[on], mask[on])


def contribution_aurocs(coords: np.ndarray, contribution: np.ndarray, patch_size: int,
                        slide_dimensions: tuple[int, int], regions: Iterable,
                        raising: str = FACTOR_KINDS[0],
                        protective: str = FACTOR_KINDS[1]) -> dict[str, float]:
    """Pixel AUROCs (:func:`pixel_auroc`) of a signed per-patch risk contribution ``(n,)``:

    * ``"raising"``: the contribution against the regions of kind ``raising`` (factor 0, tumour);
    * ``"protective"``: minus the contribution against the regions of kind ``protective``
      (factor 1, immune);
    * ``"any"``: ``|c - median(c)|`` against every planted region (a patch stands out from the
      slide's typical patch, in either direction).
    """
    c = np.asarray(contribution, dtype=np.float64)
    regions = list(regions)
    kw = {"patch_size": patch_size, "slide_dimensions": slide_dimensions, "regions": regions}
    return {"raising": pixel_auroc(coords, c, kinds=[raising], **kw),
            "protective": pixel_auroc(coords, -c, kinds=[protective], **kw),
            "any": pixel_auroc(coords, np.abs(c - np.median(c)), **kw)}


def ranking_auroc(scores: Mapping[str, float], drivers: Iterable[str],
                  noise: Iterable[str]) -> float:
    """Share of (driver, noise) pathway pairs where the driver has the larger ``|score|``
    (ties count one half)."""
    d = np.array([abs(scores[k]) for k in drivers if k in scores])
    n = np.array([abs(scores[k]) for k in noise if k in scores])
    if d.size == 0 or n.size == 0:
        raise DataError("ranking: no scored driver or noise pathway")
    wins = (d[:, None] > n[None, :]).sum() + 0.5 * (d[:, None] == n[None, :]).sum()
    return float(wins / (d.size * n.size))


def patch_region_kind(coords: np.ndarray, patch_size: int, regions: Iterable) -> np.ndarray:
    """``(n,)`` str: the kind of the planted region under each patch's centre, ``"none"`` outside."""
    c = np.asarray(coords, dtype=np.float64) + patch_size / 2.0
    out = np.full(len(c), "none", dtype=object)
    for r in regions:
        inside = (c[:, 0] >= r.x0) & (c[:, 0] < r.x1) & (c[:, 1] >= r.y0) & (c[:, 1] < r.y1)
        out[inside] = r.kind
    return out


def region_ari(labels: np.ndarray, coords: np.ndarray, patch_size: int, regions: Iterable) -> float:
    """Adjusted Rand index between per-patch cluster ``labels`` and the planted region type."""
    from sklearn.metrics import adjusted_rand_score

    truth = patch_region_kind(coords, patch_size, regions)
    lab = np.asarray(labels).ravel()
    if lab.size != truth.size:
        raise DataError(f"region_ari: {lab.size} labels for {truth.size} patches")
    return float(adjusted_rand_score(truth.astype(str), lab))
