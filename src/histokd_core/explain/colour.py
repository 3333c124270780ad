"""Honest colour for per-patch maps: units, ranges, near-uniform flags and colour maps.

Each map kind has a unit a pathologist can read on a colour bar:

* ``"attention"`` (a model's patch attention, or one pathway's attention over patches; both sum
  to 1 over the slide's ``n`` patches) is shown as **multiples of uniform**, ``value * n``: 1.0 is
  the attention every patch would get if the model looked at all of them equally (1/n).
* ``"probability"``: 0..1, always on the fixed range [0, 1].
* ``"signed"`` (a signed score): symmetric range ``[-m, m]`` around 0 with a diverging colour map
  that is transparent at 0.
* ``"contribution"`` (each patch's share of one output of the model, in that output's units; the
  patches sum to it minus the model's bias): the signed scale and colour map. Its unit comes from
  the model (``Explanation.contribution_unit``, passed as ``unit=``): ``"risk contribution
  (log-hazard)"`` for the linear AMKD student, ``"log-odds contribution (class 1 vs class 0)"``
  for a two-class linear subspace student, ...
* ``"similarity"`` (cosine of a patch to a memory component): -1..1 on the signed scale.

A :class:`MapScale` is the colour scale of one map: unit, ``[low, high]`` in that unit, the colour
map (an RGBA table, Qt- and napari-free) and a near-uniform note. Three ways to set the range:
``"slide"`` (from this slide's values, never narrower than a minimum span, so an almost flat map
is not stretched into hot spots), ``"fixed"`` (the same constant range for every slide) and
``"cohort"`` (:func:`cohort_scale`: one range from a run's test cases, the same for every slide
of the run).

The colour maps are perceptually uniform (CIELAB lightness rises linearly along the table,
checked in the tests) and transparent at the low end (or at 0 for signed maps), so cells that
carry nothing leave the tissue visible; their visible part stays away from the pinks and purples
of H&E (CIE76 distance to haematoxylin and eosin colours checked in the tests).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from histokd_core.errors import DataError

MapKind = Literal["attention", "probability", "signed", "contribution", "similarity"]
#: kinds drawn on the symmetric, diverging scale.
SIGNED_KINDS = ("signed", "contribution", "similarity")
ScaleMode = Literal["slide", "fixed", "cohort"]

#: a map whose largest value is below this many multiples of uniform is flagged near-uniform.
NEAR_UNIFORM_RATIO = 1.5
#: a similarity map whose patches all lie within this spread (cosine units) is flagged
#: near-uniform: the component matches every patch alike.
FLAT_SIMILARITY_SPREAD = 0.1
#: fixed-scale upper end for attention, multiples of uniform.
FIXED_ATTENTION_HIGH = 4.0
#: the slide scale of attention never ends below this (a flat map stays pale, not stretched).
MIN_ATTENTION_HIGH = 2.0
#: entries of a colour table.
TABLE_SIZE = 256

UNITS: dict[str, str] = {
    "attention": "x uniform (1/n)",
    "probability": "probability",
    "signed": "signed score",
    "contribution": "contribution (model output units)",
    "similarity": "cosine similarity",
}

MEANINGS: dict[str, str] = {
    "attention": "attention relative to uniform: 1 = every patch weighted equally (1/n), "
                 "2 = twice the average patch",
    "probability": "probability 0-1",
    "signed": "signed: above 0 raises the prediction, below 0 lowers it",
    "contribution": "each patch's share of the model output named on the colour bar (a risk, a "
                    "log-odds, a logit), in that output's units: above 0 raises it, below 0 "
                    "lowers it; all patches add up to it minus the model's bias",
    "similarity": "cosine similarity to the component: 1 = same direction, 0 = unrelated, "
                  "-1 = opposite",
}


@dataclass(frozen=True)
class MapScale:
    """The colour scale of one map.

    Attributes
    ----------
    kind : the map's kind (see the module docstring).
    unit : short unit for the colour bar, e.g. ``"x uniform (1/n)"`` (a contribution's: the
        model's, e.g. ``"risk contribution (log-hazard)"``).
    low, high : colour-bar range in ``unit`` (values outside saturate).
    mode : how the range was chosen: ``"slide"``, ``"fixed"`` or ``"cohort"``.
    near_uniform : True when the map is almost flat (attention: max < 1.5 x uniform;
        similarity: spread < 0.1).
    note : one line for the viewer (near-uniform warning, saturation), ``""`` when none.
    colormap : ``(TABLE_SIZE, 4)`` float RGBA in 0..1, low end first.
    colormap_name : a name for the table (``"histokd-sequential"`` / ``"histokd-diverging"``).
    """

    kind: MapKind
    unit: str
    low: float
    high: float
    mode: ScaleMode
    near_uniform: bool
    note: str
    colormap: np.ndarray
    colormap_name: str

    @property
    def meaning(self) -> str:
        """One sentence saying how to read the unit."""
        return MEANINGS[self.kind]

    @property
    def label(self) -> str:
        """Colour-bar caption: unit and range, e.g. ``"x uniform (1/n): 0 - 4"``."""
        return f"{self.unit}: {self.low:.3g} to {self.high:.3g} ({self.mode} scale)"

    @property
    def contrast_limits(self) -> list[float]:
        """``[low, high]`` for napari."""
        return [float(self.low), float(self.high)]


def to_display(values: np.ndarray, kind: MapKind, n_patches: int | None = None) -> np.ndarray:
    """Per-patch ``values`` in the unit of ``kind`` (attention: ``values * n``), float64.

    ``n_patches`` is the slide's number of patches (default: ``len(values)``).
    """
    v = np.asarray(values, dtype=np.float64)
    if kind == "attention":
        n = int(n_patches) if n_patches else v.size
        if n <= 0:
            raise DataError("attention: no patches")
        return v * n
    if kind not in UNITS:
        raise DataError(f"map kind: expected one of {sorted(UNITS)}, got {kind!r}")
    return v


def _finite(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64).ravel()
    return v[np.isfinite(v)]


def is_near_uniform(display_values: np.ndarray, kind: MapKind = "attention",
                    ratio: float = NEAR_UNIFORM_RATIO) -> bool:
    """True when a map says the same about every patch.

    Attention (in multiples of uniform): its largest value stays below ``ratio`` x uniform.
    Similarity (cosine): every patch lies within :data:`FLAT_SIMILARITY_SPREAD` of the others
    (e.g. all 0.86-0.90: the component matches every patch alike, however strongly). Other kinds
    have no reference and are never flagged.
    """
    v = _finite(display_values)
    if not v.size:
        return False
    if kind == "attention":
        return float(v.max()) < ratio
    if kind == "similarity":
        return float(v.max() - v.min()) < FLAT_SIMILARITY_SPREAD
    return False


def _near_uniform_note(v: np.ndarray, kind: MapKind) -> str:
    if kind == "similarity":
        return (f"nearly uniform: every patch's similarity within {v.min():.2f} to {v.max():.2f} "
                f"(spread < {FLAT_SIMILARITY_SPREAD}); no patch stands out")
    return (f"nearly uniform: max {v.max():.2f} x uniform (< {NEAR_UNIFORM_RATIO}); "
            "no patch stands out")


def has_fixed_range(kind: MapKind) -> bool:
    """Whether the ``"fixed"`` mode has a constant range for ``kind`` (signed scores and risk
    contributions have none: their size depends on the model)."""
    return kind in ("attention", "probability", "similarity")


def _range(kind: MapKind, v: np.ndarray, mode: ScaleMode) -> tuple[float, float]:
    if kind == "probability":
        return 0.0, 1.0
    if kind == "similarity" and mode == "fixed":
        return -1.0, 1.0
    if kind == "attention":
        if mode == "fixed":
            return 0.0, FIXED_ATTENTION_HIGH
        high = float(v.max()) if v.size else MIN_ATTENTION_HIGH
        return 0.0, max(MIN_ATTENTION_HIGH, high)
    if mode == "fixed":
        raise DataError(f"scale: a fixed scale needs a known range; {kind} maps have none, "
                        "use the slide or cohort scale")
    m = float(np.abs(v).max()) if v.size else 0.0
    m = m if m > 0 else 1.0
    return -m, m


def map_scale(
    display_values: np.ndarray,
    kind: MapKind,
    mode: ScaleMode = "slide",
    cohort: MapScale | None = None,
    unit: str | None = None,
) -> MapScale:
    """The colour scale of one slide's map.

    Parameters
    ----------
    display_values : the map in its unit (see :func:`to_display`), any shape, NaN ignored.
    kind : the map's kind.
    mode : ``"slide"`` (range from these values), ``"fixed"`` (constant range for the kind) or
        ``"cohort"`` (the range of ``cohort``, a :func:`cohort_scale` of the same kind).
    unit : the colour-bar unit when the model states it (a contribution's
        ``Explanation.contribution_unit``); default the cohort scale's under ``"cohort"``, else
        the kind's (:data:`UNITS`).

    Returns
    -------
    MapScale with the range, the colour table and the near-uniform note of this slide.
    """
    if kind not in UNITS:
        raise DataError(f"map kind: expected one of {sorted(UNITS)}, got {kind!r}")
    v = _finite(display_values)
    if mode == "cohort":
        if cohort is None:
            raise DataError("scale: the cohort scale needs the run's scale (cohort_scale)")
        if cohort.kind != kind:
            raise DataError(f"scale: cohort scale is for {cohort.kind} maps, not {kind}")
        low, high = cohort.low, cohort.high
    elif mode in ("slide", "fixed"):
        low, high = _range(kind, v, mode)
    else:
        raise DataError(f"scale: expected slide, fixed or cohort, got {mode!r}")
    near = is_near_uniform(v, kind)
    notes = []
    if near:
        notes.append(_near_uniform_note(v, kind))
    if v.size and (v.max() > high or v.min() < low):
        out = int(np.sum((v > high) | (v < low)))
        notes.append(f"{out} of {v.size} patches beyond the scale (shown at its ends)")
    signed = kind in SIGNED_KINDS
    return MapScale(
        kind=kind,
        unit=unit or (cohort.unit if mode == "cohort" else UNITS[kind]),
        low=float(low),
        high=float(high),
        mode=mode,
        near_uniform=near,
        note="; ".join(notes),
        colormap=diverging_table() if signed else sequential_table(),
        colormap_name="histokd-diverging" if signed else "histokd-sequential",
    )


def cohort_scale(maps: Iterable[np.ndarray], kind: MapKind, quantile: float = 0.99,
                 unit: str | None = None) -> MapScale:
    """One colour scale for every slide of a run, from its test cases' maps.

    Parameters
    ----------
    maps : each test slide's map **in display units** (:func:`to_display`), one array per slide.
    kind : their kind.
    quantile : the range ends at this quantile of all patches pooled (a few extreme patches of one
        slide should not wash out every other slide); probability is always [0, 1].
    unit : the colour-bar unit the model states (a contribution's), default the kind's.

    Returns
    -------
    MapScale with ``mode="cohort"``; pass it as ``cohort=`` to :func:`map_scale` per slide.
    """
    arrays = [_finite(m) for m in maps]
    if not arrays or not any(a.size for a in arrays):
        raise DataError("cohort scale: no maps with finite values")
    if not 0.5 <= quantile <= 1.0:
        raise DataError(f"quantile: expected 0.5..1, got {quantile}")
    pooled = np.concatenate(arrays)
    if kind == "probability":
        low, high = 0.0, 1.0
    elif kind == "attention":
        low, high = 0.0, max(MIN_ATTENTION_HIGH, float(np.quantile(pooled, quantile)))
    elif kind in SIGNED_KINDS:
        m = float(np.quantile(np.abs(pooled), quantile)) or 1.0
        low, high = -m, m
    else:
        raise DataError(f"map kind: expected one of {sorted(UNITS)}, got {kind!r}")
    signed = kind in SIGNED_KINDS
    return MapScale(kind=kind, unit=unit or UNITS[kind], low=low, high=high, mode="cohort",
                    near_uniform=False, note="", colormap=diverging_table() if signed else sequential_table(),
                    colormap_name="histokd-diverging" if signed else "histokd-sequential")


# -- colour tables ---------------------------------------------------------------------------

def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of sRGB colours in 0..1, ``(..., 3)`` -> ``(..., 3)`` ``(L*, a*, b*)``."""
    c = np.asarray(rgb, dtype=np.float64)
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124564, 0.3575761, 0.1804375],
                  [0.2126729, 0.7151522, 0.0721750],
                  [0.0193339, 0.1191920, 0.9503041]])
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def _lab_to_srgb(lab: np.ndarray) -> np.ndarray:
    lab = np.asarray(lab, dtype=np.float64)
    fy = (lab[..., 0] + 16) / 116
    fx = fy + lab[..., 1] / 500
    fz = fy - lab[..., 2] / 200
    f = np.stack([fx, fy, fz], -1)
    xyz = np.where(f > 6 / 29, f**3, 3 * (6 / 29) ** 2 * (f - 4 / 29)) * np.array([0.95047, 1.0, 1.08883])
    m = np.array([[3.2404542, -1.5371385, -0.4985314],
                  [-0.9692660, 1.8760108, 0.0415560],
                  [0.0556434, -0.2040259, 1.0572252]])
    lin = np.clip(xyz @ m.T, 0, 1)
    return np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1 / 2.4) - 0.055)


def _ramp(points: list[tuple[float, float, float]], n: int) -> np.ndarray:
    """``n`` sRGB colours along a piecewise-straight CIELAB path through ``points`` (equally
    spaced in the path parameter; with lightness spaced equally between the points, L* rises or
    falls linearly)."""
    pts = np.asarray(points, dtype=np.float64)
    k = len(pts) - 1
    t = np.linspace(0.0, 1.0, n) * k
    seg = np.minimum(t.astype(int), k - 1)
    u = (t - seg)[:, None]
    return _lab_to_srgb(pts[seg] * (1 - u) + pts[seg + 1] * u)


def _alpha(t: np.ndarray, full_at: float = 0.35, top: float = 0.85) -> np.ndarray:
    """0 at ``t = 0``, rising smoothly to ``top`` at ``full_at`` and above."""
    s = np.clip(t / full_at, 0.0, 1.0)
    return top * s * s * (3 - 2 * s)


#: sequential CIELAB path: dark blue -> teal green -> pale yellow, L* equally spaced (in gamut;
#: no purple or pink, the colours of H&E).
SEQ_PATH = [(31.0, -1.0, -31.0), (60.5, -38.0, 8.0), (90.0, -8.0, 68.0)]
#: diverging: teal (negative) <- pale cream centre (transparent) -> orange (positive), equal L* at
#: both ends (no blue or pink, the colours of H&E).
DIV_NEG = (55.0, -28.0, -13.0)
DIV_MID = (88.0, -5.0, 15.0)
DIV_POS = (55.0, 35.0, 55.0)


def sequential_table(n: int = TABLE_SIZE) -> np.ndarray:
    """``(n, 4)`` RGBA: a CIELAB path (linear lightness) from dark blue through teal to pale yellow;
    alpha 0 at the low end rising to 0.85."""
    rgb = _ramp(SEQ_PATH, n)
    t = np.linspace(0.0, 1.0, n)
    return np.concatenate([rgb, _alpha(t)[:, None]], axis=1)


def diverging_table(n: int = TABLE_SIZE) -> np.ndarray:
    """``(n, 4)`` RGBA: teal for negative, orange for positive, transparent at the centre (0);
    lightness falls linearly from the centre to each end."""
    half = n // 2
    neg = _ramp([DIV_NEG, DIV_MID], half)
    pos = _ramp([DIV_MID, DIV_POS], n - half)
    rgb = np.concatenate([neg, pos])
    t = np.abs(np.linspace(-1.0, 1.0, n))
    return np.concatenate([rgb, _alpha(t)[:, None]], axis=1)


def pathway_score_text(score: float, task: str = "survival") -> str:
    """A pathway score (gradient x input of the prediction w.r.t. the pathway token) in words:
    ``"+0.012 (raises risk)"``."""
    what = "risk" if task == "survival" else "P(positive)"
    direction = "raises" if score > 0 else "lowers" if score < 0 else "does not change"
    return f"{score:+.3g} ({direction} {what})"


PATHWAY_SCORE_UNIT = ("contribution to the predicted risk (log-hazard units; gradient x input "
                      "of the risk w.r.t. the pathway token): + raises the predicted risk, - lowers it")
