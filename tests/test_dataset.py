"""CohortData: bags per fold, fold-safe omics, survival bins, feature caching, errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from histokd_core.cohort import Folds, load_cohort, make_folds, validate_cohort
from histokd_core.dataset import CohortData
from histokd_core.errors import DataError
from histokd_core.features.slide_features import SlideFeatures
from histokd_core.omics import pathway_tokens, read_gene_sets
from histokd_core.survival.bins import assign_bins, survival_bin_edges
from histokd_core.synthetic.cohort import make_feature_cohort


@pytest.fixture(scope="module")
def synth():
    return make_feature_cohort(None, n_cases=40, n_patches=24, feat_dim=16, seed=5,
                               multi_slide_fraction=0.3)


def _data(synth, **kw):
    return CohortData(validate_cohort(synth.cohort), synth.features, omics=synth.expression,
                      gene_sets=synth.gene_sets, **kw)


class _Counting(dict):
    """Feature mapping that counts reads of each slide's arrays."""

    def __init__(self, features):
        self.reads: dict[str, int] = {}
        wrapped = {}
        for sid, sf in features.items():
            def loader(mag, name, sf=sf, sid=sid):
                self.reads[sid] = self.reads.get(sid, 0) + 1
                return sf.feats(mag) if name == "feats" else sf.coords(mag)
            mag_attrs = {m: sf.mag_attrs(m) for m in sf.magnifications}
            wrapped[sid] = SlideFeatures(sid, sf.source, sf.attrs, mag_attrs, loader)
        super().__init__(wrapped)


def test_fold_bags_and_info(synth):
    data = _data(synth)
    fold = data.fold(0)
    train, val, test = data.folds.split(0)
    assert [b.case_id for b in fold.train] == train
    assert len(fold.val) == len(val) and len(fold.test) == len(test)
    info = fold.info
    assert info.task == "survival" and info.feat_dim == 16 and info.has_10x
    assert info.encoder_id == "synthetic-features" and info.n_classes == 4
    assert info.gene_names == list(synth.expression.columns)
    assert info.n_genes == len(info.gene_names)
    expected = pathway_tokens(synth.gene_sets, info.gene_names)
    assert info.pathways == expected.indices and info.pathway_names == expected.names
    assert info.tumor_genes and info.tme_genes and not set(info.tumor_genes) & set(info.tme_genes)
    bag = fold.train[0]
    assert bag.feats.dtype == torch.float32 and bag.coords.dtype == torch.int64
    assert bag.feats.shape[1] == 16 and bag.coords.shape == (len(bag.feats), 2)
    assert bag.omics.shape == (info.n_genes,) and bag.omics.dtype == torch.float32
    assert bag.feats_10x is not None and bag.feats_10x.shape[1] == 16 and bag.patch_size == 256
    row = synth.cohort.drop_duplicates("case_id").set_index("case_id").loc[bag.case_id]
    assert bag.time == pytest.approx(row["survival_months"]) and bag.event == row["event"]


def test_bins_are_quartiles_of_uncensored_training_times(synth):
    data = _data(synth)
    fold = data.fold(1)
    t = np.array([b.time for b in fold.train])
    e = np.array([b.event for b in fold.train])
    q = np.quantile(t[e == 1], [0.25, 0.5, 0.75])
    np.testing.assert_allclose(fold.info.bin_edges, [0.0, *q, t.max()])
    for b in fold.train + fold.val + fold.test:
        assert b.bin == int(np.clip(np.searchsorted(q, b.time, side="right"), 0, 3))
    assert set(b.bin for b in fold.train) == {0, 1, 2, 3}


def test_bin_helpers_hand_values():
    edges = survival_bin_edges(np.array([1.0, 2, 3, 4, 5, 100]),
                               np.array([1, 1, 1, 1, 1, 0]), n_bins=4)
    assert edges == [0.0, 2.0, 3.0, 4.0, 100.0]
    np.testing.assert_array_equal(assign_bins([0.5, 2.0, 3.5, 4.0, 500.0], edges), [0, 1, 2, 3, 3])
    few = survival_bin_edges(np.array([1.0, 2, 3, 4, 5]), np.array([1, 0, 0, 0, 0]), n_bins=4)
    assert few == [0.0, 2.0, 3.0, 4.0, 5.0]  # too few events: all training times
    with pytest.raises(DataError, match="2 training case"):
        survival_bin_edges(np.array([1.0, 2.0]), np.array([1, 0]), n_bins=4)


def test_omics_normalised_with_training_fold_only(synth):
    clean = _data(synth).fold(0)
    test_ids = [b.case_id for b in clean.test]
    leaked = synth.expression.copy()
    leaked.loc[test_ids] += 1000.0  # test cases far off: a leak would move every training z-score
    fold = CohortData(validate_cohort(synth.cohort), synth.features, omics=leaked,
                      gene_sets=synth.gene_sets,
                      folds=_data(synth).folds).fold(0)
    for a, b in zip(clean.train + clean.val, fold.train + fold.val):
        torch.testing.assert_close(a.omics, b.omics)
    train = torch.stack([b.omics for b in fold.train])
    torch.testing.assert_close(train.mean(0), torch.zeros(train.shape[1]), atol=1e-4, rtol=0)
    assert all(b.omics.min() > 100 for b in fold.test)


def test_features_loaded_once_and_slides_concatenated(synth):
    counting = _Counting(synth.features)
    data = CohortData(validate_cohort(synth.cohort), counting, omics=synth.expression)
    for k in range(data.n_folds):
        data.fold(k)
    # 20x feats + coords and 10x feats + coords: four reads per slide over all folds
    assert set(counting.reads.values()) == {4} and len(counting.reads) == len(synth.cohort)
    multi = synth.cohort["case_id"].value_counts()
    case = multi.index[0]
    assert multi.iloc[0] == 2
    slides = data.cohort.slides_of(case)
    bag = next(b for b in data.all_bags()[0] if b.case_id == case)
    parts = [synth.features[s].feats("20x") for s in slides]
    np.testing.assert_array_equal(bag.feats.numpy(), np.concatenate(parts))
    np.testing.assert_array_equal(bag.slide_index.numpy(),
                                  np.repeat([0, 1], [len(p) for p in parts]))
    one = CohortData(validate_cohort(synth.cohort, one_slide_per_case=True), synth.features)
    bag1 = next(b for b in one.all_bags()[0] if b.case_id == case)
    np.testing.assert_array_equal(bag1.feats.numpy(), parts[0])


def test_zarr_store_folds_csv_and_hvg(tmp_path):
    fc = make_feature_cohort(tmp_path / "syn", n_cases=20, n_patches=12, feat_dim=8, seed=2)
    cohort = load_cohort(fc.root / "cohort.csv")
    folds_csv = make_folds(cohort, seed=4).save_csv(tmp_path / "folds.csv")
    data = CohortData(fc.root / "cohort.csv", fc.root / "features", omics=fc.root / "omics.csv",
                      gene_sets=fc.root / "gene_sets.gmt", folds=folds_csv, hvg_fraction=0.3)
    fold = data.fold(2)
    assert [b.case_id for b in fold.test] == Folds.load_csv(folds_csv).cases(2, "test")
    n_all = fc.expression.shape[1]
    assert fold.info.n_genes == round(0.3 * n_all)
    assert fold.train[0].omics.shape == (fold.info.n_genes,)
    assert all(max(ix) < fold.info.n_genes for ix in fold.info.pathways)
    first = fold.train[0]
    stored = [fc.features[s].feats("20x") for s in data.cohort.slides_of(first.case_id)]
    np.testing.assert_array_equal(first.feats.numpy(), np.concatenate(stored))
    gone = fc.cohort["slide_id"].iloc[3]
    shutil.rmtree(fc.root / "features" / f"{gone}.zarr")
    with pytest.raises(DataError, match=rf"1 slide\(s\) of 1 case\(s\) have no features.*{gone}"):
        CohortData(fc.root / "cohort.csv", fc.root / "features")


def test_missing_omics_and_fold_mismatch(synth):
    expr = synth.expression.drop(index=synth.expression.index[:2])
    with pytest.raises(DataError, match=r"no expression for 2 case\(s\): SYN-0000, SYN-0001"):
        CohortData(validate_cohort(synth.cohort), synth.features, omics=expr)
    missing = dict(synth.features)
    missing.pop(synth.cohort["slide_id"].iloc[0])
    with pytest.raises(DataError, match="have no features in in-memory features"):
        CohortData(validate_cohort(synth.cohort), missing)
    folds = make_folds(validate_cohort(synth.cohort.iloc[:30]))
    with pytest.raises(DataError, match="does not match the cohort"):
        CohortData(validate_cohort(synth.cohort), synth.features, folds=folds)


def test_classification_bags(synth):
    cohort = validate_cohort(synth.cohort, task="classification", label_column="label")
    fold = CohortData(cohort, synth.features).fold(0)
    assert fold.info.n_classes == 2 and fold.info.n_genes == 0 and fold.info.bin_edges == []
    labels = synth.cohort.drop_duplicates("case_id").set_index("case_id")["label"]
    assert all(b.label == labels[b.case_id] and b.bin == -1 and b.omics is None for b in fold.train)


def test_real_hnsc_table_with_synthetic_features(shared_data):
    cohort = load_cohort(shared_data / "cohorts" / "tcga_hnsc_all_clean.csv")
    rng = np.random.default_rng(0)
    feats = {}
    for sid in cohort.table["slide_id"]:
        arrays = {"feats": rng.standard_normal((3, 4)).astype(np.float32),
                  "coords": np.array([[0, 0], [256, 0], [0, 256]], dtype=np.int64)}
        feats[sid] = SlideFeatures(sid, Path("<memory>"), {"encoder_id": "test"},
                                   {"20x": {"patch_size_level0": 512}},
                                   lambda mag, name, a=arrays: a[name])
    sets = read_gene_sets(shared_data / "pathways" / "combine_signatures.csv")
    table = shared_data / "cohorts" / "tcga_hnsc_all_clean.csv"
    data = CohortData(cohort, feats, omics=table, gene_sets=sets)
    fold = data.fold(0)
    assert fold.info.n_genes == 1557 and len(fold.info.pathways) == 182 and not fold.info.has_10x
    assert len(fold.train) + len(fold.val) + len(fold.test) == 416
    assert fold.train[0].patch_size == 512
    assert "182 of 331 pathways kept" in fold.pathway_report
    assert len(fold.info.tumor_genes) > 50 and len(fold.info.tme_genes) > 50
