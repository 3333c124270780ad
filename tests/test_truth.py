"""Maps against the planted truth: the measures by hand, and a trained student holding a bound."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from histokd_core.errors import DataError
from histokd_core.explain.truth import (
    auroc,
    contribution_aurocs,
    patch_region_kind,
    pixel_auroc,
    ranking_auroc,
    region_ari,
    region_mask,
)
from histokd_core.synthetic.slides import PlantedRegion

#: lower bound of the better cluster map's ARI (set below the value measured on 2026-12-02)
BOUND_ARI = 0.04
#: lower bounds of the linear student's risk-contribution pixel AUROC on the image cohort: against
#: the risk-raising tumour region (issue 15's 0.8; measured 0.940 with this cohort and run, 0.88
#: +- 0.05 over seeds 0-3 of bench/bench_truth.py) and, as |c - median|, against every planted
#: region (measured 0.812; 0.84 +- 0.03 over seeds 0-3)
BOUND_CONTRIBUTION_RAISING = 0.8
BOUND_CONTRIBUTION_ANY = 0.7
#: lower bounds of the linear student's pathway head on the same run: the best-ranked driver
#: pathway's map of each factor against that factor's region (issue 15's 0.8; seed 0 of
#: bench/bench_truth.py measured 0.998 / 0.985, 0.990 / 0.993 over 10 seeds) and the ranking of
#: driver over noise pathways (measured 0.889; 0.843 +- 0.031 over 10 seeds; chance 0.5)
BOUND_PATHWAY_MAP = 0.8
BOUND_PATHWAY_RANKING = 0.7


def test_auroc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, 200).astype(float)  # many ties
    y = rng.random(200) < 0.3
    assert auroc(s, y) == pytest.approx(roc_auc_score(y, s))
    assert np.isnan(auroc([1.0, 2.0], [True, True]))
    assert auroc([0.1, 0.9, 0.5], [False, True, False]) == 1.0


def test_region_mask_by_hand():
    r = PlantedRegion("tumor", y0=2, x0=4, y1=6, x1=8)
    # pixel centres at 1, 3, 5, 7 (ds 2): rows 1-2 (3, 5) and cols 2-3 (5, 7) are inside
    m = region_mask([r], (4, 4), 2.0)
    expected = np.zeros((4, 4), bool)
    expected[1:3, 2:4] = True
    np.testing.assert_array_equal(m, expected)
    assert not region_mask([r], (4, 4), 2.0, kinds=["immune"]).any()


def test_pixel_auroc_of_a_perfect_and_an_inverted_map():
    # 4 x 4 lattice of 4 px patches on a 16 x 16 slide, region = the top-left 8 x 8 px
    ys, xs = np.mgrid[0:16:4, 0:16:4]
    coords = np.stack([xs.ravel(), ys.ravel()], 1)
    region = PlantedRegion("tumor", y0=0, x0=0, y1=8, x1=8)
    inside = (coords[:, 0] < 8) & (coords[:, 1] < 8)
    kw = {"patch_size": 4, "slide_dimensions": (16, 16), "regions": [region]}
    assert pixel_auroc(coords, inside.astype(float), **kw) == 1.0
    assert pixel_auroc(coords, (~inside).astype(float), **kw) == 0.0
    # overlapping patches (stride 2) averaged per pixel still rank the region first
    ys, xs = np.mgrid[0:13:2, 0:13:2]
    fine = np.stack([xs.ravel(), ys.ravel()], 1)
    centre_in = ((fine + 2) < 8).all(1)
    assert pixel_auroc(fine, centre_in.astype(float), **kw) > 0.9


def test_contribution_aurocs_by_hand():
    # a row of 4 px patches: tumour (raises the risk) at x 0-8, immune (lowers it) at x 16-24
    coords = np.array([[x, 0] for x in range(0, 32, 4)])
    regions = [PlantedRegion("tumor", y0=0, x0=0, y1=4, x1=8),
               PlantedRegion("immune", y0=0, x0=16, y1=4, x1=24)]
    kw = {"patch_size": 4, "slide_dimensions": (32, 4), "regions": regions}
    c = np.array([0.3, 0.2, 0.0, 0.01, -0.2, -0.3, 0.02, -0.01])
    assert contribution_aurocs(coords, c, **kw) == {"raising": 1.0, "protective": 1.0, "any": 1.0}
    # a map with the signs the wrong way round: 0 on both, the distance from the median still 1
    flipped = contribution_aurocs(coords, -c, **kw)
    assert (flipped["raising"], flipped["protective"], flipped["any"]) == (0.0, 0.0, 1.0)


def test_ranking_auroc_by_hand():
    scores = {"A": 0.5, "B": -0.3, "C": 0.1, "D": 0.4}
    # |B| = 0.3 beats |C| = 0.1 but not |D| = 0.4: 3 of 4 pairs
    assert ranking_auroc(scores, ["A", "B"], ["C", "D"]) == 0.75
    with pytest.raises(DataError, match="ranking"):
        ranking_auroc(scores, ["X"], ["C"])


def test_region_ari_of_perfect_and_relabelled_clusters():
    coords = np.array([[0, 0], [4, 0], [8, 0], [12, 0]])
    regions = [PlantedRegion("tumor", y0=0, x0=0, y1=4, x1=8),
               PlantedRegion("immune", y0=0, x0=8, y1=4, x1=12)]
    assert patch_region_kind(coords, 4, regions).tolist() == ["tumor", "tumor", "immune", "none"]
    assert region_ari(np.array([3, 3, 1, 0]), coords, 4, regions) == 1.0
    assert region_ari(np.array([0, 1, 0, 1]), coords, 4, regions) < 0.1


# -- a trained student against the planted truth ---------------------------------------------


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    """A feature-level planted cohort (contiguous planted patch clusters drive the risk) and an
    AMKD run (teacher -> student), 2 folds."""
    from histokd_core.synthetic.cohort import make_feature_cohort
    from histokd_core.workflows import train_cohort

    root = tmp_path_factory.mktemp("truth")
    fc = make_feature_cohort(root / "cohort", n_cases=48, n_patches=48, feat_dim=16, seed=0,
                             with_10x=False, histology_signal=2.5, histology_noise=0.5,
                             multi_slide_fraction=0.0)
    train_cohort("amkd", fc.root / "cohort.csv", fc.root / "features", root / "run",
                 omics=fc.root / "omics.csv", gene_sets=fc.root / "gene_sets.gmt", n_folds=2,
                 epochs=8, lr=1e-3, seed=0, device="cpu", threads=1)
    return fc, root / "run"


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "issue 15 target not met (docs/benchmarks.md, 'Maps against the planted truth'): the paper's "
    "student's attention scores pixel AUROC 0.508 against this fixture's planted patches (0.362 "
    "when this mark was written; 0.516 +- 0.057 over 5 seeds of the cohort); the measure is "
    "not loosened"))
def test_student_attention_and_driver_pathways_find_the_planted_patches(planted_run):
    """Issue 15's target: the student's attention localises the planted patches (pixel AUROC
    >= 0.8) and ranks the planted pathways above the noise pathways."""
    import torch

    from histokd_core.omics.subspaces import DEFAULT_TME_SETS, DEFAULT_TUMOR_SETS
    from histokd_core.workflows.inference import explain_bag, load_slide_model, read_slide_bag

    fc, run = planted_run
    drivers = [s for s in fc.gene_sets if s in DEFAULT_TUMOR_SETS or s in DEFAULT_TME_SETS]
    noise = [s for s in fc.gene_sets if s.startswith("NOISE_PATHWAY")]
    att, rank = [], []
    for fold_dir in sorted(run.glob("fold_*")):
        pred = pd.read_csv(fold_dir / "predictions.csv", dtype={"case_id": str})
        cases = set(pred.loc[pred["model"] == "student", "case_id"])
        model, meta = load_slide_model(fold_dir / "student.safetensors", torch.device("cpu"))
        for slide_id in fc.cohort.loc[fc.cohort["case_id"].isin(cases), "slide_id"]:
            bag, _ = read_slide_bag(fc.root / "features", slide_id, meta)
            expl = explain_bag(model, bag, torch.device("cpu"))
            planted = fc.planted[slide_id]
            boxes = [PlantedRegion("tumor", int(y), int(x), int(y) + 256, int(x) + 256)
                     for (x, y) in expl.coords[planted >= 0]]
            dims = tuple(int(v) for v in expl.coords.max(0) + 256)
            att.append(pixel_auroc(expl.coords, expl.attention, 256, dims, boxes))
            rank.append(ranking_auroc(expl.pathway_scores, drivers, noise))
    att, rank = np.array(att), np.array(rank)
    att = att[np.isfinite(att)]
    print(f"attention pixel AUROC {att.mean():.3f} (n={att.size}), ranking {rank.mean():.3f}")
    assert att.size >= 20
    assert att.mean() >= 0.8, f"attention pixel AUROC {att.mean():.3f}"
    assert rank.mean() >= 0.8, f"driver-vs-noise ranking {rank.mean():.3f}"


@pytest.fixture(scope="module")
def planted_subspace(tmp_path_factory):
    """The planted feature cohort of :func:`planted_run` through a subspace run (tumour / TME
    cluster maps), 2 folds."""
    from histokd_core.synthetic.cohort import make_feature_cohort
    from histokd_core.workflows import train_cohort

    root = tmp_path_factory.mktemp("truth_sub")
    fc = make_feature_cohort(root / "cohort", n_cases=48, n_patches=48, feat_dim=16, seed=0,
                             with_10x=False, histology_signal=2.5, histology_noise=0.5,
                             multi_slide_fraction=0.0)
    train_cohort("subspace", fc.root / "cohort.csv", fc.root / "features", root / "run",
                 omics=fc.root / "omics.csv", gene_sets=fc.root / "gene_sets.gmt", n_folds=2,
                 epochs=8, lr=1e-3, seed=0, device="cpu", threads=1)
    return fc, root / "run"


@pytest.mark.slow
def test_cluster_maps_separate_the_planted_patch_types(planted_subspace):
    """The subspace student's tumour and TME cluster maps against the planted factor of each
    patch (adjusted Rand index, held-out slides of both folds)."""
    import torch

    from histokd_core.explain.truth import FACTOR_KINDS
    from histokd_core.workflows.inference import explain_bag, load_slide_model, read_slide_bag

    fc, run = planted_subspace
    ari = {"tumor": [], "tme": []}
    for fold_dir in sorted(run.glob("fold_*")):
        pred = pd.read_csv(fold_dir / "predictions.csv", dtype={"case_id": str})
        cases = set(pred.loc[pred["model"] == "student", "case_id"])
        model, meta = load_slide_model(fold_dir / "student.safetensors", torch.device("cpu"))
        for slide_id in fc.cohort.loc[fc.cohort["case_id"].isin(cases), "slide_id"]:
            bag, _ = read_slide_bag(fc.root / "features", slide_id, meta)
            expl = explain_bag(model, bag, torch.device("cpu"))
            planted = fc.planted[slide_id]
            boxes = [PlantedRegion(FACTOR_KINDS[f], int(y), int(x), int(y) + 256, int(x) + 256)
                     for (x, y), f in zip(expl.coords, planted) if f >= 0]
            for name in ari:
                ari[name].append(region_ari(expl.clusters[name], expl.coords, 256, boxes))
    means = {k: float(np.mean(v)) for k, v in ari.items()}
    print("cluster ARI vs planted patch type:", {k: round(v, 3) for k, v in means.items()},
          f"n={len(ari['tumor'])}")
    assert len(ari["tumor"]) >= 20
    assert max(means.values()) >= BOUND_ARI, means


@pytest.fixture(scope="module")
def planted_image_run(tmp_path_factory):
    """The image cohort of ``bench/bench_truth.py`` seed 0 (32 cases, real pyramidal 2048 px
    slides whose planted tumour region raises and immune region lowers the risk; hed-texture
    features at 20x) and its AMKD run (3 folds, 10 epochs, lr 5e-4), linear students included."""
    from histokd_core.features import extract_slide, get_encoder
    from histokd_core.synthetic.cohort import make_synthetic_cohort
    from histokd_core.workflows import train_cohort

    root = tmp_path_factory.mktemp("truth_img")
    sc = make_synthetic_cohort(root / "data", n_cases=32, slide_size=(2048, 2048), seed=0,
                               workers=1)
    encoder = get_encoder("hed-texture", device="cpu")
    for slide in sorted((root / "data" / "slides").glob("*.tif")):
        extract_slide(slide, root / "features", encoder, magnifications=("20x",), num_workers=0)
    train_cohort("amkd", root / "data" / "cohort.csv", root / "features", root / "run",
                 omics=root / "data" / "omics.csv", gene_sets=root / "data" / "gene_sets.gmt",
                 n_folds=3, epochs=10, lr=5e-4, seed=0, device="cpu", threads=1)
    return sc, root


@pytest.mark.slow
def test_linear_students_maps_find_the_planted_regions(planted_image_run):
    """Issue 15 point 7 with the distilled linear student (its attention is uniform): its
    per-patch risk contribution's pixel AUROC against the risk-raising tumour region, and of the
    distance from the slide's median contribution against every planted region; its pathway
    head's best-ranked driver map of each factor against that factor's region, and the ranking of
    the driver pathways above the noise pathways; held-out slides of all folds."""
    import torch

    from histokd_core.workflows.inference import explain_bag, load_slide_model, read_slide_bag

    _, root = planted_image_run
    table = pd.read_csv(root / "data" / "regions.csv", dtype={"slide_id": str})
    cohort = pd.read_csv(root / "data" / "cohort.csv", dtype={"case_id": str, "slide_id": str})
    from histokd_core.explain.truth import FACTOR_KINDS
    from histokd_core.omics.gene_sets import read_gene_sets
    from histokd_core.omics.subspaces import DEFAULT_TME_SETS, DEFAULT_TUMOR_SETS

    sets = list(read_gene_sets(root / "data" / "gene_sets.gmt"))
    drivers = {0: [p for p in sets if p in DEFAULT_TUMOR_SETS],
               1: [p for p in sets if p in DEFAULT_TME_SETS]}
    noise = [p for p in sets if p.startswith("NOISE_PATHWAY")]
    found: dict[str, list[float]] = {"raising": [], "protective": [], "any": [],
                                     "pathway 0": [], "pathway 1": [], "ranking": []}
    for fold_dir in sorted((root / "run").glob("fold_*")):
        pred = pd.read_csv(fold_dir / "predictions.csv", dtype={"case_id": str})
        cases = set(pred.loc[pred["model"] == "linear_student", "case_id"])
        model, meta = load_slide_model(fold_dir / "linear_student.safetensors", torch.device("cpu"))
        for slide_id in cohort.loc[cohort["case_id"].isin(cases), "slide_id"]:
            bag, _ = read_slide_bag(root / "features", slide_id, meta)
            expl = explain_bag(model, bag, torch.device("cpu"))
            assert expl.attention == pytest.approx(1 / len(expl.coords))  # mean pooling
            regions = [PlantedRegion(r.kind, int(r.y0), int(r.x0), int(r.y1), int(r.x1))
                       for r in table[table["slide_id"] == slide_id].itertuples()]
            for key, v in contribution_aurocs(expl.coords, expl.contribution, expl.patch_size,
                                              (2048, 2048), regions).items():
                found[key].append(v)
            # the pathway head: the best-ranked driver map of each factor against its region
            for factor in (0, 1):
                best = max(drivers[factor], key=lambda p: abs(expl.pathway_scores[p]))
                found[f"pathway {factor}"].append(pixel_auroc(
                    expl.coords, expl.pathway_maps[best], expl.patch_size, (2048, 2048), regions,
                    kinds=[FACTOR_KINDS[factor]]))
            found["ranking"].append(ranking_auroc(expl.pathway_scores, drivers[0] + drivers[1],
                                                  noise))
    means = {k: float(np.nanmean(v)) for k, v in found.items()}
    print("linear student pixel AUROC / ranking:", {k: round(v, 3) for k, v in means.items()},
          f"n={len(found['any'])}")
    assert len(found["any"]) >= 30
    assert means["raising"] >= BOUND_CONTRIBUTION_RAISING, means
    assert means["any"] >= BOUND_CONTRIBUTION_ANY, means
    assert min(means["pathway 0"], means["pathway 1"]) >= BOUND_PATHWAY_MAP, means
    assert means["ranking"] >= BOUND_PATHWAY_RANKING, means
