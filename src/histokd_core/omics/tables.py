"""Expression tables: cases x genes, indexed by case id (CSV, TSV or parquet)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import numpy as np
import pandas as pd

from histokd_core.errors import DataError
from histokd_core.tables import read_header, read_table

log = logging.getLogger(__name__)
_MAX_LISTED = 8

#: Non-gene columns of cohort tables, ignored when a table is read without a suffix.
METADATA_COLUMNS = frozenset(
    {"case_id", "slide_id", "survival_months", "event", "censorship", "label", "age", "site",
     "is_female", "oncotree_code", "train", "oncotree", "sex"}
)


def _where_rows(rows, from_file: bool) -> str:
    """``line(s) 3, 7`` of a file (header = line 1) or ``row(s) 1, 5`` of a DataFrame."""
    rows = list(rows)
    labels = [str(r + 2 if from_file else r) for r in rows[:_MAX_LISTED]]
    more = f" (+{len(rows) - _MAX_LISTED} more)" if len(rows) > _MAX_LISTED else ""
    return f"{'line' if from_file else 'row'}(s) {', '.join(labels)}{more}"


def _check_header(path, columns: list[str], where: str) -> None:
    """Duplicate column names as written in the file (pandas renames a repeated ``G`` to
    ``G.1``, which would hide them)."""
    header = read_header(path) if not isinstance(path, pd.DataFrame) else columns
    seen: dict[str, list[int]] = {}
    for i, name in enumerate(header):
        if name and not name.startswith("Unnamed:"):
            seen.setdefault(name, []).append(i + 1)
    dup = {k: v for k, v in seen.items() if len(v) > 1}
    if dup:
        listed = "; ".join(f"{k!r} (columns {', '.join(map(str, v))})"
                           for k, v in list(dup.items())[:_MAX_LISTED])
        raise DataError(
            f"{where}: duplicate column name(s) in the header: {listed}; each gene must appear "
            "once: remove or rename the repeated columns")


def _non_numeric(values: pd.Series) -> pd.Series:
    """True where a value is present but does not parse as a number."""
    parsed = pd.to_numeric(values, errors="coerce")
    return parsed.isna() & values.notna()


def read_expression(
    path: str | os.PathLike | pd.DataFrame,
    suffix: str | None = "auto",
    case_column: str = "case_id",
    warn: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Read a cases x genes expression table.

    Parameters
    ----------
    path : CSV/TSV/parquet file, or a DataFrame (case ids in a column or as its index). Rows
        are cases: a ``case_id`` column, else the first column (e.g. SurvPath's
        ``rna_clean.csv`` index) holds the case ids. Several rows of one case (one per slide, as
        in ``tcga_hnsc_all_clean.csv``) must carry the same values and are merged.
    suffix : keep only columns ending with it and strip it (``"_rnaseq"`` -> gene symbols);
        ``"auto"`` uses ``"_rnaseq"`` when such columns exist, else every non-metadata column;
        ``None`` keeps every non-metadata column.
    case_column : name of the case id column.
    warn : receives one message per column left out (a text column without any number, read
        as metadata); default ``logging.warning``.

    Returns
    -------
    DataFrame ``(n_cases, n_genes)`` float32 indexed by ``case_id`` (str), columns = gene names.

    Raises
    ------
    DataError
        Unreadable file, no gene columns, a gene column holding text among its numbers (naming
        the column, example values and their lines), missing values (naming the column),
        duplicate column names in the header, or one case with conflicting rows.
    """
    warn = warn or log.warning
    from_file = not isinstance(path, pd.DataFrame)
    where = str(path) if from_file else "expression table"
    if isinstance(path, pd.DataFrame):
        df = path.copy()
        if case_column not in df.columns and not isinstance(df.index, pd.RangeIndex):
            df = df.rename_axis(case_column).reset_index()  # cases x genes indexed by case id
    else:
        df = read_table(path)
    _check_header(path, [str(c).strip() for c in df.columns], where)
    if case_column in df.columns:  # drop a saved pandas index; else column 0 holds the cases
        df = df.loc[:, [c for c in df.columns if not str(c).startswith("Unnamed:")]]
    if case_column not in df.columns:
        case_column = df.columns[0]
    cases = df[case_column].astype(str).str.strip()
    df = df.drop(columns=[case_column])
    if suffix == "auto":
        suffix = "_rnaseq" if any(str(c).endswith("_rnaseq") for c in df.columns) else None
    if suffix is not None:
        df = df.loc[:, [c for c in df.columns if str(c).endswith(suffix)]]
        df.columns = [str(c)[: -len(suffix)] for c in df.columns]
    df = df.loc[:, [c for c in df.columns if str(c).strip() not in METADATA_COLUMNS]]
    df.columns = [str(c).strip() for c in df.columns]
    text_columns = []
    for col in df.columns:
        if pd.api.types.is_numeric_dtype(df[col]):
            continue
        bad = _non_numeric(df[col])
        if bad.all() or not bad.any():
            if bad.all():
                text_columns.append(col)
            continue
        rows = np.flatnonzero(bad.to_numpy())
        examples = ", ".join(repr(str(v)) for v in dict.fromkeys(df[col].to_numpy()[rows][:4]))
        raise DataError(
            f"{where}: gene column {col!r} holds non-numeric value(s) {examples} on "
            f"{_where_rows(rows, from_file)}; expected numbers (decimal point '.', no thousands "
            "separator; leave a missing value empty)")
    if text_columns:
        warn(f"{where}: left out {len(text_columns)} column(s) without any number, read as "
             f"metadata, not genes: {', '.join(map(repr, text_columns[:_MAX_LISTED]))}"
             f"{' ...' if len(text_columns) > _MAX_LISTED else ''}")
        df = df.drop(columns=text_columns)
    if df.shape[1] == 0:
        ending = f" ending with {suffix!r}" if suffix else ""
        raise DataError(f"{where}: no gene columns found{ending}")
    df = df.apply(pd.to_numeric, errors="coerce")
    nan_cols = df.columns[df.isna().any()]
    if len(nan_cols):
        first = np.flatnonzero(df[nan_cols[0]].isna().to_numpy())
        raise DataError(
            f"{where}: missing values in gene column(s) {', '.join(nan_cols[:8])}"
            f"{' ...' if len(nan_cols) > 8 else ''} (column {nan_cols[0]!r}: "
            f"{_where_rows(first, from_file)}); impute or drop them first"
        )
    df.index = pd.Index(cases, name="case_id")
    if df.index.duplicated().any():
        grouped = df.groupby(level=0, sort=False)
        spread = (grouped.max() - grouped.min()).abs().max(axis=1)
        conflict = spread.index[spread > 1e-6]
        if len(conflict):
            raise DataError(
                f"{where}: case(s) {', '.join(conflict[:8])} have several rows with "
                "different values"
            )
        df = df[~df.index.duplicated(keep="first")]
    return df.astype(np.float32)


def align_cases(
    expression: pd.DataFrame, case_ids, where: str = "expression table"
) -> pd.DataFrame:
    """Rows of ``expression`` for ``case_ids`` in that order; :class:`DataError` lists the
    missing cases."""
    case_ids = [str(c) for c in case_ids]
    missing = [c for c in case_ids if c not in expression.index]
    if missing:
        raise DataError(
            f"{where}: no expression for {len(missing)} case(s): {', '.join(missing[:8])}"
            f"{' ...' if len(missing) > 8 else ''}"
        )
    return expression.loc[case_ids]
