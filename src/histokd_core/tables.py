"""Reading tables (cohorts, expression, folds) with errors that name the file."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pandas as pd

from histokd_core.errors import DataError

#: Separators a delimited table may use, as named in messages.
_SEPARATORS = {",": "comma ','", "\t": "tab", ";": "semicolon ';'", "|": "pipe '|'"}


def separator_of(path: Path) -> str:
    """The separator histokd reads ``path`` with: tab for ``.tsv``/``.txt``/``.tab``, else comma."""
    return "\t" if path.suffix.lower() in (".tsv", ".txt", ".tab") else ","


def read_header(path: str | os.PathLike) -> list[str]:
    """Column names of a delimited table's first line exactly as written (duplicates kept, names
    stripped), read without pandas, which renames a repeated ``G`` to ``G.1``.

    Returns an empty list for parquet files (their column names cannot repeat).
    """
    path = Path(path).expanduser()
    if path.suffix.lower() in (".parquet", ".pq"):
        return []
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            first = next(csv.reader(fh, delimiter=separator_of(path)), [])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a readable table ({type(exc).__name__}: {exc})") from exc
    return [name.strip() for name in first]


def _check_separator(path: Path, df: pd.DataFrame, sep: str) -> None:
    """A table read as one column whose header holds another separator was written with it."""
    if df.shape[1] != 1:
        return
    header = str(df.columns[0])
    expected = "tab" if sep == "\t" else "comma ','"
    for other, name in _SEPARATORS.items():
        if other != sep and other in header:
            raise DataError(
                f"{path}: line 1 is one column {header[:60]!r} split by {name}s, but "
                f"{path.suffix or 'this'} files are read as {expected}-separated; save the table "
                f"with {expected} separators (a tab-separated table may also be named .tsv)")


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a CSV (``,``), TSV/TXT (tab) or parquet table, raising :class:`DataError` naming it.

    A delimited file whose lines are split by another separator (a semicolon CSV from a
    spreadsheet in a comma-decimal locale) is an error that says so.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"table {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        sep = separator_of(path)
        df = pd.read_csv(path, sep=sep)
    except ImportError as exc:
        raise DataError(f"{path}: reading parquet needs pyarrow or fastparquet ({exc})") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError,
            OSError) as exc:
        raise DataError(f"{path}: not a readable table ({type(exc).__name__}: {exc})") from exc
    _check_separator(path, df, sep)
    return df
