"""Cohort tables: validation errors, censorship conversion, stratified folds and their CSV."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from histokd_core.cohort import Folds, load_cohort, make_folds, validate_cohort
from histokd_core.errors import DataError, HistoKDError

HNSC = "cohorts/tcga_hnsc_all_clean.csv"


def _write(tmp_path, rows, name="cohort.csv"):
    path = tmp_path / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _survival_rows(n=20, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "case_id": [f"C{i:02d}" for i in range(n)],
        "slide_id": [f"C{i:02d}-S1" for i in range(n)],
        "survival_months": rng.uniform(1, 60, n).round(2),
        "event": (np.arange(n) % 3 != 0).astype(int),
    }


@pytest.fixture(scope="module")
def hnsc(shared_data):
    return load_cohort(shared_data / HNSC)


def test_real_table_censorship_is_converted(hnsc, shared_data):
    raw = pd.read_csv(shared_data / HNSC,
                      usecols=["slide_id", "censorship"]).rename(columns={"censorship": "raw"})
    assert len(hnsc.table) == 437 and len(hnsc) == 416
    merged = hnsc.table.merge(raw, on="slide_id")
    np.testing.assert_array_equal(merged["event"], 1 - merged["raw"])
    assert set(hnsc.table["event"]) == {0, 1}
    multi = hnsc.table["case_id"].value_counts()
    case = multi.index[0]
    assert multi.iloc[0] > 1 and len(hnsc.slides_of(case)) == multi.iloc[0]


def test_one_slide_per_case(shared_data):
    one = load_cohort(shared_data / HNSC, one_slide_per_case=True)
    assert len(one.table) == 416 == len(one)


def test_folds_real_table_disjoint_covering_stratified(hnsc):
    folds = make_folds(hnsc, n_folds=5, seed=0)
    a = folds.assignments
    cases = set(hnsc.case_ids)
    tests = [set(folds.cases(k, "test")) for k in range(5)]
    for i in range(5):
        for j in range(i + 1, 5):
            assert not tests[i] & tests[j]
    assert set().union(*tests) == cases
    events = hnsc.strata()
    overall = events.mean()
    for k in range(5):
        train, val, test = (set(x) for x in folds.split(k))
        assert train | val | test == cases and not (train & val or train & test or val & test)
        n = len(cases)
        assert abs(len(test) / n - 0.20) < 0.01
        assert abs(len(val) / n - 0.16) < 0.01
        assert abs(len(train) / n - 0.64) < 0.01
        for split in (train, val, test):
            assert abs(events.loc[list(split)].mean() - overall) < 0.02
    assert (a.groupby("fold").size() == len(cases)).all()


def test_folds_depend_on_seed_and_are_reproducible(hnsc):
    a = make_folds(hnsc, seed=0).assignments
    pd.testing.assert_frame_equal(a, make_folds(hnsc, seed=0).assignments)
    assert not a.equals(make_folds(hnsc, seed=1).assignments)


def test_folds_csv_round_trip_and_no_overwrite(hnsc, tmp_path):
    folds = make_folds(hnsc)
    path = folds.save_csv(tmp_path / "folds.csv")
    assert list(pd.read_csv(path).columns) == ["fold", "case_id", "split"]
    loaded = Folds.load_csv(path)
    for k in range(5):
        assert loaded.split(k) == folds.split(k)
    loaded.check(hnsc)
    with pytest.raises(HistoKDError, match="already exists"):
        folds.save_csv(path)
    folds.save_csv(path, overwrite=True)


def test_folds_csv_errors(hnsc, tmp_path):
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"fold": [0], "case_id": ["x"], "split": ["holdout"]}).to_csv(bad, index=False)
    with pytest.raises(DataError, match=r"bad.csv.*'split'.*line\(s\) 2"):
        Folds.load_csv(bad)
    pd.DataFrame({"fold": [0], "case": ["x"]}).to_csv(bad, index=False)
    with pytest.raises(DataError, match="missing column.*case_id"):
        Folds.load_csv(bad)
    partial = Folds(make_folds(hnsc).assignments.iloc[:-1])
    with pytest.raises(DataError, match="cases without a split"):
        partial.check(hnsc)


def test_classification_folds_stratified_by_label(tmp_path):
    rows = _survival_rows(50)
    rows["grade"] = np.where(np.arange(50) < 15, "high", "low")
    cohort = load_cohort(_write(tmp_path, rows), task="classification", label_column="grade")
    assert cohort.class_names == ["high", "low"]
    assert cohort.table["label"].tolist()[:15] == [0] * 15
    folds = make_folds(cohort, seed=3)
    for k in range(5):
        test = folds.cases(k, "test")
        assert cohort.cases.loc[test, "label"].eq(0).sum() == 3


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r.pop("survival_months"), "missing column 'survival_months'"),
        (lambda r: r.pop("event"), "missing column 'event'.*'censorship'"),
        (lambda r: r.pop("case_id"), r"missing column\(s\) case_id"),
        (lambda r: r["survival_months"].__setitem__(3, -1.0),
         r"'survival_months' is negative on line\(s\) 5"),
        (lambda r: r["survival_months"].__setitem__(4, np.nan),
         r"'survival_months' is missing.*line\(s\) 6"),
        (lambda r: r["event"].__setitem__(1, 2), r"'event' must be 0 or 1.*line\(s\) 3"),
        (lambda r: r["slide_id"].__setitem__(2, "C00-S1"),
         r"duplicate slide_id C00-S1 on line\(s\) 2, 4"),
    ],
)
def test_validation_errors_name_file_column_and_line(tmp_path, mutate, message):
    rows = {k: list(v) for k, v in _survival_rows().items()}
    mutate(rows)
    path = _write(tmp_path, rows)
    with pytest.raises(DataError, match=message) as info:
        load_cohort(path)
    assert str(path) in str(info.value)


def test_censorship_and_event_must_agree(tmp_path):
    rows = _survival_rows()
    rows["censorship"] = 1 - rows["event"]
    assert load_cohort(_write(tmp_path, rows)).table["event"].tolist() == list(rows["event"])
    rows["censorship"][5] = rows["event"][5]
    with pytest.raises(DataError, match=r"'event' and 'censorship' disagree on line\(s\) 7"):
        load_cohort(_write(tmp_path, rows))


def test_censorship_only_converts(tmp_path):
    rows = _survival_rows()
    cens = 1 - rows.pop("event")
    rows["censorship"] = cens
    cohort = load_cohort(_write(tmp_path, rows))
    np.testing.assert_array_equal(cohort.table["event"], 1 - cens)


def test_slides_of_one_case_must_agree(tmp_path):
    rows = {k: list(v) for k, v in _survival_rows().items()}
    rows["case_id"][1] = "C00"
    rows["event"][0], rows["event"][1] = 1, 0
    with pytest.raises(DataError, match="case.*C00.*disagree"):
        load_cohort(_write(tmp_path, rows))


def test_label_errors(tmp_path):
    rows = _survival_rows()
    path = _write(tmp_path, rows)
    with pytest.raises(DataError, match="missing label column 'subtype'"):
        load_cohort(path, task="classification", label_column="subtype")
    rows["subtype"] = ["A"] * len(rows["case_id"])
    with pytest.raises(DataError, match="single class"):
        load_cohort(_write(tmp_path, rows), task="classification", label_column="subtype")


def test_missing_file_and_bad_task(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_cohort(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="task"):
        validate_cohort(pd.DataFrame(_survival_rows()), task="regression")


def test_tsv_cohort(tmp_path):
    path = tmp_path / "cohort.tsv"
    pd.DataFrame(_survival_rows()).to_csv(path, sep="\t", index=False)
    assert len(load_cohort(path)) == 20


def test_survpath_split_folder(hnsc, tmp_path):
    folds = make_folds(hnsc, n_folds=3)
    for k in range(3):
        train, val, test = folds.split(k)
        n = max(len(train), len(val), len(test))
        parts = zip(("train", "val", "test"), (train, val, test))
        cols = {name: ids + [None] * (n - len(ids)) for name, ids in parts}
        pd.DataFrame(cols).to_csv(tmp_path / f"splits_{k}.csv")
    loaded = Folds.load_csv(tmp_path)
    assert loaded.n_folds == 3 and all(loaded.split(k) == folds.split(k) for k in range(3))
    loaded.check(hnsc)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no splits_"):
        Folds.load_csv(tmp_path / "empty")


def test_clam_split_files_listing_slide_ids(tmp_path):
    """CLAM's classification splits list slide ids: they map to their cases; a case whose slides
    sit in different splits is refused."""
    rows = {"case_id": ["A", "A", "B", "C", "D"], "slide_id": ["A-1", "A-2", "B-1", "C-1", "D-1"],
            "label": [1, 1, 0, 1, 0]}
    cohort = load_cohort(_write(tmp_path, rows), "classification")
    folder = tmp_path / "splits"
    folder.mkdir()
    pd.DataFrame({"train": ["A-1", "A-2", "B-1"], "val": ["C-1", None, None],
                  "test": ["D-1", None, None]}).to_csv(folder / "splits_0.csv", index=False)
    folds = Folds.load_csv(folder).by_case(cohort)
    folds.check(cohort)
    assert folds.split(0) == (["A", "B"], ["C"], ["D"])
    case_folds = Folds.load_csv(folder).by_case(cohort)
    assert case_folds.by_case(cohort) is case_folds  # case ids: unchanged
    pd.DataFrame({"train": ["A-1", "B-1"], "val": ["C-1", None], "test": ["D-1", "A-2"]}).to_csv(
        folder / "splits_0.csv", index=False)
    with pytest.raises(DataError, match="fold 0 puts slides of case A in different splits"):
        Folds.load_csv(folder).by_case(cohort, where=str(folder))


def test_unreadable_parquet_is_a_data_error(tmp_path):
    path = tmp_path / "cohort.parquet"
    path.write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="cohort.parquet"):
        load_cohort(path)


def test_other_endpoint_columns(tmp_path):
    rows = _survival_rows()
    rows["censorship"] = 1 - rows["event"]
    rows["survival_months_dss"] = rows["survival_months"] / 2
    rows["censorship_dss"] = np.ones(20, dtype=int)
    rows["censorship_dss"][:4] = 0
    path = _write(tmp_path, rows)
    dss = load_cohort(path, survival_columns=("survival_months_dss", "censorship_dss"))
    assert dss.table["event"].tolist() == [1] * 4 + [0] * 16
    np.testing.assert_allclose(dss.table["survival_months"], rows["survival_months"] / 2)
    with pytest.raises(DataError, match="missing survival column.*'pfi'"):
        load_cohort(path, survival_columns=("survival_months", "pfi"))
