"""Omics: expression tables, gene sets, pathway tokens, HVG, tumour/TME split, normalisation.

Public API
----------
- :func:`read_expression` -> DataFrame ``(n_cases, n_genes)`` indexed by ``case_id``
- :func:`read_gene_sets` (GMT or SurvPath wide CSV), :func:`write_gmt`
- :func:`pathway_tokens` -> :class:`PathwayTokens`
- :func:`select_hvg`, :func:`split_tumor_tme`, :func:`read_gene_list` (user tumour/TME lists)
- :class:`Standardizer` (fit on the training fold only)
"""

from histokd_core.omics.gene_sets import read_gene_sets, write_gmt
from histokd_core.omics.hvg import select_hvg
from histokd_core.omics.normalize import Standardizer
from histokd_core.omics.pathways import PathwayTokens, pathway_tokens
from histokd_core.omics.subspaces import (
    DEFAULT_TME_SETS,
    DEFAULT_TUMOR_SETS,
    default_tumor_tme_lists,
    read_gene_list,
    split_tumor_tme,
)
from histokd_core.omics.tables import align_cases, read_expression

__all__ = [
    "DEFAULT_TME_SETS",
    "DEFAULT_TUMOR_SETS",
    "PathwayTokens",
    "Standardizer",
    "align_cases",
    "default_tumor_tme_lists",
    "pathway_tokens",
    "read_expression",
    "read_gene_list",
    "read_gene_sets",
    "select_hvg",
    "split_tumor_tme",
    "write_gmt",
]
