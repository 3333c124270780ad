"""Tumour / tumour-microenvironment (TME) gene subsets for the disentangled (subspace) method.

The original method's lists (59 tumour, 361 immune genes from an unpublished spreadsheet) are not
public, so the default is built from MSigDB Hallmark sets present in the user's gene sets
(e.g. ``hallmarks_signatures.csv`` or ``combine_signatures.csv``):

- tumour-intrinsic programmes (:data:`DEFAULT_TUMOR_SETS`): proliferation and cell cycle
  (E2F targets, G2M checkpoint, mitotic spindle, MYC targets v1/v2), DNA repair, p53, and
  tumour growth signalling/metabolism (mTORC1, PI3K/AKT/mTOR, glycolysis);
- microenvironment programmes (:data:`DEFAULT_TME_SETS`): immune and inflammatory responses
  (allograft rejection, IFN-alpha/gamma, inflammatory response, IL6/JAK/STAT3, IL2/STAT5,
  TNF-alpha via NF-kB, complement) and stroma/vasculature (epithelial-mesenchymal transition,
  whose members are mostly fibroblast/ECM genes, angiogenesis, coagulation).

Genes that fall in both groups are ambiguous and, with ``exclusive=True``, assigned to neither.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from histokd_core.errors import DataError

log = logging.getLogger(__name__)

DEFAULT_TUMOR_SETS: tuple[str, ...] = (
    "HALLMARK_E2F_TARGETS",
    "HALLMARK_G2M_CHECKPOINT",
    "HALLMARK_MITOTIC_SPINDLE",
    "HALLMARK_MYC_TARGETS_V1",
    "HALLMARK_MYC_TARGETS_V2",
    "HALLMARK_DNA_REPAIR",
    "HALLMARK_P53_PATHWAY",
    "HALLMARK_MTORC1_SIGNALING",
    "HALLMARK_PI3K_AKT_MTOR_SIGNALING",
    "HALLMARK_GLYCOLYSIS",
)
DEFAULT_TME_SETS: tuple[str, ...] = (
    "HALLMARK_ALLOGRAFT_REJECTION",
    "HALLMARK_INTERFERON_ALPHA_RESPONSE",
    "HALLMARK_INTERFERON_GAMMA_RESPONSE",
    "HALLMARK_INFLAMMATORY_RESPONSE",
    "HALLMARK_IL6_JAK_STAT3_SIGNALING",
    "HALLMARK_IL2_STAT5_SIGNALING",
    "HALLMARK_TNFA_SIGNALING_VIA_NFKB",
    "HALLMARK_COMPLEMENT",
    "HALLMARK_EPITHELIAL_MESENCHYMAL_TRANSITION",
    "HALLMARK_ANGIOGENESIS",
    "HALLMARK_COAGULATION",
)


def default_tumor_tme_lists(gene_sets: Mapping[str, Sequence[str]]) -> tuple[list[str], list[str]]:
    """Tumour and TME gene lists from the default Hallmark sets found in ``gene_sets``.

    Raises
    ------
    DataError
        When ``gene_sets`` holds none of the default tumour or none of the TME Hallmark sets.
    """
    found_tumor = [s for s in DEFAULT_TUMOR_SETS if s in gene_sets]
    found_tme = [s for s in DEFAULT_TME_SETS if s in gene_sets]
    if not found_tumor or not found_tme:
        raise DataError(
            "default tumour/TME split needs MSigDB Hallmark sets (e.g. HALLMARK_E2F_TARGETS, "
            "HALLMARK_INTERFERON_GAMMA_RESPONSE) in the gene sets; pass tumor/TME gene lists "
            "instead"
        )
    tumor = list(dict.fromkeys(g for s in found_tumor for g in gene_sets[s]))
    tme = list(dict.fromkeys(g for s in found_tme for g in gene_sets[s]))
    return tumor, tme


def read_gene_list(
    spec: str | os.PathLike, gene_sets: Mapping[str, Sequence[str]] | None = None,
    option: str = "gene list",
) -> list[str]:
    """A user's gene list: a text file of gene symbols, or gene-set names from ``gene_sets``.

    Parameters
    ----------
    spec : an existing file (gene symbols separated by newlines, commas, tabs or spaces; ``#``
        starts a comment, so GSEA ``.grp`` files work), or a comma-separated list of names of
        sets in ``gene_sets`` (their member genes, in order, duplicates removed).
    gene_sets : the gene sets the names refer to (e.g. ``--gene-sets``).
    option : how the caller calls this list (``--tumor-genes``), for error messages.

    Raises
    ------
    DataError
        An empty file, a path that does not exist, set names that are not in ``gene_sets``
        (naming them), or set names without gene sets.
    """
    path = Path(spec).expanduser()
    text = str(spec).strip()
    if path.is_file():
        try:
            content = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{option}: cannot read {path} ({exc})") from None
        symbols = [g for line in content.splitlines()
                   for g in re.split(r"[\s,]+", line.split("#", 1)[0]) if g]
        if not symbols:
            raise DataError(f"{option}: {path} lists no gene symbols")
        return list(dict.fromkeys(symbols))
    names = [n.strip() for n in text.split(",") if n.strip()]
    looks_like_path = os.sep in text or re.search(r"\.(txt|grp|csv|tsv|lst)$", text, re.I)
    if not names or (looks_like_path and (not gene_sets or any(n not in gene_sets
                                                                 for n in names))):
        raise DataError(f"{option}: {spec!s} is not a file (and names no gene set)")
    if not gene_sets:
        raise DataError(f"{option}: {text!r} names gene sets, but no gene sets were given "
                        "(pass --gene-sets, or a text file of gene symbols)")
    unknown = [n for n in names if n not in gene_sets]
    if unknown:
        known = ", ".join(list(gene_sets)[:8]) + (" ..." if len(gene_sets) > 8 else "")
        raise DataError(f"{option}: no gene set named {', '.join(map(repr, unknown))} in the "
                        f"gene sets (they hold {len(gene_sets)}: {known}); nor is "
                        f"{text!r} a file")
    return list(dict.fromkeys(g for n in names for g in gene_sets[n]))


def split_tumor_tme(
    genes: Sequence[str],
    tumor_list: Sequence[str] | None = None,
    tme_list: Sequence[str] | None = None,
    gene_sets: Mapping[str, Sequence[str]] | None = None,
    exclusive: bool = True,
) -> tuple[list[int], list[int]]:
    """Indices of tumour and TME genes among ``genes``.

    Parameters
    ----------
    genes : the expression table's gene names (the index space), e.g. the HVG subset.
    tumor_list, tme_list : user gene lists; when omitted, both come from
        :func:`default_tumor_tme_lists` applied to ``gene_sets``.
    gene_sets : needed only for the default lists.
    exclusive : drop genes present in both lists from both.

    Returns
    -------
    ``(tumor_idx, tme_idx)`` ascending index lists into ``genes``.

    Raises
    ------
    DataError
        When either subset is empty among ``genes``.
    """
    if tumor_list is None or tme_list is None:
        if gene_sets is None:
            raise DataError(
                "split_tumor_tme: give tumor_list and tme_list, or gene_sets for the default split")
        default_tumor, default_tme = default_tumor_tme_lists(gene_sets)
        tumor_list = default_tumor if tumor_list is None else tumor_list
        tme_list = default_tme if tme_list is None else tme_list
    tumor, tme = set(tumor_list), set(tme_list)
    if exclusive:
        both = tumor & tme
        tumor, tme = tumor - both, tme - both
    tumor_idx = [i for i, g in enumerate(genes) if g in tumor]
    tme_idx = [i for i, g in enumerate(genes) if g in tme]
    if not tumor_idx or not tme_idx:
        raise DataError(
            f"tumour/TME split: {len(tumor_idx)} tumour and {len(tme_idx)} TME genes among the "
            f"{len(genes)} expression genes; both subsets need at least one measured gene"
        )
    log.info("tumour/TME split: %d tumour, %d TME genes", len(tumor_idx), len(tme_idx))
    return tumor_idx, tme_idx
