"""The contract between methods, the trainer and the viewer.

Every method is a list of :class:`Stage` s (teacher, student, ablations, baselines). Each stage
builds a :class:`BagModel`: an ``nn.Module`` that computes its training loss on a mini-batch of
:class:`~histokd_core.bag.Bag` s (one bag per case) and predicts from one bag. Students never
touch ``Bag.omics`` in :meth:`BagModel.predict` or :meth:`BagModel.explain`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from histokd_core.bag import Bag, DataInfo, Task
from histokd_core.survival.losses import discrete_risk


@dataclass
class Prediction:
    """A model's output for one bag.

    ``risk`` is a 0-d tensor (higher = worse prognosis) for survival; ``logits`` is ``(C,)`` for
    classification (or ``(n_bins,)`` hazards logits for discrete-time survival); ``attention`` is
    ``(n,)`` over the bag's 20x patches, summing to 1, when the model has one; ``contribution`` is
    ``(n,)``, each patch's signed share of one output of the model (summing to that output minus
    the model's bias), for models whose output is a sum over patches, and ``contribution_unit``
    names that output and its unit for a colour bar (e.g. ``"risk contribution (log-hazard)"``,
    ``"log-odds contribution (class 1 vs class 0)"``).
    """

    risk: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    attention: torch.Tensor | None = None
    contribution: torch.Tensor | None = None
    contribution_unit: str | None = None

    def survival_risk(self) -> float:
        """The risk (higher = worse prognosis): ``risk`` when the model gives one, else the
        discrete-time risk of its hazard ``logits``."""
        if self.risk is not None:
            return float(self.risk)
        return float(discrete_risk(self.logits.detach().float()))

    def class_probabilities(self) -> np.ndarray:
        """``(C,)`` softmax of the class ``logits``, on the CPU."""
        return torch.softmax(self.logits.detach().float(), -1).cpu().numpy()


@dataclass
class Explanation:
    """Per-patch maps for the viewer and for export (numpy, on the CPU).

    Every per-patch array is aligned with ``coords`` (level-0 top-left ``(x, y)``, ``(n, 2)``).

    Attributes
    ----------
    coords : ``(n, 2)`` int64; patch_size : level-0 pixels.
    attention : ``(n,)`` float, the model's patch attention (sums to 1), or None.
    contribution : ``(n,)`` float, each patch's signed share of one output of the model (> 0
        raises it; sums to that output minus the model's bias), or None (models whose output is
        not a sum over patches); contribution_unit : that output and its unit, as the colour bar
        shows it (``Prediction.contribution_unit``, e.g. ``"risk contribution (log-hazard)"``),
        or None when unstated.
    pathway_maps : pathway name -> ``(n,)`` float map of that pathway over patches: its
        attention (sums to 1) when ``pathway_unit`` is None, else each patch's signed contribution
        to the pathway's predicted activity (sums to it minus the head's bias), in
        ``pathway_unit``.
    pathway_unit : None (the pathway maps are attention) or the unit of the signed pathway maps,
        as a colour bar shows it (e.g. ``"pathway activity contribution (SD)"``);
        :attr:`pathway_map_kind` gives the colour kind that follows.
    pathway_scores : pathway name -> float, overall importance (ranked by absolute value, high
        first; its sign and unit are the model's, see its ``explain``); pathway_score_unit : what
        the score measures and its sign, in words, or None for gradient x input of the
        prediction w.r.t. the pathway token (the AMKD teacher's and paper student's).
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
    contribution: np.ndarray | None = None
    contribution_unit: str | None = None
    pathway_maps: dict[str, np.ndarray] = field(default_factory=dict)
    pathway_unit: str | None = None
    pathway_scores: dict[str, float] = field(default_factory=dict)
    pathway_score_unit: str | None = None
    clusters: dict[str, np.ndarray] = field(default_factory=dict)
    memory: np.ndarray | None = None
    memory_names: list[str] = field(default_factory=list)
    top_patches: dict[str, np.ndarray] = field(default_factory=dict)
    risk: float | None = None
    probability: float | None = None
    risk_group: str | None = None

    @property
    def pathway_map_kind(self) -> str:
        """Colour kind (:mod:`histokd_core.explain.colour`) of the pathway maps: ``"attention"``,
        or ``"contribution"`` (signed, in ``pathway_unit``) when they state a unit."""
        return "contribution" if self.pathway_unit else "attention"


class BagModel(nn.Module):
    """Base class of every trainable model that reads :class:`~histokd_core.bag.Bag` s: teachers,
    students and baselines (which distil nothing), hence the name.

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

    def train_config(self, config):
        """The training settings (a :class:`histokd_core.train.TrainConfig`; methods sit below
        ``train``, hence no annotation) of this model in a run whose settings are ``config``:
        ``config`` itself unless the model needs its own (e.g. a linear student's step size)."""
        return config

    def match_state(self, keys: set[str]) -> None:
        """Called with a checkpoint's tensor names before its weights are loaded (strictly): a
        model whose layout grew since older checkpoints were written drops what such a file lacks
        (e.g. a head added later), so the file still loads. Default: nothing."""

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer at the start of every epoch (0-based), e.g. for warm-up schedules."""

    def after_backward(self, bags: Sequence[Bag]) -> None:
        """Called after ``loss.backward()`` and before the optimiser step (e.g. gradient surgery)."""

    def epoch_end(self) -> dict[str, float]:
        """Called by the trainer after each training epoch; values join the epoch's metrics."""
        return {}

    def explain(self, bag: Bag) -> Explanation:
        """Per-patch maps for overlays; the default gives the attention (and the per-patch
        contribution with its unit, when there is one) of :meth:`predict`."""
        with torch.no_grad():
            pred = self.predict(bag)
        attn = None if pred.attention is None else pred.attention.detach().float().cpu().numpy()
        contrib = (None if pred.contribution is None
                   else pred.contribution.detach().float().cpu().numpy())
        risk = None if pred.risk is None else float(pred.risk)
        prob = None
        if pred.logits is not None and self.task == "classification":
            prob = float(pred.class_probabilities()[-1])
        return Explanation(
            coords=bag.coords.cpu().numpy(),
            patch_size=bag.patch_size,
            attention=attn,
            contribution=contrib,
            contribution_unit=pred.contribution_unit,
            risk=risk,
            probability=prob,
        )


@dataclass
class Stage:
    """One model a method trains in every fold (a teacher, a student, an ablation or a baseline),
    in the order the method lists them; checkpoints are named after the stage.

    ``build(info, trained)`` returns a fresh model; ``trained`` maps names of stages already
    trained in this fold to their (frozen, eval-mode) models, so a student can get its teacher.
    ``requires`` names those stages. ``report`` says whether the stage appears in metrics.json.
    ``seed_key`` (default: the name) names the stage's random stream: stages that share it start
    from the same state in a fold (an ablation and its full model: the same initial weights and
    the same draws, so their paired difference shows the ablated part, not the initialisation).
    """

    name: str
    build: Callable[[DataInfo, dict[str, BagModel]], BagModel]
    requires: tuple[str, ...] = ()
    report: bool = True
    seed_key: str = ""

    @property
    def stream(self) -> str:
        """The name of the stage's random stream (``seed_key`` or the stage's name)."""
        return self.seed_key or self.name
