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

Mean pooling weighs every patch alike (uniform attention ``1/n``), so for classification
``predict`` also reports each patch's share of the prediction (``Prediction.contribution``,
``(n,)``, :func:`contribution_direction`), with ``z_n = (x_n - mu) / sd``:

- two classes: the share of the log-odds of class 1, ``c_n = (W[1] - W[0]) . z_n / n``; the
  patches add up to ``logit_1 - logit_0 - (b_1 - b_0)`` (unit: log-odds);
- ``K > 2`` classes: the share of the predicted class ``k``'s centred logit
  ``logit_k - mean_j logit_j``, ``c_n = (W[k] - mean_j W[j]) . z_n / n``; the patches add up to
  it minus ``b_k - mean_j b_j`` (unit: logit).

Discrete-time survival gets no contribution map: the risk it reports (:func:`~histokd_core.methods.
subspace.teacher.outcome`, ``-sum_k S_k`` with ``S_k = prod_{j <= k} (1 - sigmoid(logit_j))``) is
not linear in the logits, so no per-patch shares add up to it, and a linear stand-in (e.g. the
summed hazard logits) is not that risk and can give a patch the opposite sign.
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


def contribution_direction(logits: torch.Tensor) -> tuple[torch.Tensor, str]:
    """The class-score combination a classification contribution map shares out, and its unit.

    Parameters
    ----------
    logits : one case's ``(K,)`` class logits.

    Returns
    -------
    ``direction (K,)`` for :meth:`~histokd_core.methods.linear.MeanPoolLinear.contributions`
    (``e_1 - e_0`` for two classes: the log-odds of class 1; ``e_k - 1/K`` for the predicted class
    ``k`` of ``K > 2``: its centred logit) and the colour-bar unit naming it.
    """
    k = logits.shape[-1]
    if k == 2:
        return (torch.tensor([-1.0, 1.0], device=logits.device),
                "log-odds contribution (class 1 vs class 0)")
    pred = int(logits.argmax())
    direction = torch.full((k,), -1.0 / k, device=logits.device)
    direction[pred] += 1.0
    return direction, f"centred-logit contribution (predicted class {pred})"


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
        """:func:`~histokd_core.methods.subspace.teacher.outcome` of the logits, uniform attention
        ``(n,)`` and, for classification, each patch's share of the prediction ``(n,)`` (module
        docstring); never reads ``bag.omics``."""
        logits = self.forward_feats(bag.feats)
        pred = outcome(logits, self.task, self.uniform_attention(bag))
        if self.task == "classification":
            direction, pred.contribution_unit = contribution_direction(logits)
            pred.contribution = self.contributions(bag.feats, direction)
        return pred
