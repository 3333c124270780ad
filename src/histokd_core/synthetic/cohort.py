"""Synthetic cohorts with a planted, tunable multimodal signal.

Every case has ``K`` latent factors ``z ~ N(0, I_K)`` (factor 0 = "tumour aggressiveness",
factor 1 = "immune infiltration", further factors generic). They drive every modality:

- **omics**: each factor owns ``pathways_per_factor`` pathways; a member gene is
  ``mu_g + sd_g * (omics_signal * loading_g * z_k + eps)`` with ``eps ~ N(0, 1)``; genes of
  noise pathways and extra genes are pure noise. Factor-0 pathways are named after the default
  tumour Hallmark sets and factor-1 pathways after the TME ones
  (:mod:`histokd_core.omics.subspaces`), so the default tumour/TME split works on this data.
- **histology** (feature cohorts): in every slide, a spatially contiguous cluster of patches
  (a patch *subpopulation*, one per factor) is planted; its patches are shifted by
  ``histology_signal`` along the factor's unit *type* direction ``t_k`` (noise sd 1), which
  makes the subpopulation recognisable. How the factor shows depends on its kind:

  - the first ``local_factors`` factors are **local**: the subpopulation's share of the slide
    does not depend on the factor (``2 * planted_fraction * sigmoid(histology_noise * eps)``);
    only its patches shift slightly, by ``local_signal * z_k`` along a second unit direction
    ``u_k`` orthogonal to every type direction. A model that averages all patches sees the shift
    diluted by the share; one that finds the subpopulation sees it clearly. With the defaults,
    factor 0 (the strongest risk factor, also the best-measured one in the expression) is local:
    strong in the expression, weak and local in the slides;
  - the other factors are **share** factors: the subpopulation's share is
    ``2 * planted_fraction * sigmoid(z_k + histology_noise * eps)`` (a partial, noisy view of
    the factor). ``local_factors=0`` makes every factor a share factor (the cohorts before
    issue 11).

  Each slide also gets a per-slide shift (as staining) of sd ``slide_shift`` per dimension; by
  default it is orthogonal to every type and local direction, so it cannot swamp the planted
  signal along them (``slide_shift_in_signal=True`` lets it act in every direction, as before
  issue 11). For image cohorts every factor sets the area of a planted region (``tumor``,
  ``immune``, ``stroma``, ``necrosis`` morphology, :mod:`histokd_core.synthetic.slides`) as a
  share factor; ``local_factors``, ``local_signal`` and the slide shift apply to feature cohorts.
- **outcomes**: risk ``r = z @ beta`` (``beta = (1, -0.8, 0.6, -0.4, ...)``: the tumour factor
  worsens, the immune factor improves prognosis); survival time ``T ~ Exp(lambda0 *
  exp(survival_signal * r))`` months with independent exponential censoring tuned to
  ``censoring``; binary label ``1[r + label_noise * eps > median]``.

With the defaults the omics see the factors almost exactly (pathway means correlate > 0.9 with
them) and the slides only partially, so an omics+WSI teacher beats a WSI-only model and
distillation has something to transfer. :func:`slide_oracle_features` gives the planted truth a
slide-only oracle may use (per case: subpopulation shares and the local shifts).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from histokd_core.features.slide_features import SlideFeatures
from histokd_core.features.store import write_slide_features
from histokd_core.io import atomic_path, atomic_write_text, check_writable
from histokd_core.omics.gene_sets import write_gmt
from histokd_core.omics.subspaces import DEFAULT_TME_SETS, DEFAULT_TUMOR_SETS

PATCH_SIZE = 256  # level-0 px of a 20x patch (mpp 0.5)
ENCODER_ID = "synthetic-features"
_REGION_KINDS = ("tumor", "immune", "stroma", "necrosis")
_MONTHS_BASE_HAZARD = 1.0 / 30.0


@dataclass(frozen=True)
class SignalKnobs:
    """How much signal each modality carries (all defaults give omics > histology).

    Attributes
    ----------
    n_factors : latent factors ``K`` (>= 1; at most 4 for image cohorts).
    omics_signal : loading scale of pathway genes on their factor, in units of gene noise sd.
    histology_signal : shift of planted patch features along the factor's type direction
        (noise sd 1): how recognisable the planted subpopulation is.
    histology_noise : sd of the noise added to a factor before it sets a slide's planted share
        (for local factors the share is noise only).
    planted_fraction : mean share of a slide's patches planted per factor (0..0.5).
    local_factors : how many factors (the first ones) show in the slides only as a shift of
        their subpopulation, ``local_signal * z_k`` along a direction of their own (0..K;
        0 = every factor sets its subpopulation's share, the cohorts before issue 11).
    local_signal : that shift per unit of the factor, in units of patch noise sd.
    slide_shift : sd per feature dimension of a per-slide shift (as staining).
    slide_shift_in_signal : let the per-slide shift act along the type and local directions too
        (True before issue 11, where it swamped the planted share signal); False keeps it
        orthogonal to them.
    survival_signal : log-hazard per unit of latent risk.
    censoring : expected fraction of censored cases (0..0.95).
    label_noise : sd of the noise added to the risk before it is thresholded into the label.
    pathways_per_factor, noise_pathways, genes_per_pathway, extra_genes : omics layout.
    multi_slide_fraction : share of cases with two slides.
    """

    n_factors: int = 2
    omics_signal: float = 1.5
    histology_signal: float = 1.5
    histology_noise: float = 0.5
    planted_fraction: float = 0.2
    local_factors: int = 1
    local_signal: float = 0.6
    slide_shift: float = 0.3
    slide_shift_in_signal: bool = False
    survival_signal: float = 1.5
    censoring: float = 0.3
    label_noise: float = 0.5
    pathways_per_factor: int = 3
    noise_pathways: int = 3
    genes_per_pathway: int = 10
    extra_genes: int = 20
    multi_slide_fraction: float = 0.15

    def __post_init__(self) -> None:
        if self.n_factors < 1:
            raise ValueError(f"n_factors must be >= 1, got {self.n_factors}")
        if not 0 <= self.planted_fraction <= 0.5:
            raise ValueError(f"planted_fraction must be in [0, 0.5], got {self.planted_fraction}")
        if not 0 <= self.censoring <= 0.95:
            raise ValueError(f"censoring must be in [0, 0.95], got {self.censoring}")
        if not 0 <= self.multi_slide_fraction <= 1:
            raise ValueError(
                f"multi_slide_fraction must be in [0, 1], got {self.multi_slide_fraction}")
        if not 0 <= self.local_factors <= self.n_factors:
            raise ValueError(f"local_factors must be in [0, n_factors={self.n_factors}], "
                             f"got {self.local_factors}")
        if self.slide_shift < 0:
            raise ValueError(f"slide_shift must be >= 0, got {self.slide_shift}")
        if min(self.pathways_per_factor, self.genes_per_pathway) < 1:
            raise ValueError("pathways_per_factor and genes_per_pathway must be >= 1")


def _knobs(knobs: SignalKnobs | None, overrides: dict) -> SignalKnobs:
    knobs = knobs or SignalKnobs()
    unknown = set(overrides) - set(asdict(knobs))
    if unknown:
        raise TypeError(f"unknown knob(s) {', '.join(sorted(unknown))}; see SignalKnobs")
    return replace(knobs, **overrides)


def risk_weights(n_factors: int) -> np.ndarray:
    """``beta`` of the latent risk ``z @ beta``: ``(1, -0.8, 0.6, -0.4, 0.2, ...)``."""
    k = np.arange(n_factors)
    return np.where(k % 2 == 0, 1.0, -1.0) * np.maximum(0.2, 1.0 - 0.2 * k)


def _pathway_names(factor: int, count: int) -> list[str]:
    named = {0: DEFAULT_TUMOR_SETS, 1: DEFAULT_TME_SETS}.get(factor, ())
    return [named[j] if j < len(named) else f"FACTOR{factor}_PATHWAY_{j + 1}" for j in range(count)]


@dataclass
class _Design:
    """Case-level tables shared by feature and image cohorts."""

    cases: pd.DataFrame  # case_id, survival_months, event, label
    slides: pd.DataFrame  # case_id, slide_id
    expression: pd.DataFrame
    gene_sets: dict[str, list[str]]
    latent: pd.DataFrame  # case_id, z0.., risk
    z: np.ndarray


def _design(n_cases: int, knobs: SignalKnobs, rng: np.random.Generator) -> _Design:
    if n_cases < 4:
        raise ValueError(f"n_cases must be >= 4, got {n_cases}")
    k = knobs.n_factors
    case_ids = [f"SYN-{i:04d}" for i in range(n_cases)]
    z = rng.standard_normal((n_cases, k))
    risk = z @ risk_weights(k)

    hazard = _MONTHS_BASE_HAZARD * np.exp(knobs.survival_signal * (risk - risk.mean()))
    t_event = rng.exponential(1.0 / hazard)
    if knobs.censoring > 0:
        # P(C < T) = mu / (mu + lambda) for exponential C and T: tune mu on the median hazard.
        mu = float(np.median(hazard)) * knobs.censoring / (1.0 - knobs.censoring)
        t_cens = rng.exponential(1.0 / mu, n_cases)
    else:
        t_cens = np.full(n_cases, np.inf)
    event = (t_event <= t_cens).astype(int)
    months = np.maximum(np.round(np.minimum(t_event, t_cens), 2), 0.01)
    noisy = risk + knobs.label_noise * rng.standard_normal(n_cases)
    label = (noisy > np.median(noisy)).astype(int)

    gene_names: list[str] = []
    gene_sets: dict[str, list[str]] = {}
    columns: list[np.ndarray] = []

    def new_genes(count: int, factor: int | None) -> list[str]:
        names = [f"GENE{len(gene_names) + j + 1:04d}" for j in range(count)]
        for _ in range(count):
            signal = 0.0
            if factor is not None:
                signal = knobs.omics_signal * rng.uniform(0.6, 1.4) * z[:, factor]
            noisy = signal + rng.standard_normal(n_cases)
            value = rng.uniform(1.0, 8.0) + rng.uniform(0.5, 2.0) * noisy  # mean, sd per gene
            columns.append(value)
        gene_names.extend(names)
        return names

    for factor in range(k):
        for name in _pathway_names(factor, knobs.pathways_per_factor):
            gene_sets[name] = new_genes(knobs.genes_per_pathway, factor) + [f"UNMEASURED_{name}"]
    for j in range(knobs.noise_pathways):
        gene_sets[f"NOISE_PATHWAY_{j + 1}"] = new_genes(knobs.genes_per_pathway, None)
    new_genes(knobs.extra_genes, None)
    expression = pd.DataFrame(
        np.stack(columns, axis=1).astype(np.float32),
        index=pd.Index(case_ids, name="case_id"),
        columns=gene_names,
    )

    slide_rows = []
    for cid in case_ids:
        n_slides = 2 if rng.uniform() < knobs.multi_slide_fraction else 1
        slide_rows += [(cid, f"{cid}-S{s + 1}") for s in range(n_slides)]
    cases = pd.DataFrame({"case_id": case_ids, "survival_months": months,
                         "event": event, "label": label})
    latent = pd.DataFrame(
        {"case_id": case_ids, **{f"z{j}": z[:, j] for j in range(k)}, "risk": risk})
    slides = pd.DataFrame(slide_rows, columns=["case_id", "slide_id"])
    return _Design(cases, slides, expression, gene_sets,
                   latent, z)


def _planted_shares(
    z_case: np.ndarray, knobs: SignalKnobs, rng: np.random.Generator, local: int = 0
) -> np.ndarray:
    """``(K,)`` share of a slide's patches (or tissue) planted per factor; the first ``local``
    factors do not set their share (it is noise only)."""
    signal = np.where(np.arange(len(z_case)) < local, 0.0, z_case)
    noisy = signal + knobs.histology_noise * rng.standard_normal(len(z_case))
    return 2.0 * knobs.planted_fraction / (1.0 + np.exp(-noisy))


def _cohort_table(design: _Design) -> pd.DataFrame:
    return design.slides.merge(design.cases, on="case_id", how="left")


def _write_tables(root: Path, design: _Design, overwrite: bool = False) -> None:
    _cohort_table(design).to_csv(root / "cohort.csv", index=False)
    design.expression.to_csv(root / "omics.csv", index_label="case_id", float_format="%.5f")
    write_gmt(root / "gene_sets.gmt", design.gene_sets,
              overwrite=overwrite, description="synthetic")
    design.latent.to_csv(root / "latent.csv", index=False, float_format="%.6f")


@dataclass
class FeatureCohort:
    """A feature-level synthetic cohort.

    Attributes
    ----------
    cohort : one row per slide: ``case_id, slide_id, survival_months, event, label``.
    expression : ``(n_cases, n_genes)`` float32 indexed by ``case_id``.
    gene_sets : pathway name -> genes (each set lists one unmeasured gene, as real sets do).
    features : slide id -> :class:`SlideFeatures` (in memory; ``20x`` and optionally ``10x``).
    latent : ``case_id, z0..z{K-1}, risk`` (the truth).
    planted : slide id -> ``(n_patches,)`` int, factor planted in each 20x patch (-1 = none).
    knobs : the :class:`SignalKnobs` used.
    type_directions : ``(K, d)`` unit direction each factor's subpopulation is shifted along.
    local_directions : ``(local_factors, d)`` unit direction of the local factors' shift
        (orthonormal to each other and to ``type_directions``).
    root : output folder when written (``cohort.csv``, ``omics.csv``, ``gene_sets.gmt``,
        ``latent.csv``, ``planted.csv``, ``features/`` zarr store), else ``None``.
    """

    cohort: pd.DataFrame
    expression: pd.DataFrame
    gene_sets: dict[str, list[str]]
    features: dict[str, SlideFeatures]
    latent: pd.DataFrame
    planted: dict[str, np.ndarray]
    knobs: SignalKnobs
    type_directions: np.ndarray
    local_directions: np.ndarray
    root: Path | None = None

    @property
    def features_path(self) -> Path | dict[str, SlideFeatures]:
        """The zarr store root when written, else the in-memory features mapping."""
        return self.root / "features" if self.root is not None else self.features


def _grid_blob(n: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, 2)`` integer grid cells ``(col, row)`` forming a compact, irregular tissue blob."""
    side = int(math.ceil(math.sqrt(n * 1.8))) + 2
    rows, cols = np.mgrid[0:side, 0:side]
    cells = np.stack([cols.ravel(), rows.ravel()], axis=1)
    centre = (side - 1) / 2.0
    aspect = rng.uniform(0.7, 1.3)
    dist = np.hypot(cells[:, 0] - centre, (cells[:, 1] - centre) * aspect)
    dist = dist + rng.uniform(0, 1.5, len(cells))  # ragged border
    keep = np.sort(np.argsort(dist, kind="stable")[:n])
    return cells[keep]


def _plant_clusters(cells: np.ndarray, shares: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Factor id per cell (-1 none): one contiguous cluster per factor, sized by ``shares``."""
    planted = np.full(len(cells), -1, dtype=np.int64)
    for factor, share in enumerate(shares):
        m = int(round(share * len(cells)))
        free = np.flatnonzero(planted < 0)
        if m == 0 or len(free) == 0:
            continue
        seed_cell = cells[rng.choice(free)]
        dist = np.hypot(*(cells[free] - seed_cell).T)
        planted[free[np.argsort(dist, kind="stable")[:m]]] = factor
    return planted


def _pool_10x(coords: np.ndarray, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """10x patches (twice the 20x side) as the mean of the 20x patches they contain."""
    big = (coords // (2 * PATCH_SIZE)) * (2 * PATCH_SIZE)
    keys, inverse = np.unique(big, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    sums = np.zeros((len(keys), feats.shape[1]), dtype=np.float64)
    np.add.at(sums, inverse, feats)
    counts = np.bincount(inverse, minlength=len(keys))[:, None]
    return (sums / counts).astype(np.float32), keys.astype(np.int64)


def _store_attrs(seed: int, mag: str) -> dict:
    """Feature-store attributes of a synthetic slide at ``mag`` ("20x" or "10x")."""
    size = PATCH_SIZE * (1 if mag == "20x" else 2)
    return {"encoder_id": ENCODER_ID, "weights_hash": f"seed-{seed}", "patch_px": PATCH_SIZE,
            "mpp": 0.5, "patch_size_level0": size, "stride_level0": size,
            "target_mpp": 0.5 if mag == "20x" else 1.0}


def _memory_features(
    slide_id: str, arrays: dict[str, dict[str, np.ndarray]], seed: int
) -> SlideFeatures:
    mag_keys = ("patch_size_level0", "stride_level0", "target_mpp")
    mag_attrs = {
        mag: {**{k: _store_attrs(seed, mag)[k] for k in mag_keys}, "n_patches": len(a["feats"])}
        for mag, a in arrays.items()
    }
    attrs = {k: v for k, v in _store_attrs(seed, "20x").items() if k not in mag_keys}
    attrs["feat_dim"] = int(arrays["20x"]["feats"].shape[1])
    return SlideFeatures(slide_id, Path(f"<memory>/{slide_id}"), attrs, mag_attrs,
                         lambda mag, name: arrays[mag][name])


def make_feature_cohort(
    out_dir: str | os.PathLike | None = None,
    n_cases: int = 100,
    n_patches: int = 64,
    feat_dim: int = 32,
    seed: int = 0,
    knobs: SignalKnobs | None = None,
    with_10x: bool = True,
    overwrite: bool = False,
    **knob_overrides,
) -> FeatureCohort:
    """A synthetic cohort at the feature level (no images): fast data for tests that must learn.

    Parameters
    ----------
    out_dir : folder to write (atomically: all or nothing), or ``None`` to keep it in memory.
    n_cases : number of cases (>= 4).
    n_patches : mean 20x patches per slide (each slide has 75-125 % of it, at least 8).
    feat_dim : patch feature dimension ``d`` (>= n_factors + local_factors).
    seed : everything random derives from it.
    knobs : :class:`SignalKnobs`; keyword overrides (``omics_signal=0.5`` ...) apply on top.
    with_10x : also store 10x features (mean of the 2x2 20x patches under each 10x patch).
    overwrite : replace an existing ``out_dir``.
    """
    knobs = _knobs(knobs, knob_overrides)
    k, n_local = knobs.n_factors, knobs.local_factors
    if feat_dim < k + n_local:
        raise ValueError(f"feat_dim ({feat_dim}) must be >= n_factors + local_factors "
                         f"({k} + {n_local})")
    if out_dir is not None:
        check_writable(out_dir, overwrite=overwrite)
    rng = np.random.default_rng(seed)
    design = _design(n_cases, knobs, rng)
    basis = np.linalg.qr(rng.standard_normal((feat_dim, k + n_local)))[0].T  # orthonormal rows
    directions, local_dirs = basis[:k], basis[k:]
    # the per-slide shift lives in the orthogonal complement of the signal directions (or not)
    keep_shift = np.eye(feat_dim) - (0.0 if knobs.slide_shift_in_signal else basis.T @ basis)
    z_of = dict(zip(design.latent["case_id"], design.z))

    arrays: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    planted: dict[str, np.ndarray] = {}
    for case_id, slide_id in design.slides.itertuples(index=False):
        n = max(8, int(rng.integers(int(0.75 * n_patches), int(1.25 * n_patches) + 1)))
        cells = _grid_blob(n, rng)
        z_case = z_of[case_id]
        factor_of = _plant_clusters(cells, _planted_shares(z_case, knobs, rng, n_local), rng)
        slide_shift = keep_shift @ (knobs.slide_shift * rng.standard_normal(feat_dim))
        feats = rng.standard_normal((n, feat_dim)) + slide_shift
        hit = factor_of >= 0
        feats[hit] += knobs.histology_signal * directions[factor_of[hit]]
        for j in range(n_local):
            feats[factor_of == j] += knobs.local_signal * z_case[j] * local_dirs[j]
        coords = (cells * PATCH_SIZE).astype(np.int64)
        feats = feats.astype(np.float32)
        arrays[slide_id] = {"20x": {"feats": feats, "coords": coords}}
        if with_10x:
            f10, c10 = _pool_10x(coords, feats)
            arrays[slide_id]["10x"] = {"feats": f10, "coords": c10}
        planted[slide_id] = factor_of
    features = {sid: _memory_features(sid, a, seed) for sid, a in arrays.items()}
    result = FeatureCohort(_cohort_table(design), design.expression, design.gene_sets, features,
                           design.latent, planted, knobs, directions, local_dirs)
    if out_dir is None:
        return result

    root = Path(out_dir)
    with atomic_path(root, overwrite=overwrite) as tmp:
        tmp.mkdir()
        _write_tables(tmp, design)
        rows = []
        for slide_id, mags in arrays.items():
            for mag, a in mags.items():
                attrs = {**_store_attrs(seed, mag), "complete": mag == list(mags)[-1]}
                write_slide_features(tmp / "features", slide_id, mag, a["feats"], a["coords"],
                                     attrs)
            hit = planted[slide_id] >= 0
            c = arrays[slide_id]["20x"]["coords"][hit]
            rows += [(slide_id, int(x), int(y), int(f))
                      for (x, y), f in zip(c, planted[slide_id][hit])]
        table = pd.DataFrame(rows, columns=["slide_id", "x", "y", "factor"])
        table.to_csv(tmp / "planted.csv", index=False)
    result.root = root
    return result


def slide_oracle_features(cohort: FeatureCohort) -> pd.DataFrame:
    """What a slide-only oracle that knows the planted truth can measure, per case.

    For each factor ``k``: ``share_k``, the share of the case's 20x patches planted with ``k``;
    for each local factor also ``shift_k``, the mean projection on the local direction ``u_k``
    of the planted patches minus that of the unplanted ones (an estimate of
    ``local_signal * z_k``; 0 when the case has no such patch or no unplanted patch). Only the
    features and the planted patch labels are read, never the latent factors, so a model fitted
    on these columns bounds what the slides can tell.

    Returns
    -------
    DataFrame indexed by ``case_id`` (cohort order), columns ``share_0..``, ``shift_0..``.
    """
    k = cohort.knobs.n_factors
    n_local = len(cohort.local_directions)
    case_of = cohort.cohort.drop_duplicates("slide_id").set_index("slide_id")["case_id"]
    counts = {}
    for slide_id, factor_of in cohort.planted.items():
        case_id = case_of[slide_id]
        proj = cohort.features[slide_id].feats("20x") @ cohort.local_directions.T  # (n, L)
        c = counts.setdefault(case_id, {"n": 0, "hits": np.zeros(k), "sums": np.zeros((k + 1,
                                                                                    n_local))})
        c["n"] += len(factor_of)
        for f in range(-1, k):
            sel = factor_of == f
            if f >= 0:
                c["hits"][f] += sel.sum()
            c["sums"][f] += proj[sel].sum(0)  # row -1 (last) = unplanted patches
    rows = {}
    for case_id, c in counts.items():
        row = {f"share_{f}": c["hits"][f] / c["n"] for f in range(k)}
        n_none = c["n"] - c["hits"].sum()
        for j in range(n_local):
            if c["hits"][j] == 0 or n_none == 0:
                row[f"shift_{j}"] = 0.0
            else:
                row[f"shift_{j}"] = c["sums"][j, j] / c["hits"][j] - c["sums"][-1, j] / n_none
        rows[case_id] = row
    order = cohort.cohort["case_id"].drop_duplicates()
    return pd.DataFrame.from_dict(rows, orient="index").loc[order].rename_axis("case_id")


@dataclass
class SyntheticCohort:
    """An image-level synthetic cohort written by :func:`make_synthetic_cohort`.

    Attributes
    ----------
    root : the output folder; ``cohort_csv``, ``omics_csv``, ``gene_sets_path`` (GMT) inside it.
    slides : slide id -> slide file (``slides/<slide_id>.tif``).
    regions : slide id -> planted regions (level-0 px), also in ``regions.csv``.
    cohort, expression, gene_sets, latent : as in :class:`FeatureCohort`.
    """

    root: Path
    cohort: pd.DataFrame
    expression: pd.DataFrame
    gene_sets: dict[str, list[str]]
    latent: pd.DataFrame
    slides: dict[str, Path] = field(default_factory=dict)
    regions: dict[str, tuple] = field(default_factory=dict)
    knobs: SignalKnobs = field(default_factory=SignalKnobs)

    @property
    def cohort_csv(self) -> Path:
        return self.root / "cohort.csv"

    @property
    def omics_csv(self) -> Path:
        return self.root / "omics.csv"

    @property
    def gene_sets_path(self) -> Path:
        return self.root / "gene_sets.gmt"


def _slide_regions(
    shares: np.ndarray, size_hw: tuple[int, int], intensity: float, rng: np.random.Generator
) -> tuple:
    from histokd_core.synthetic.slides import PlantedRegion

    h, w = size_hw
    centres = ((0.32, 0.32), (0.68, 0.68), (0.32, 0.68), (0.68, 0.32))  # >= 0.3 apart: no overlap
    tissue_area = 0.25 * h * w  # nominal tissue area the planted shares refer to
    regions = []
    for factor, share in enumerate(shares):
        side = int(min(math.sqrt(share * tissue_area), 0.3 * min(h, w)))
        if side < 8:
            continue
        cy, cx = centres[factor]
        y0 = int(np.clip((cy + rng.uniform(-0.02, 0.02)) * h - side / 2, 0, h - side))
        x0 = int(np.clip((cx + rng.uniform(-0.02, 0.02)) * w - side / 2, 0, w - side))
        kind = _REGION_KINDS[factor]
        regions.append(PlantedRegion(kind, y0, x0, y0 + side, x0 + side, intensity))
    return tuple(regions)


def make_synthetic_cohort(
    out_dir: str | os.PathLike,
    n_cases: int = 12,
    slide_size: tuple[int, int] = (2048, 2048),
    seed: int = 0,
    mpp: float = 0.5,
    knobs: SignalKnobs | None = None,
    region_intensity: float = 1.0,
    overwrite: bool = False,
    workers: int | None = None,
    **knob_overrides,
) -> SyntheticCohort:
    """A synthetic cohort of real pyramidal slides with planted regions, plus the tables.

    Each factor ``k`` of a case plants one square region per slide (``tumor``, ``immune``,
    ``stroma``, ``necrosis`` for k = 0..3) whose area is the factor's planted share
    (``2 * planted_fraction * sigmoid(z_k + histology_noise * eps)``) of a nominal tissue area
    of a quarter of the slide (side capped at 0.3 of the short side, so regions never overlap),
    at ``region_intensity``. Features come from :func:`histokd_core.features.extract_cohort` run
    on ``<out_dir>/slides``.

    Parameters
    ----------
    out_dir : output folder (written atomically; refuses an existing one unless ``overwrite``):
        ``slides/<slide_id>.tif``, ``cohort.csv``, ``omics.csv``, ``gene_sets.gmt``,
        ``latent.csv``, ``regions.csv``.
    n_cases : number of cases (>= 4).
    slide_size : level-0 ``(height, width)`` px of every slide.
    seed : everything random derives from it.
    mpp : microns per level-0 pixel.
    knobs : :class:`SignalKnobs` (``histology_signal`` is unused here: morphology strength is
        ``region_intensity``); keyword overrides apply on top.
    workers : rendering threads per slide.
    """
    from histokd_core.synthetic.slides import write_synthetic_slide

    knobs = _knobs(knobs, knob_overrides)
    if knobs.n_factors > len(_REGION_KINDS):
        raise ValueError(
            f"image cohorts support at most {len(_REGION_KINDS)} factors, got {knobs.n_factors}")
    root = check_writable(out_dir, overwrite=overwrite)
    rng = np.random.default_rng(seed)
    design = _design(n_cases, knobs, rng)
    z_of = dict(zip(design.latent["case_id"], design.z))
    size_hw = (int(slide_size[0]), int(slide_size[1]))
    result = SyntheticCohort(root, _cohort_table(design), design.expression, design.gene_sets,
                             design.latent,
                             knobs=knobs)
    with atomic_path(root, overwrite=overwrite) as tmp:
        (tmp / "slides").mkdir(parents=True)
        _write_tables(tmp, design)
        rows = []
        for i, (case_id, slide_id) in enumerate(design.slides.itertuples(index=False)):
            shares = _planted_shares(z_of[case_id], knobs, rng)
            regions = _slide_regions(shares, size_hw, region_intensity, rng)
            write_synthetic_slide(tmp / "slides" / f"{slide_id}.tif", size_hw=size_hw, mpp=mpp,
                                  regions=regions,
                                  seed=seed * 100_003 + i, workers=workers)
            result.slides[slide_id] = root / "slides" / f"{slide_id}.tif"
            result.regions[slide_id] = regions
            rows += [
                {"slide_id": slide_id, "factor": _REGION_KINDS.index(r.kind), **r.to_dict()}
                for r in regions
            ]
        columns = ["slide_id", "factor", "kind", "y0", "x0", "y1", "x1", "intensity"]
        table = pd.DataFrame(rows, columns=columns)
        atomic_write_text(tmp / "regions.csv", table.to_csv(index=False))
    return result
