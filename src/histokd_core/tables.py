"""Reading tables (cohorts, expression, folds) with errors that name the file."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from histokd_core.errors import DataError


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a CSV (``,``), TSV/TXT (tab) or parquet table, raising :class:`DataError` naming it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"table {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        sep = "\t" if suffix in (".tsv", ".txt", ".tab") else ","
        return pd.read_csv(path, sep=sep)
    except ImportError as exc:
        raise DataError(f"{path}: reading parquet needs pyarrow or fastparquet ({exc})") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError,
            OSError) as exc:
        raise DataError(f"{path}: not a readable table ({type(exc).__name__}: {exc})") from exc
