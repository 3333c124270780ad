"""The contract between data, methods, the trainer and the viewer.

Every method is a list of :class:`Stage` s (teacher, student, ablations, baselines). Each stage
builds a :class:`KDModel`: an ``nn.Module`` that computes its training loss on a mini-batch of
:class:`Bag` s (one bag per case) and predicts from one bag. Students never touch ``Bag.omics``
in :meth:`KDModel.predict` or :meth:`KDModel.explain`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

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


@dataclass
class Prediction:
    """A model's output for one bag.

    ``risk`` is a 0-d tensor (higher = worse prognosis) for survival; ``logits`` is ``(C,)`` for
    classification (or ``(n_bins,)`` hazards logits for discrete-time survival); ``attention`` is
    ``(n,)`` over the bag's 20x patches, summing to 1, when the model has one.
    """

    risk: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    attention: torch.Tensor | None = None


@dataclass
class Explanation:
    """Per-patch maps for the viewer and for export (numpy, on the CPU).

    Every per-patch array is aligned with ``coords`` (level-0 top-left ``(x, y)``, ``(n, 2)``).

    Attributes
    ----------
    coords : ``(n, 2)`` int64; patch_size : level-0 pixels.
    attention : ``(n,)`` float, the model's patch attention (sums to 1), or None.
    pathway_maps : pathway name -> ``(n,)`` float attention of that pathway over patches.
    pathway_scores : pathway name -> float, overall importance (for ranking, high first).
    clusters : map name (e.g. "tumor", "tme") -> ``(n,)`` int cluster id per patch (-1 = none).
    memory : ``(K, n)`` activation of each memory component per patch, or None;
        memory_names : K names ("C+0", ..., "C-15").
    top_patches : map/component name -> indices of its top patches (into ``coords``).
    risk : predicted risk (survival) or None; probability : predicted positive-class probability
        (classification) or None; risk_group : "high" / "low" (or predicted class name).
    """

    coords: np.ndarray
    patch_size: int
    attention: np.ndarray | None = None
    pathway_maps: dict[str, np.ndarray] = field(default_factory=dict)
    pathway_scores: dict[str, float] = field(default_factory=dict)
    clusters: dict[str, np.ndarray] = field(default_factory=dict)
    memory: np.ndarray | None = None
    memory_names: list[str] = field(default_factory=list)
    top_patches: dict[str, np.ndarray] = field(default_factory=dict)
    risk: float | None = None
    probability: float | None = None
    risk_group: str | None = None


class KDModel(nn.Module):
    """Base class of every trainable model (teacher, student, baseline).

    Subclasses set ``needs_omics`` (True only for teachers and omics-only baselines) and implement
    :meth:`loss`, :meth:`predict` and optionally :meth:`explain`.
    """

    needs_omics: bool = False
    task: Task = "survival"

    def loss(self, bags: Sequence[Bag]) -> dict[str, torch.Tensor]:
        """Training loss on a mini-batch of bags: a dict with at least ``"loss"`` (0-d tensor);
        other entries are logged components (detached or not)."""
        raise NotImplementedError

    def predict(self, bag: Bag) -> Prediction:
        """Inference on one bag. Must not read ``bag.omics`` unless ``needs_omics``."""
        raise NotImplementedError

    def prepare(self, train_bags: Sequence[Bag], seed: int = 0) -> None:
        """Called once by the trainer before the first epoch (e.g. MoMKD's k-means memory init)."""

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer at the start of every epoch (0-based), e.g. for warm-up schedules."""

    def after_backward(self, bags: Sequence[Bag]) -> None:
        """Called after ``loss.backward()`` and before the optimiser step (e.g. gradient surgery)."""

    def epoch_end(self) -> dict[str, float]:
        """Called by the trainer after each training epoch; values join the epoch's metrics."""
        return {}

    def explain(self, bag: Bag) -> Explanation:
        """Per-patch maps for overlays; the default gives the attention of :meth:`predict`."""
        with torch.no_grad():
            pred = self.predict(bag)
        attn = None if pred.attention is None else pred.attention.detach().float().cpu().numpy()
        risk = None if pred.risk is None else float(pred.risk)
        prob = None
        if pred.logits is not None and self.task == "classification":
            prob = float(torch.softmax(pred.logits.detach().float(), -1)[-1])
        return Explanation(
            coords=bag.coords.cpu().numpy(),
            patch_size=bag.patch_size,
            attention=attn,
            risk=risk,
            probability=prob,
        )


@dataclass
class Stage:
    """One model trained in a fold.

    ``build(info, trained)`` returns a fresh model; ``trained`` maps names of stages already
    trained in this fold to their (frozen, eval-mode) models, so a student can get its teacher.
    ``requires`` names those stages. ``report`` says whether the stage appears in metrics.json.
    """

    name: str
    build: Callable[[DataInfo, dict[str, KDModel]], KDModel]
    requires: tuple[str, ...] = ()
    report: bool = True
