"""Cohort tables (one row per slide) and reproducible, stratified cross-validation folds.

A cohort CSV/TSV has ``case_id``, ``slide_id`` and either survival columns
(``survival_months`` plus ``event`` with 1 = death observed, or the SurvPath/MCAT ``censorship``
with 1 = censored) or a label column. Several slides may belong to one case: a case's bag is the
concatenation of its slides (SurvPath's convention) unless ``one_slide_per_case`` keeps the first.

Folds follow the papers' protocol: 5 folds whose test sets (20 %) are disjoint and cover every
case; the remaining cases of a fold are split train/val 80/20 (64/16 overall). All splits are by
case and stratified by event (survival) or label (classification).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from histokd_core.errors import DataError
from histokd_core.io import atomic_write_text
from histokd_core.tables import read_table

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
_MAX_LISTED = 8


def _rows(mask: np.ndarray | pd.Series) -> str:
    """File line numbers (header = line 1) of the true entries of ``mask``, abbreviated."""
    lines = [str(i + 2) for i in np.flatnonzero(np.asarray(mask))]
    more = f" (+{len(lines) - _MAX_LISTED} more)" if len(lines) > _MAX_LISTED else ""
    return ", ".join(lines[:_MAX_LISTED]) + more


def _listed(values) -> str:
    values = [str(v) for v in values]
    more = f" (+{len(values) - _MAX_LISTED} more)" if len(values) > _MAX_LISTED else ""
    return ", ".join(values[:_MAX_LISTED]) + more


@dataclass
class Cohort:
    """A validated cohort: one row per slide.

    Attributes
    ----------
    table : DataFrame with ``case_id``, ``slide_id`` (str) and ``survival_months`` (float, months)
        + ``event`` (int, 1 = event observed) for survival, or ``label`` (int class index) for
        classification; extra columns of the source table are kept.
    task : ``"survival"`` or ``"classification"``.
    class_names : classification: original label values, index = class id.
    source : the file it was read from (``None`` when built in memory).
    """

    table: pd.DataFrame
    task: str = "survival"
    class_names: list[str] = field(default_factory=list)
    source: Path | None = None

    @property
    def case_ids(self) -> list[str]:
        """Unique case ids in table order."""
        return list(dict.fromkeys(self.table["case_id"]))

    @property
    def cases(self) -> pd.DataFrame:
        """One row per case (its first slide's row), indexed by ``case_id``."""
        return self.table.drop_duplicates("case_id").set_index("case_id", drop=False)

    def slides_of(self, case_id: str) -> list[str]:
        """Slide ids of one case, in table order."""
        return list(self.table.loc[self.table["case_id"] == case_id, "slide_id"])

    def strata(self) -> pd.Series:
        """Per-case stratification variable: ``event`` (survival) or ``label`` (classification)."""
        return self.cases["event" if self.task == "survival" else "label"].astype(int)

    def subset(self, case_ids) -> Cohort:
        """The cohort restricted to ``case_ids``."""
        keep = self.table["case_id"].isin(set(case_ids))
        table = self.table[keep].reset_index(drop=True)
        return Cohort(table, self.task, list(self.class_names), self.source)

    def __len__(self) -> int:
        return len(self.case_ids)


def _select_endpoint(df: pd.DataFrame, time_column: str, status_column: str,
                     where: str) -> pd.DataFrame:
    """Use another endpoint's columns (e.g. SurvPath's ``survival_months_dss`` and
    ``censorship_dss``) as ``survival_months`` and ``censorship``/``event``.

    ``status_column`` is read as a censorship indicator (1 = censored) when its name contains
    "censor", else as an event indicator (1 = event).
    """
    missing = [c for c in (time_column, status_column) if c not in df.columns]
    if missing:
        raise DataError(f"{where}: missing survival column(s) {', '.join(map(repr, missing))}")
    status = "censorship" if "censor" in status_column.lower() else "event"
    df = df.drop(columns=[c for c in ("survival_months", "event", "censorship")
                          if c in df.columns and c not in (time_column, status_column)])
    return df.rename(columns={time_column: "survival_months", status_column: status})


def _survival_columns(df: pd.DataFrame, where: str) -> pd.DataFrame:
    if "survival_months" not in df.columns:
        raise DataError(
            f"{where}: missing column 'survival_months' (follow-up time in months) "
            "for a survival task")
    times = pd.to_numeric(df["survival_months"], errors="coerce")
    bad = times.isna()
    if bad.any():
        raise DataError(
            f"{where}: column 'survival_months' is missing or not a number on line(s) {_rows(bad)}")
    neg = times < 0
    if neg.any():
        raise DataError(
            f"{where}: column 'survival_months' is negative on line(s) {_rows(neg)}; "
            "times must be >= 0")

    def binary(name: str) -> pd.Series:
        values = pd.to_numeric(df[name], errors="coerce")
        bad = ~values.isin([0, 1])
        if bad.any():
            raise DataError(
                f"{where}: column '{name}' must be 0 or 1; got other values on line(s) "
                f"{_rows(bad)}")
        return values.astype(int)

    has_event, has_cens = "event" in df.columns, "censorship" in df.columns
    if not (has_event or has_cens):
        raise DataError(
            f"{where}: missing column 'event' (1 = death observed, 0 = censored) or 'censorship' "
            "(SurvPath/MCAT convention: 1 = censored)"
        )
    if has_event:
        event = binary("event")
        if has_cens:
            implied = 1 - binary("censorship")
            clash = event != implied
            if clash.any():
                raise DataError(
                    f"{where}: columns 'event' and 'censorship' disagree on line(s) {_rows(clash)} "
                    "(event must equal 1 - censorship); keep only one of them"
                )
    else:
        event = 1 - binary("censorship")
        log.info("%s: converted 'censorship' (1 = censored) to 'event' = 1 - censorship", where)
    df = df.copy()
    df["survival_months"] = times.astype(float)
    df["event"] = event
    return df


def _label_column(
    df: pd.DataFrame, label_column: str, where: str
) -> tuple[pd.DataFrame, list[str]]:
    if label_column not in df.columns:
        raise DataError(
            f"{where}: missing label column {label_column!r} (columns: {_listed(df.columns)})")
    values = df[label_column]
    bad = values.isna() | (values.astype(str).str.strip() == "")
    if bad.any():
        raise DataError(f"{where}: label column {label_column!r} is empty on line(s) {_rows(bad)}")
    classes = sorted(values.unique(), key=lambda v: (str(type(v)), v))
    if len(classes) < 2:
        raise DataError(
            f"{where}: label column {label_column!r} has a single class ({classes[0]!r}); "
            "classification needs at least two"
        )
    df = df.copy()
    df["label"] = values.map({c: i for i, c in enumerate(classes)}).astype(int)
    return df, [str(c) for c in classes]


def validate_cohort(
    df: pd.DataFrame,
    task: str = "survival",
    label_column: str | None = None,
    one_slide_per_case: bool = False,
    where: str = "cohort table",
    survival_columns: tuple[str, str] | None = None,
) -> Cohort:
    """Validate a cohort DataFrame (see :func:`load_cohort`); ``where`` names it in errors."""
    if task not in ("survival", "classification"):
        raise DataError(f"{where}: task must be 'survival' or 'classification', got {task!r}")
    df = df.loc[:, [c for c in df.columns if not str(c).startswith("Unnamed:")]]
    if survival_columns is not None and task == "survival":
        df = _select_endpoint(df, *survival_columns, where=where)
    missing = [c for c in ("case_id", "slide_id") if c not in df.columns]
    if missing:
        raise DataError(
            f"{where}: missing column(s) {', '.join(missing)} (columns: {_listed(df.columns)})")
    if df.empty:
        raise DataError(f"{where}: no rows")
    df = df.reset_index(drop=True).copy()
    for name in ("case_id", "slide_id"):
        empty = df[name].isna() | (df[name].astype(str).str.strip() == "")
        if empty.any():
            raise DataError(f"{where}: column '{name}' is empty on line(s) {_rows(empty)}")
        df[name] = df[name].astype(str).str.strip()
    dup = df["slide_id"].duplicated(keep=False)
    if dup.any():
        raise DataError(
            f"{where}: duplicate slide_id {_listed(df.loc[dup, 'slide_id'].unique())} "
            f"on line(s) {_rows(dup)}"
        )
    class_names: list[str] = []
    if task == "survival":
        df = _survival_columns(df, where)
        per_case = df.groupby("case_id")[["survival_months", "event"]].nunique()
        clash = per_case[(per_case > 1).any(axis=1)].index
        if len(clash):
            raise DataError(
                f"{where}: slides of case(s) {_listed(clash)} disagree on survival_months/event")
    else:
        df, class_names = _label_column(df, label_column or "label", where)
        clash = df.groupby("case_id")["label"].nunique()
        clash = clash[clash > 1].index
        if len(clash):
            raise DataError(f"{where}: slides of case(s) {_listed(clash)} have different labels")
    if one_slide_per_case:
        df = df.drop_duplicates("case_id", keep="first").reset_index(drop=True)
    return Cohort(df, task, class_names)


def load_cohort(
    path: str | os.PathLike,
    task: str = "survival",
    label_column: str | None = None,
    one_slide_per_case: bool = False,
    survival_columns: tuple[str, str] | None = None,
) -> Cohort:
    """Read and validate a cohort table.

    Parameters
    ----------
    path : CSV, TSV or parquet with ``case_id``, ``slide_id`` and, for survival,
        ``survival_months`` (months, >= 0) with ``event`` (1 = event) or ``censorship``
        (1 = censored; converted to ``event = 1 - censorship``; both present must agree).
    task : ``"survival"`` or ``"classification"``.
    label_column : classification label column (default ``"label"``); its sorted unique values
        become class ids 0..C-1 (``Cohort.class_names``).
    one_slide_per_case : keep only the first slide of each case instead of concatenating them.
    survival_columns : ``(time, status)`` columns of another endpoint, e.g.
        ``("survival_months_dss", "censorship_dss")``; a status name containing "censor" is
        read as 1 = censored, otherwise as 1 = event. The default columns are then ignored.

    Raises
    ------
    DataError
        Naming the file, the column and the line numbers of the offending rows.
    """
    path = Path(path).expanduser()
    cohort = validate_cohort(read_table(path), task, label_column, one_slide_per_case,
                             where=str(path), survival_columns=survival_columns)
    cohort.source = path
    return cohort


@dataclass
class Folds:
    """Cross-validation folds by case.

    Attributes
    ----------
    assignments : DataFrame with columns ``fold`` (int), ``case_id`` (str), ``split``
        (``"train"``/``"val"``/``"test"``): every case appears once per fold.
    """

    assignments: pd.DataFrame

    @property
    def n_folds(self) -> int:
        return int(self.assignments["fold"].nunique())

    def cases(self, fold: int, split: str) -> list[str]:
        """Case ids of ``split`` in ``fold``."""
        if split not in SPLITS:
            raise DataError(f"split must be one of {SPLITS}, got {split!r}")
        if fold not in set(self.assignments["fold"]):
            raise DataError(
                f"fold {fold} does not exist (folds: {sorted(set(self.assignments['fold']))})")
        a = self.assignments
        return list(a.loc[(a["fold"] == fold) & (a["split"] == split), "case_id"])

    def split(self, fold: int) -> tuple[list[str], list[str], list[str]]:
        """``(train, val, test)`` case ids of ``fold``."""
        return tuple(self.cases(fold, s) for s in SPLITS)  # type: ignore[return-value]

    def by_case(self, cohort: Cohort, where: str = "folds") -> Folds:
        """These folds with slide ids replaced by their case ids, when they list slides.

        CLAM's classification split files list slide ids, SurvPath's list case ids. When every id
        is a slide id of ``cohort`` and not all are case ids, each is replaced by its case; a case
        whose slides sit in different splits of one fold is an error (naming the fold and case).
        Otherwise the folds are returned unchanged (:meth:`check` reports what does not match).
        """
        ids = set(self.assignments["case_id"])
        if ids <= set(cohort.case_ids):
            return self
        case_of = dict(zip(cohort.table["slide_id"].astype(str), cohort.table["case_id"]))
        if not ids <= set(case_of):
            return self
        a = self.assignments.assign(case_id=self.assignments["case_id"].map(case_of))
        splits = a.groupby(["fold", "case_id"])["split"].nunique()
        if (splits > 1).any():
            fold, case = splits[splits > 1].index[0]
            raise DataError(
                f"{where}: fold {fold} puts slides of case {case} in different splits; "
                "a case's slides must share a split")
        log.info("%s: split files list slide ids; mapped to their cases", where)
        return Folds(a.drop_duplicates(["fold", "case_id"]).reset_index(drop=True))

    def check(self, cohort: Cohort, where: str = "folds") -> None:
        """Raise :class:`DataError` unless every fold covers exactly the cohort's cases."""
        expected = set(cohort.case_ids)
        for fold, part in self.assignments.groupby("fold"):
            got = set(part["case_id"])
            if got != expected:
                extra, missing = sorted(got - expected), sorted(expected - got)
                raise DataError(
                    f"{where}: fold {fold} does not match the cohort "
                    f"(unknown cases: {_listed(extra) or 'none'}; "
                    f"cases without a split: {_listed(missing) or 'none'})"
                )

    def save_csv(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write ``fold,case_id,split`` rows atomically; refuses an existing file unless
        ``overwrite``."""
        return atomic_write_text(path, self.assignments.to_csv(index=False), overwrite=overwrite)

    @classmethod
    def load_csv(cls, path: str | os.PathLike) -> Folds:
        """Read folds written by :meth:`save_csv` (or by hand with the same columns).

        A folder of CLAM/SurvPath/MCAT split files (``splits_0.csv``, ``splits_1.csv``, ...,
        each with ``train``, ``val``, ``test`` columns of case ids) is read as well, so runs
        can reuse those tools' published folds.
        """
        path = Path(path).expanduser()
        if path.is_dir():
            return cls._load_split_dir(path)
        df = read_table(path)
        missing = [c for c in ("fold", "case_id", "split") if c not in df.columns]
        if missing:
            raise DataError(
                f"{path}: missing column(s) {', '.join(missing)}; expected fold, case_id, split")
        folds = pd.to_numeric(df["fold"], errors="coerce")
        bad = folds.isna() | (folds != folds.round())
        if bad.any():
            raise DataError(f"{path}: column 'fold' must be an integer on line(s) {_rows(bad)}")
        bad = ~df["split"].isin(SPLITS)
        if bad.any():
            raise DataError(
                f"{path}: column 'split' must be train, val or test on line(s) {_rows(bad)}")
        df = pd.DataFrame(
            {"fold": folds.astype(int), "case_id": df["case_id"].astype(str), "split": df["split"]}
        )
        dup = df.duplicated(["fold", "case_id"], keep=False)
        if dup.any():
            raise DataError(f"{path}: a case appears twice in one fold on line(s) {_rows(dup)}")
        return cls(df)

    @classmethod
    def _load_split_dir(cls, folder: Path) -> Folds:
        files = sorted(folder.glob("splits_*.csv"), key=lambda p: p.stem.split("_")[-1].zfill(6))
        if not files:
            raise DataError(
                f"{folder}: no splits_<k>.csv files (CLAM/SurvPath layout) in this folder")
        rows = []
        for fold, file in enumerate(files):
            table = read_table(file)
            missing = [c for c in SPLITS if c not in table.columns]
            if missing:
                raise DataError(
                    f"{file}: missing column(s) {', '.join(missing)}; expected train, val, test")
            for split in SPLITS:
                rows += [(fold, str(c).strip(), split) for c in table[split].dropna()]
        df = pd.DataFrame(rows, columns=["fold", "case_id", "split"])
        dup = df.duplicated(["fold", "case_id"])
        if dup.any():
            first = df[dup].iloc[0]
            raise DataError(f"{files[first['fold']]}: case {first['case_id']} is in two splits")
        return cls(df)


def _allocate(n: int, parts: int, offset: int) -> np.ndarray:
    """Part index of ``n`` shuffled items dealt round-robin from part ``offset``."""
    return (np.arange(n) + offset) % parts


def make_folds(cohort: Cohort, n_folds: int = 5, seed: int = 0, val_fraction: float = 0.2) -> Folds:
    """Stratified K-fold splits by case with a stratified validation split.

    Each stratum (event for survival, label for classification) is shuffled with ``seed`` and
    dealt round-robin to the ``n_folds`` test sets (disjoint, covering all cases); within each
    fold, the other cases of every stratum are shuffled again and ``val_fraction`` of them go to
    validation (5 folds, 0.2 -> train/val/test 64/16/20 %).
    """
    if n_folds < 2:
        raise DataError(f"n_folds must be >= 2, got {n_folds}")
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    strata = cohort.strata()
    if len(strata) < n_folds:
        raise DataError(f"cohort has {len(strata)} cases, fewer than n_folds = {n_folds}")
    rng = np.random.default_rng(seed)
    test_fold: dict[str, int] = {}
    offset = 0
    for value in sorted(strata.unique()):
        ids = np.array(strata.index[strata == value])
        rng.shuffle(ids)
        for case, part in zip(ids, _allocate(len(ids), n_folds, offset)):
            test_fold[case] = int(part)
        offset = (offset + len(ids)) % n_folds  # keeps fold sizes balanced across strata
    rows = []
    for fold in range(n_folds):
        fold_rng = np.random.default_rng([seed, fold])
        for value in sorted(strata.unique()):
            ids = [c for c in strata.index[strata == value]]
            rest = np.array([c for c in ids if test_fold[c] != fold])
            fold_rng.shuffle(rest)
            n_val = int(round(val_fraction * len(rest)))
            val = set(rest[:n_val])
            for case in ids:
                split = "test" if test_fold[case] == fold else ("val" if case in val else "train")
                rows.append((fold, case, split))
    df = pd.DataFrame(rows, columns=["fold", "case_id", "split"])
    order = {c: i for i, c in enumerate(cohort.case_ids)}
    df = df.sort_values(["fold", "case_id"], key=lambda s: s.map(order)
                        if s.name == "case_id" else s)
    return Folds(df.reset_index(drop=True))


#: Fewest events (deaths) a survival test fold must hold by default: with fewer, a fold's
#: C-index rests on a handful of comparable pairs and swings between 0 and 1.
MIN_TEST_EVENTS = 3


def check_evaluable(cohort: Cohort, folds: Folds | None, min_test_events: int = MIN_TEST_EVENTS,
                    where: str | None = None) -> None:
    """Refuse folds whose test sets cannot be scored.

    Survival: the cohort must hold events, and every fold's test split at least
    ``min_test_events`` of them (a C-index needs comparable pairs, i.e. deaths). Classification:
    every fold's training and test splits must hold every class (an AUC needs both classes).
    ``folds=None`` checks the whole cohort as one test set (an external evaluation).

    Raises
    ------
    DataError
        Naming the cohort file, the fold, its counts and what to change.
    """
    where = where or (str(cohort.source) if cohort.source is not None else "cohort")
    strata = cohort.strata()
    if cohort.task == "survival":
        if int(strata.sum()) == 0:
            raise DataError(
                f"{where}: no case has an event (column 'event' is 0 everywhere, or "
                "'censorship' 1 everywhere): survival cannot be evaluated without deaths; check "
                "the event/censorship coding (event = 1 means the death was observed)")
        if folds is None:
            return
        for fold in sorted(set(folds.assignments["fold"])):
            test = folds.cases(fold, "test")
            events = int(strata.reindex(test).fillna(0).sum())
            if events < min_test_events:
                raise DataError(
                    f"{where}: fold {fold}'s test split has {events} event(s) among {len(test)} "
                    f"case(s); a test C-index needs at least {min_test_events} events "
                    f"({int(strata.sum())} events in {len(strata)} cases): use fewer folds "
                    f"(--folds {max(2, int(strata.sum()) // max(1, min_test_events))}), a larger "
                    "cohort, or lower the minimum (--min-test-events)")
        return
    classes = list(range(len(cohort.class_names))) or sorted(strata.unique())
    names = cohort.class_names or [str(c) for c in classes]
    if folds is None:
        absent = [names[c] for c in classes if c not in set(strata)]
        if absent:
            raise DataError(
                f"{where}: no case of class(es) {', '.join(map(repr, absent))}; an AUC needs "
                "every class the model predicts")
        return
    for fold in sorted(set(folds.assignments["fold"])):
        for split in ("train", "test"):
            ids = folds.cases(fold, split)
            present = set(strata.reindex(ids).dropna().astype(int))
            absent = [names[c] if c < len(names) else str(c) for c in classes if c not in present]
            if absent:
                raise DataError(
                    f"{where}: fold {fold}'s {split} split ({len(ids)} case(s)) has no case of "
                    f"class(es) {', '.join(map(repr, absent))}; every fold needs every class to "
                    "train and compute an AUC: use fewer folds (--folds), more cases of that "
                    "class, or folds stratified by label (the default folds are)")
