"""Expression tables: cases x genes, indexed by case id (CSV, TSV or parquet)."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from histokd_core.errors import DataError
from histokd_core.tables import read_table

#: Non-gene columns of cohort tables, ignored when a table is read without a suffix.
METADATA_COLUMNS = frozenset(
    {"case_id", "slide_id", "survival_months", "event", "censorship", "label", "age", "site",
     "is_female", "oncotree_code", "train", "oncotree", "sex"}
)


def read_expression(
    path: str | os.PathLike | pd.DataFrame,
    suffix: str | None = "auto",
    case_column: str = "case_id",
) -> pd.DataFrame:
    """Read a cases x genes expression table.

    Parameters
    ----------
    path : CSV/TSV/parquet file, or a DataFrame (case ids in a column or as its index). Rows
        are cases: a ``case_id`` column, else the first column (e.g. SurvPath's
        ``rna_clean.csv`` index) holds the case ids. Several rows of one case (one per slide, as
        in ``tcga_hnsc_all_clean.csv``) must carry the same values and are merged.
    suffix : keep only columns ending with it and strip it (``"_rnaseq"`` -> gene symbols);
        ``"auto"`` uses ``"_rnaseq"`` when such columns exist, else every numeric non-metadata
        column; ``None`` keeps every non-metadata column.
    case_column : name of the case id column.

    Returns
    -------
    DataFrame ``(n_cases, n_genes)`` float32 indexed by ``case_id`` (str), columns = gene names.

    Raises
    ------
    DataError
        Unreadable file, no gene columns, non-numeric or missing values (naming the column),
        duplicate gene names, or one case with conflicting rows.
    """
    where = "expression table" if isinstance(path, pd.DataFrame) else str(path)
    if isinstance(path, pd.DataFrame):
        df = path.copy()
        if case_column not in df.columns and not isinstance(df.index, pd.RangeIndex):
            df = df.rename_axis(case_column).reset_index()  # cases x genes indexed by case id
    else:
        df = read_table(path)
    if case_column in df.columns:  # drop a saved pandas index; else column 0 holds the cases
        df = df.loc[:, [c for c in df.columns if not str(c).startswith("Unnamed:")]]
    if case_column not in df.columns:
        case_column = df.columns[0]
    cases = df[case_column].astype(str).str.strip()
    df = df.drop(columns=[case_column])
    if suffix == "auto":
        suffix = "_rnaseq" if any(str(c).endswith("_rnaseq") for c in df.columns) else None
        if suffix is None:
            df = df.loc[:, [c for c in df.columns if pd.api.types.is_numeric_dtype(df[c])]]
    if suffix is not None:
        df = df.loc[:, [c for c in df.columns if str(c).endswith(suffix)]]
        df.columns = [str(c)[: -len(suffix)] for c in df.columns]
    df = df.loc[:, [c for c in df.columns if str(c) not in METADATA_COLUMNS]]
    if df.shape[1] == 0:
        ending = f" ending with {suffix!r}" if suffix else ""
        raise DataError(f"{where}: no gene columns found{ending}")
    df.columns = [str(c).strip() for c in df.columns]
    dup = pd.Index(df.columns)[pd.Index(df.columns).duplicated()]
    if len(dup):
        raise DataError(f"{where}: duplicate gene column(s) {', '.join(map(str, dup[:8]))}")
    for col in df.columns:
        if not pd.api.types.is_numeric_dtype(df[col]):
            values = pd.to_numeric(df[col], errors="coerce")
            if values.isna().any() and not df[col].isna().all():
                raise DataError(f"{where}: gene column {col!r} holds non-numeric values")
            df[col] = values
    nan_cols = df.columns[df.isna().any()]
    if len(nan_cols):
        raise DataError(
            f"{where}: missing values in gene column(s) {', '.join(nan_cols[:8])}"
            f"{' ...' if len(nan_cols) > 8 else ''}; impute or drop them first"
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
