"""Linear AMKD student: the mean patch feature, standardised, times a weight vector.

Not in the paper. A :class:`~histokd_core.methods.linear.MeanPoolLinear` with one output, the
risk: ``risk = w . (mean_n(x_n) - mu) / sd + b`` with ``feats (n, F)`` and ``mu, sd`` ``(F,)`` the
mean and SD of the training cases' mean patch features (fitted in ``prepare``, kept as buffers in
the checkpoint). Distilled (``distill=True``): the Cox loss plus ``Config.kd_weight`` x
:func:`~histokd_core.methods.amkd.losses.risk_regression_loss` of its risks on the frozen AMKD
teacher's (the same patches; with cross-fitted targets the inner teacher that did not train on
the case); its ablation trains on the Cox loss only. Both add the ridge penalty
``Config.linear_l2 * ||w||^2`` (standardised features, so one scale for every weight). Why it
exists: on the redesigned synthetic cohort the paper's student does not gain from its teacher
while a linear student does (docs/benchmarks.md, "Distillation"). Mean pooling weighs every patch
alike, so :meth:`LinearStudent.predict` reports a uniform attention ``1/n``; where the outcome is
decided shows in its per-patch risk contribution ``c_n = w . (x_n - mu) / sd / n`` ``(n,)``
(log-hazard, the risk's unit; ``sum_n c_n = risk - b``), which ``predict`` reports as
``Prediction.contribution``. ``predict`` never reads ``bag.omics``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from histokd_core.bag import Bag, DataInfo
from histokd_core.errors import HistoKDError
from histokd_core.methods.amkd.losses import risk_regression_loss
from histokd_core.methods.amkd.shared import batch_cox, subsample
from histokd_core.methods.base import Prediction
from histokd_core.methods.crossfit import case_teacher
from histokd_core.methods.linear import MeanPoolLinear

#: what :meth:`LinearStudent.predict`'s contribution map adds up to, and its unit
#: (``Prediction.contribution_unit``).
CONTRIBUTION_UNIT = "risk contribution (log-hazard)"


class LinearStudent(MeanPoolLinear):
    """Slide-only linear student (see the module docstring); ``teacher`` is the frozen AMKD
    teacher (None for inference or the ablation), ``distill`` turns the risk regression on.

    Its own training settings are ``Config.linear_lr``, ``linear_epochs`` and
    ``linear_patience`` (``train_config``); the batch size is the run's, or 16 cases when the run
    leaves it open (what a survival run uses then: the Cox loss needs several cases per batch).
    """

    needs_omics = False
    task = "survival"

    def __init__(self, info: DataInfo, config, teacher=None, distill: bool = True) -> None:
        super().__init__(info.feat_dim, 1, config.linear_l2, config.linear_lr,
                         config.linear_epochs, config.linear_patience)
        self.config = config
        self.distill = distill
        if teacher is not None:
            teacher.requires_grad_(False).eval()
        self.teacher = teacher

    def loss(self, bags: Sequence[Bag]) -> dict[str, torch.Tensor]:
        # the AMKD student's patch subsample (``max_train_patches``), shared with the teacher
        feats = []
        for b in bags:
            idx = subsample(b.feats.shape[0], self.config.max_train_patches, b.feats.device)
            feats.append(b.feats if idx is None else b.feats[idx])
        r_s = torch.stack([self.forward_feats(f)[0] for f in feats])
        l_surv = batch_cox(r_s, bags)
        l2 = self.penalty()
        if not self.distill:
            return {"loss": l_surv + l2, "cox": l_surv.detach()}
        if self.teacher is None:
            raise HistoKDError(
                "the distilled linear student needs its trained teacher (stage 'teacher') to train"
            )
        with torch.no_grad():
            teachers = [case_teacher(self.teacher, b) for b in bags]
            r_t = torch.stack([t.forward_bag(f, t._omics(b))[0]
                               for t, b, f in zip(teachers, bags, feats)])
        l_risk = risk_regression_loss(r_s, r_t)
        return {
            "loss": l_surv + self.config.kd_weight * l_risk + l2,
            "cox": l_surv.detach(),
            "risk_kd": l_risk.detach(),
        }

    def predict(self, bag: Bag) -> Prediction:
        """Risk (0-d), uniform attention ``(n,)`` and the per-patch risk contribution ``(n,)``
        (log-hazard, summing to the risk minus ``b``) of one bag; never reads ``bag.omics``."""
        one = torch.ones(1, device=self.mu.device)
        return Prediction(risk=self.forward_feats(bag.feats)[0],
                          attention=self.uniform_attention(bag),
                          contribution=self.contributions(bag.feats, one),
                          contribution_unit=CONTRIBUTION_UNIT)
