"""Pathway tokens: member-gene index lists into an expression table's columns."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from histokd_core.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class PathwayTokens:
    """Pathways kept as model tokens, and a report of what was dropped or unmatched.

    Attributes
    ----------
    names : kept pathway names, in the gene-set order.
    indices : per kept pathway, indices of its measured member genes into ``genes`` (ascending).
    genes : the expression table's gene names (the index space of ``indices``).
    n_input : number of pathways given.
    dropped : dropped pathway name -> its coverage (measured / listed members).
    unmatched_genes : genes listed in some gene set but absent from ``genes`` (sorted).
    unused_genes : genes of the table in no kept pathway (sorted by table order).
    """

    names: list[str]
    indices: list[list[int]]
    genes: list[str]
    n_input: int
    dropped: dict[str, float] = field(default_factory=dict)
    unmatched_genes: list[str] = field(default_factory=list)
    unused_genes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def sizes(self) -> list[int]:
        """Measured member genes per kept pathway."""
        return [len(ix) for ix in self.indices]

    def report(self) -> str:
        """One-paragraph human-readable summary."""
        return (
            f"{len(self.names)} of {self.n_input} pathways kept "
            f"({len(self.dropped)} dropped below the "
            f"coverage threshold); {len(self.unmatched_genes)} gene-set genes not in the table; "
            f"{len(self.unused_genes)} of {len(self.genes)} table genes in no kept pathway"
        )


def pathway_tokens(
    gene_sets: Mapping[str, Sequence[str]],
    genes: Sequence[str],
    min_genes: int = 1,
    min_coverage: float = 0.0,
) -> PathwayTokens:
    """Map gene sets onto the measured genes (SurvPath: ``set(pathway) & set(table columns)``).

    Parameters
    ----------
    gene_sets : pathway name -> member gene symbols (:func:`read_gene_sets`).
    genes : the expression table's gene names, in column order.
    min_genes : drop pathways with fewer measured members.
    min_coverage : drop pathways whose measured / listed member fraction is below this (0..1).

    Raises
    ------
    DataError
        When no pathway survives (typically gene symbols that do not match the table).
    """
    if not 0 <= min_coverage <= 1:
        raise DataError(f"pathway_tokens: min_coverage must be in [0, 1], got {min_coverage}")
    genes = [str(g) for g in genes]
    position = {g: i for i, g in enumerate(genes)}
    names, indices, dropped = [], [], {}
    listed: set[str] = set()
    for name, members in gene_sets.items():
        members = list(dict.fromkeys(members))
        listed.update(members)
        ix = sorted(position[g] for g in members if g in position)
        coverage = len(ix) / len(members) if members else 0.0
        if len(ix) < max(1, min_genes) or coverage < min_coverage:
            dropped[name] = coverage
            continue
        names.append(name)
        indices.append(ix)
    if not names:
        raise DataError(
            f"no pathway has >= {max(1, min_genes)} measured gene(s) and coverage >= "
            f"{min_coverage}: {len(listed & set(position))} of {len(listed)} gene-set genes are in "
            "the expression table "
            "(do the gene symbols match, e.g. without a '_rnaseq' suffix?)"
        )
    used = {i for ix in indices for i in ix}
    tokens = PathwayTokens(
        names=names,
        indices=indices,
        genes=genes,
        n_input=len(gene_sets),
        dropped=dropped,
        unmatched_genes=sorted(listed - set(position)),
        unused_genes=[g for i, g in enumerate(genes) if i not in used],
    )
    log.info("pathway tokens: %s", tokens.report())
    return tokens
