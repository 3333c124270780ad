"""Gene sets: MSigDB GMT files and SurvPath/MCAT wide CSVs (one column per pathway)."""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from histokd_core.errors import DataError
from histokd_core.io import atomic_write_text

log = logging.getLogger(__name__)


def _unique(genes: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(g.strip() for g in genes if g and g.strip()))


def _parse_gmt(text: str, where: str) -> dict[str, list[str]]:
    sets: dict[str, list[str]] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.rstrip("\r\n").split("\t")
        if len(fields) < 3:
            raise DataError(
                f"{where}: line {lineno} is not GMT (expected name<TAB>description<TAB>gene...; "
                f"got {len(fields)} tab-separated field(s))"
            )
        name = fields[0].strip()
        if name in sets:
            raise DataError(f"{where}: gene set {name!r} defined twice (line {lineno})")
        sets[name] = _unique(fields[2:])
    return sets


def _parse_wide_csv(text: str, where: str, delimiter: str) -> dict[str, list[str]]:
    rows = list(csv.reader(io.StringIO(text), delimiter=delimiter))
    if not rows:
        raise DataError(f"{where}: empty gene-set table")
    header = [h.strip() for h in rows[0]]
    if any(not h for h in header):
        raise DataError(
            f"{where}: header has an empty pathway name (column {header.index('') + 1})")
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        raise DataError(f"{where}: pathway column(s) {', '.join(dup)} appear twice")
    sets: dict[str, list[str]] = {h: [] for h in header}
    for lineno, row in enumerate(rows[1:], start=2):
        if len(row) > len(header) and any(c.strip() for c in row[len(header):]):
            raise DataError(
                f"{where}: line {lineno} has more cells ({len(row)}) than the header "
                f"({len(header)})")
        for name, gene in zip(header, row):
            sets[name].append(gene)
    return {name: _unique(genes) for name, genes in sets.items()}


def read_gene_sets(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read gene sets from a GMT file or a SurvPath-style wide CSV/TSV.

    Parameters
    ----------
    path : ``.gmt`` (one set per line: name, description, genes, tab-separated) or ``.csv``/``.tsv``
        whose header row holds pathway names and whose columns list member genes top-down (padded
        with empty cells), like SurvPath's ``combine_signatures.csv`` and MCAT's ``signatures.csv``.

    Returns
    -------
    dict pathway name -> member gene symbols (file order, duplicates and blanks removed).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"gene-set file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 text file ({exc})") from exc
    suffix = path.suffix.lower()
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    looks_gmt = first.count("\t") >= 2 and "," not in first
    if suffix == ".gmt" or (suffix not in (".csv", ".tsv") and looks_gmt):
        sets = _parse_gmt(text, str(path))
    else:
        sets = _parse_wide_csv(text, str(path), "\t" if suffix == ".tsv" else ",")
    if not sets:
        raise DataError(f"{path}: no gene sets found")
    empty = [n for n, g in sets.items() if not g]
    if empty:
        log.warning("%s: %d gene set(s) without genes: %s", path, len(empty), ", ".join(empty[:8]))
    return sets


def write_gmt(path: str | os.PathLike, gene_sets: Mapping[str, Iterable[str]],
              overwrite: bool = False,
              description: str = "histokd") -> Path:
    """Write gene sets as GMT (atomically)."""
    lines = [
        "\t".join([name, description, *genes]) for name, genes in gene_sets.items()
    ]
    return atomic_write_text(path, "\n".join(lines) + "\n", overwrite=overwrite)
