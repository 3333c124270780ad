"""Synthetic cohorts: the planted signal is there, knobs move it, outputs are safe and loadable."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from lifelines.utils import concordance_index

from histokd_core.cohort import load_cohort
from histokd_core.errors import HistoKDError
from histokd_core.omics import read_expression, read_gene_sets, split_tumor_tme
from histokd_core.synthetic.cohort import (
    SignalKnobs,
    make_feature_cohort,
    make_synthetic_cohort,
    risk_weights,
    slide_oracle_features,
)


@pytest.fixture(scope="module")
def cohort():
    return make_feature_cohort(None, n_cases=240, n_patches=40, feat_dim=16, seed=0)


def _cases(fc):
    return fc.cohort.drop_duplicates("case_id").set_index("case_id")


def _pathway_scores(fc):
    e = fc.expression
    z = (e - e.mean()) / e.std()
    return {name: z[[g for g in genes if g in e.columns]].mean(axis=1)
            for name, genes in fc.gene_sets.items()}


def _planted_share(fc, factor):
    case_of = fc.cohort.set_index("slide_id")["case_id"]
    shares = pd.Series({s: (p == factor).mean() for s, p in fc.planted.items()})
    return shares.groupby(case_of[shares.index].to_numpy()).mean()


def test_latent_risk_predicts_survival_and_label(cohort):
    cases, latent = _cases(cohort), cohort.latent.set_index("case_id")
    risk = latent.loc[cases.index, "risk"]
    z = latent.loc[cases.index, ["z0", "z1"]].to_numpy()
    np.testing.assert_allclose(risk, z @ risk_weights(2))
    assert concordance_index(cases["survival_months"], -risk, cases["event"]) > 0.7
    assert 0.55 < cases["event"].mean() < 0.85  # about 30 % censored
    assert cases["label"].mean() == pytest.approx(0.5, abs=0.01)
    assert np.corrcoef(cases["label"], risk)[0, 1] > 0.6


def test_pathway_expression_tracks_latent_factors(cohort):
    latent = cohort.latent.set_index("case_id").loc[cohort.expression.index]
    scores = _pathway_scores(cohort)
    assert np.corrcoef(scores["HALLMARK_E2F_TARGETS"], latent["z0"])[0, 1] > 0.9
    assert np.corrcoef(scores["HALLMARK_INTERFERON_GAMMA_RESPONSE"], latent["z1"])[0, 1] > 0.9
    assert abs(np.corrcoef(scores["NOISE_PATHWAY_1"], latent["z0"])[0, 1]) < 0.2
    tumor, tme = split_tumor_tme(list(cohort.expression.columns), gene_sets=cohort.gene_sets)
    assert len(tumor) == len(tme) == 30


def test_histology_is_partial_and_weaker_than_omics(cohort):
    latent = cohort.latent.set_index("case_id")
    share = _planted_share(cohort, 1)  # factor 1 is a share factor
    r_hist = np.corrcoef(share, latent.loc[share.index, "z1"])[0, 1]
    ifng = _pathway_scores(cohort)["HALLMARK_INTERFERON_GAMMA_RESPONSE"]
    r_omics = np.corrcoef(ifng, latent.loc[cohort.expression.index, "z1"])[0, 1]
    assert 0.6 < r_hist < r_omics
    # planted patches carry the shift along one direction: their mean projects far from the others
    sid = next(s for s, p in cohort.planted.items() if (p == 0).sum() >= 3)
    feats, planted = cohort.features[sid].feats("20x"), cohort.planted[sid]
    gap = feats[planted == 0].mean(0) - feats[planted < 0].mean(0)
    assert np.linalg.norm(gap) > 1.0
    assert abs(gap @ cohort.type_directions[0]) > 1.0


def _mean_pooled(fc):
    case_of = fc.cohort.set_index("slide_id")["case_id"]
    means = pd.DataFrame({s: fc.features[s].feats("20x").mean(0) for s in fc.planted}).T
    return means.groupby(case_of[means.index].to_numpy()).mean()


def test_local_factor_is_strong_in_omics_weak_and_local_in_slides(cohort):
    """Factor 0: its subpopulation's share says nothing, its small shift says much, the mean of
    all patches says less, the expression says most."""
    latent = cohort.latent.set_index("case_id")
    oracle = slide_oracle_features(cohort)
    z0 = latent.loc[oracle.index, "z0"]
    assert list(oracle.columns) == ["share_0", "share_1", "shift_0"]
    assert abs(np.corrcoef(oracle["share_0"], z0)[0, 1]) < 0.2
    r_local = np.corrcoef(oracle["shift_0"], z0)[0, 1]
    pooled = _mean_pooled(cohort).loc[oracle.index].to_numpy() @ cohort.local_directions[0]
    r_pooled = np.corrcoef(pooled, z0)[0, 1]
    e2f = _pathway_scores(cohort)["HALLMARK_E2F_TARGETS"]
    r_omics = np.corrcoef(e2f, latent.loc[cohort.expression.index, "z0"])[0, 1]
    assert 0.1 < r_pooled < r_local - 0.15 and 0.7 < r_local < r_omics
    # directions: orthonormal; the per-slide shift stays out of them
    basis = np.vstack([cohort.type_directions, cohort.local_directions])
    np.testing.assert_allclose(basis @ basis.T, np.eye(3), atol=1e-9)
    unplanted = np.array([cohort.features[s].feats("20x")[p < 0].mean(0)
                          for s, p in cohort.planted.items()])
    n = np.array([(p < 0).sum() for p in cohort.planted.values()])
    along = (unplanted @ basis.T) * np.sqrt(n)[:, None]  # patch noise alone: sd 1
    assert np.abs(along.std(0) - 1).max() < 0.2
    outside = np.linalg.svd(np.eye(16) - basis.T @ basis)[0][:, 0]
    assert ((unplanted @ outside) * np.sqrt(n)).std() > 1.3  # there the slide shift adds


def test_old_cohorts_stay_reachable_through_knobs():
    """local_factors=0 and a slide shift in every direction: every factor sets its share."""
    old = make_feature_cohort(None, n_cases=240, n_patches=40, feat_dim=16, seed=0,
                              local_factors=0, slide_shift_in_signal=True,
                              histology_noise=1.0, survival_signal=1.0)
    assert old.local_directions.shape == (0, 16)
    latent = old.latent.set_index("case_id")
    oracle = slide_oracle_features(old)
    assert list(oracle.columns) == ["share_0", "share_1"]
    assert np.corrcoef(oracle["share_0"], latent.loc[oracle.index, "z0"])[0, 1] > 0.5
    sid = old.cohort["slide_id"].iloc[0]
    unplanted = old.features[sid].feats("20x")[old.planted[sid] < 0]
    assert unplanted.shape[1] == 16
    with pytest.raises(ValueError, match="local_factors"):
        SignalKnobs(local_factors=3)
    with pytest.raises(ValueError, match="feat_dim"):
        make_feature_cohort(None, n_cases=8, feat_dim=2)


def test_knobs_switch_signals_off():
    flat = make_feature_cohort(None, n_cases=200, n_patches=16, feat_dim=8, seed=1,
                               knobs=SignalKnobs(omics_signal=0.0, survival_signal=0.0,
                                                 planted_fraction=0.0))
    latent = flat.latent.set_index("case_id").loc[flat.expression.index]
    assert abs(np.corrcoef(_pathway_scores(flat)["HALLMARK_E2F_TARGETS"], latent["z0"])[0, 1]) < 0.2
    assert all((p < 0).all() for p in flat.planted.values())
    cases = _cases(flat)
    risk = latent.loc[cases.index, "risk"]
    assert abs(concordance_index(cases["survival_months"], -risk, cases["event"]) - 0.5) < 0.08
    with pytest.raises(TypeError, match="unknown knob"):
        make_feature_cohort(None, n_cases=10, omic_signal=1.0)
    with pytest.raises(ValueError, match="censoring"):
        SignalKnobs(censoring=1.5)


def test_same_seed_same_cohort():
    a = make_feature_cohort(None, n_cases=12, n_patches=10, feat_dim=4, seed=7)
    b = make_feature_cohort(None, n_cases=12, n_patches=10, feat_dim=4, seed=7)
    pd.testing.assert_frame_equal(a.cohort, b.cohort)
    sid = a.cohort["slide_id"].iloc[0]
    np.testing.assert_array_equal(a.features[sid].feats("10x"), b.features[sid].feats("10x"))


def test_written_feature_cohort_loads_and_refuses_overwrite(tmp_path):
    out = tmp_path / "syn"
    fc = make_feature_cohort(out, n_cases=10, n_patches=10, feat_dim=4, seed=3)
    assert load_cohort(out / "cohort.csv").table.equals(load_cohort(out / "cohort.csv").table)
    pd.testing.assert_frame_equal(read_expression(out / "omics.csv"), fc.expression, atol=1e-4)
    assert read_gene_sets(out / "gene_sets.gmt") == fc.gene_sets
    planted = pd.read_csv(out / "planted.csv")
    assert len(planted) == sum(int((p >= 0).sum()) for p in fc.planted.values())
    with pytest.raises(HistoKDError, match="already exists"):
        make_feature_cohort(out, n_cases=10, seed=4)
    assert read_gene_sets(out / "gene_sets.gmt") == fc.gene_sets
    make_feature_cohort(out, n_cases=8, n_patches=10, feat_dim=4, seed=4, overwrite=True)
    assert len(load_cohort(out / "cohort.csv")) == 8
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_image_cohort_regions_follow_latent_factors(tmp_path):
    from histokd_core.slide import open_slide

    sc = make_synthetic_cohort(tmp_path / "img", n_cases=4, slide_size=(384, 384), seed=1,
                               workers=1,
                               multi_slide_fraction=0.0, histology_noise=0.0)
    assert set(sc.slides) == set(sc.cohort["slide_id"]) and load_cohort(sc.cohort_csv)
    latent = sc.latent.set_index("case_id")
    areas = {}
    for sid, regions in sc.regions.items():
        kinds = {r.kind for r in regions}
        assert kinds <= {"tumor", "immune"}
        tumor = next(r for r in regions if r.kind == "tumor")
        areas[sid.rsplit("-S", 1)[0]] = (tumor.x1 - tumor.x0) * (tumor.y1 - tumor.y0)
    z0 = latent.loc[list(areas), "z0"].to_numpy()
    by_factor = np.array(list(areas.values()))[np.argsort(z0)]
    assert (np.diff(by_factor) >= 0).all()  # monotone (the size cap may tie)
    assert by_factor[-1] > by_factor[0]
    with open_slide(next(iter(sc.slides.values()))) as slide:
        assert slide.dimensions == (384, 384) and slide.mpp == pytest.approx(0.5)
    assert len(pd.read_csv(tmp_path / "img" / "regions.csv")) == sum(len(r)
               for r in sc.regions.values())
    with pytest.raises(HistoKDError, match="already exists"):
        make_synthetic_cohort(tmp_path / "img", n_cases=4, slide_size=(384, 384))


@pytest.mark.slow
def test_image_cohort_extracts_and_planted_regions_show_in_features(tmp_path):
    """End to end: slides -> hed-texture features -> CohortData; tumour patches look different."""
    from histokd_core.dataset import CohortData
    from histokd_core.features import extract_slide

    sc = make_synthetic_cohort(tmp_path / "img", n_cases=6, slide_size=(1536, 1536), seed=2,
                               workers=1,
                               multi_slide_fraction=0.0, planted_fraction=0.4)
    for path in sc.slides.values():
        extract_slide(path, tmp_path / "feats", encoder="hed-texture", magnifications=("20x",),
                      num_workers=0, min_tissue=0.1)
    data = CohortData(sc.cohort_csv, tmp_path / "feats", omics=sc.omics_csv,
                      gene_sets=sc.gene_sets_path,
                      n_folds=2, n_bins=2)
    bags = {b.case_id: b for b in data.all_bags()[0]}
    inside, outside = [], []
    for sid, regions in sc.regions.items():
        bag = bags[sid.rsplit("-S", 1)[0]]
        tumor = next(r for r in regions if r.kind == "tumor")
        frac = tumor.overlap_fraction(bag.coords.numpy(), bag.patch_size)
        inside.append(bag.feats[frac > 0.5].numpy())
        outside.append(bag.feats[frac == 0].numpy())
    inside, outside = np.concatenate(inside), np.concatenate(outside)
    assert len(inside) >= 4 and len(outside) >= 4
    pooled = np.concatenate([inside, outside]).std(0) + 1e-6
    effect = np.abs(inside.mean(0) - outside.mean(0)) / pooled
    assert effect.max() > 1.0
