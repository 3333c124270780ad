"""Linear subspace student: class (or survival-bin) logits from the standardised mean 20x patch
feature (:class:`histokd_core.methods.linear.MeanPoolLinear`). Not in the paper.

``logits = W (mean_n(x_n) - mu) / sd + b``, ``W (K, F)``. Distilled (``distill=True``): the task
loss (cross-entropy, or the discrete-time survival NLL) plus ``Config.linear_kd_weight`` x a
distillation term on the frozen subspace teacher's prediction logits for the same case (with
cross-fitted targets, the inner teacher that did not train on the case), chosen by
``Config.linear_kd_loss``:

- ``"logit"``: :func:`~histokd_core.methods.subspace.losses.logit_regression_loss`, the student's
  centred logits regress the teacher's standardised ones (the counterpart of AMKD's risk
  regression);
- ``"kl"``: :func:`~histokd_core.methods.subspace.losses.kd_kl`, the paper's temperature KL
  (``Config.temperature``).

Its ablation trains on the task loss only. Both add ``Config.linear_l2 * ||W||^2``.
:meth:`LinearSubspaceStudent.predict` never reads ``bag.omics``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from histokd_core.bag import Bag, DataInfo
from histokd_core.errors import HistoKDError
from histokd_core.methods.base import BagModel, Prediction
from histokd_core.methods.crossfit import case_teacher
from histokd_core.methods.linear import MeanPoolLinear
from histokd_core.methods.subspace.losses import kd_kl, logit_regression_loss, task_loss
from histokd_core.methods.subspace.teacher import outcome


class LinearSubspaceStudent(MeanPoolLinear):
    """Slide-only linear student (module docstring); ``teacher`` is the frozen subspace teacher
    (None for inference or the ablation), ``distill`` turns the distillation term on."""

    needs_omics = False

    def __init__(self, info: DataInfo, cfg, teacher: BagModel | None = None,
                 distill: bool = True) -> None:
        super().__init__(info.feat_dim, info.n_classes, cfg.linear_l2, cfg.linear_lr,
                         cfg.linear_epochs, cfg.linear_patience)
        self.task, self.cfg, self.distill = info.task, cfg, distill
        if teacher is not None:
            teacher.requires_grad_(False).eval()
        self.teacher = teacher
        #: case_id -> the teacher's ``(K,)`` logits: the teacher is frozen and in eval mode and
        #: the student reads every patch, so each case's target is computed once
        self._targets: dict[str, torch.Tensor] = {}

    def _target(self, bag: Bag) -> torch.Tensor:
        """The frozen teacher's ``(K,)`` prediction logits for a training case (cached)."""
        if bag.case_id not in self._targets:
            with torch.no_grad():
                logits = case_teacher(self.teacher, bag).predict(bag).logits
            self._targets[bag.case_id] = logits.detach().float()
        return self._targets[bag.case_id]

    def loss(self, bags: Sequence[Bag]) -> dict[str, torch.Tensor]:
        logits = torch.stack([self.forward_feats(b.feats) for b in bags])
        task = task_loss(logits, bags, self.task)
        if not self.distill:
            return {"loss": task + self.penalty(), "task": task.detach()}
        if self.teacher is None:
            raise HistoKDError(
                "the distilled linear subspace student needs its trained teacher (stage "
                "'teacher') to train"
            )
        target = torch.stack([self._target(b) for b in bags])
        if self.cfg.linear_kd_loss == "kl":
            kd = kd_kl(logits, target, self.cfg.temperature)
        else:
            kd = logit_regression_loss(logits, target)
        return {
            "loss": task + self.cfg.linear_kd_weight * kd + self.penalty(),
            "task": task.detach(),
            "kd": kd.detach(),
        }

    def predict(self, bag: Bag) -> Prediction:
        return outcome(self.forward_feats(bag.feats), self.task, self.uniform_attention(bag))
