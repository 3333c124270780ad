"""What a model reads: one case's :class:`Bag` and the :class:`DataInfo` models are built from.

These types sit below both the data layer (:mod:`histokd_core.dataset` makes them) and the methods
(:mod:`histokd_core.methods` read them), so neither imports the other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

Task = Literal["survival", "classification"]


@dataclass
class Bag:
    """All patches of one case, ready for a model.

    Attributes
    ----------
    case_id : str
    feats : Tensor ``(n, d)`` float32, patch features at 20x (or the store's only magnification);
        several slides of a case are concatenated (SurvPath's convention).
    coords : Tensor ``(n, 2)`` int64, level-0 top-left ``(x, y)`` of each patch.
    slide_index : Tensor ``(n,)`` int64, which of the case's slides each patch comes from.
    patch_size : int, patch side in level-0 pixels (for grids and overlays).
    feats_10x, coords_10x, slide_index_10x : the same at 10x, or ``None`` when the store has one
        magnification only.
    omics : Tensor ``(g,)`` float32 expression, normalised with training-fold statistics, or ``None``.
    time : float, follow-up in months (survival).
    event : int, 1 = death/event observed, 0 = censored.
    label : int, class index (classification), -1 when unknown.
    bin : int, discrete-time survival bin (quartiles of uncensored training times), -1 if unset.
    """

    case_id: str
    feats: torch.Tensor
    coords: torch.Tensor
    slide_index: torch.Tensor | None = None
    patch_size: int = 256
    feats_10x: torch.Tensor | None = None
    coords_10x: torch.Tensor | None = None
    slide_index_10x: torch.Tensor | None = None
    omics: torch.Tensor | None = None
    time: float = math.nan
    event: int = 0
    label: int = -1
    bin: int = -1

    def to(self, device: torch.device | str) -> Bag:
        """Copy of the bag with every tensor on ``device``."""
        moved = {
            k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()
        }
        return Bag(**moved)


@dataclass
class DataInfo:
    """What a model needs to know about the data to be built.

    Attributes
    ----------
    task : "survival" or "classification".
    feat_dim : patch feature dimension ``d`` (UNI 1024, UNI2 1536, ... never a constant).
    n_genes : number of omics columns ``g`` (0 when no omics).
    gene_names : the ``g`` column names, in order.
    pathways : member-gene index lists into the ``g`` columns, one per pathway token.
    pathway_names : one name per pathway token.
    tumor_genes, tme_genes : index lists of the tumour / microenvironment gene subsets.
    n_classes : classes (classification) or discrete-time bins (survival, default 4).
    bin_edges : survival-time bin edges (months) fitted on the training fold, length n_bins + 1.
    has_10x : whether bags carry a second (10x) magnification.
    encoder_id : id of the patch encoder that produced the features.
    stain : stain normalisation of the features: ``"none"`` or a reference id
        (``"macenko:<12 hex>"``, :attr:`histokd_core.features.stain.StainReference.id`).
    stain_reference : that reference's parameters
        (:meth:`histokd_core.features.stain.StainReference.to_attrs`; empty for ``"none"``), so
        that a new slide can be normalised the same way.
    preprocessing : the features' preprocessing version
        (:data:`histokd_core.features.store.PREPROCESSING_VERSION`; 1 for stores that predate it).
    """

    task: Task
    feat_dim: int
    n_genes: int = 0
    gene_names: list[str] = field(default_factory=list)
    pathways: list[list[int]] = field(default_factory=list)
    pathway_names: list[str] = field(default_factory=list)
    tumor_genes: list[int] = field(default_factory=list)
    tme_genes: list[int] = field(default_factory=list)
    n_classes: int = 2
    bin_edges: list[float] = field(default_factory=list)
    has_10x: bool = False
    encoder_id: str = ""
    stain: str = "none"
    stain_reference: dict = field(default_factory=dict)
    preprocessing: int = 1
