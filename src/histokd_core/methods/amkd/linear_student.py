"""Linear AMKD student: the mean patch feature, standardised, times a weight vector.

Not in the paper. ``risk = w . (mean_n(x_n) - mu) / sd + b`` with ``feats (n, F)`` and ``mu, sd``
``(F,)`` the mean and SD of the training cases' mean patch features (fitted in :meth:`prepare`,
kept as buffers in the checkpoint). Distilled (``distill=True``): the Cox loss plus
``Config.kd_weight`` x :func:`~histokd_core.methods.amkd.losses.risk_regression_loss` of its risks
on the frozen AMKD teacher's (the same patches; with cross-fitted targets the inner teacher that
did not train on the case); its ablation trains on the Cox loss only. Both add the ridge
penalty ``Config.linear_l2 * ||w||^2`` (standardised features, so one scale for every weight). Why it exists: on the
redesigned synthetic cohort the paper's student does not gain from its teacher while a linear
student does (docs/benchmarks.md, "Distillation"). Mean pooling weighs every patch alike, so
:meth:`predict` reports a uniform attention ``1/n``; where the outcome is decided shows in its
per-patch risk contribution ``c_n = w . (x_n - mu) / sd / n`` ``(n,)`` (log-hazard, the risk's
unit; ``sum_n c_n = risk - b``), which :meth:`predict` reports as ``Prediction.contribution``.
``predict`` never reads ``bag.omics``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from histokd_core.bag import Bag, DataInfo
from histokd_core.errors import HistoKDError
from histokd_core.methods.amkd.losses import risk_regression_loss
from histokd_core.methods.amkd.shared import batch_cox, case_teacher, subsample
from histokd_core.methods.base import BagModel, Prediction


class LinearStudent(BagModel):
    """Slide-only linear student (see the module docstring); ``teacher`` is the frozen AMKD
    teacher (None for inference or the ablation), ``distill`` turns the risk regression on."""

    needs_omics = False
    task = "survival"

    def __init__(self, info: DataInfo, config, teacher=None, distill: bool = True) -> None:
        super().__init__()
        self.config = config
        self.distill = distill
        self.linear = nn.Linear(info.feat_dim, 1)
        self.register_buffer("mu", torch.zeros(info.feat_dim))
        self.register_buffer("sd", torch.ones(info.feat_dim))
        if teacher is not None:
            teacher.requires_grad_(False).eval()
        self.teacher = teacher

    def train_config(self, config):
        """The run's settings with the linear student's own ``Config.linear_lr``,
        ``linear_epochs`` and ``linear_patience`` (a linear model on 32-1024 standardised features
        needs a larger step and more epochs than the attention models of the same run)."""
        c = self.config
        return dataclasses.replace(config, lr=c.linear_lr, epochs=c.linear_epochs,
                                   patience=c.linear_patience)

    def prepare(self, train_bags: Sequence[Bag], seed: int = 0) -> None:
        """Fit ``mu, sd`` ``(F,)`` on the training cases' mean patch features."""
        means = torch.stack([b.feats.to(torch.float32).mean(0) for b in train_bags])
        self.mu.copy_(means.mean(0))
        self.sd.copy_(means.std(0, unbiased=False).clamp_min(1e-6))

    def forward_bag(self, feats: torch.Tensor) -> torch.Tensor:
        """Risk (0-d) of ``feats (n, F)``."""
        x = feats.to(self.mu.device, torch.float32).mean(0)
        return self.linear((x - self.mu) / self.sd)[0]

    def loss(self, bags: Sequence[Bag]) -> dict[str, torch.Tensor]:
        # the AMKD student's patch subsample (``max_train_patches``), shared with the teacher
        feats = []
        for b in bags:
            idx = subsample(b.feats.shape[0], self.config.max_train_patches, b.feats.device)
            feats.append(b.feats if idx is None else b.feats[idx])
        r_s = torch.stack([self.forward_bag(f) for f in feats])
        l_surv = batch_cox(r_s, bags)
        l2 = self.config.linear_l2 * self.linear.weight.pow(2).sum()
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

    def contributions(self, feats: torch.Tensor) -> torch.Tensor:
        """``(n,)`` each patch's share of the risk of ``feats (n, F)``: ``w . (x_n - mu) / sd / n``
        (log-hazard; sums to the risk minus the bias ``b``)."""
        x = (feats.to(self.mu.device, torch.float32) - self.mu) / self.sd
        return (x @ self.linear.weight[0]) / x.shape[0]

    def predict(self, bag: Bag) -> Prediction:
        n = bag.feats.shape[0]
        uniform = torch.full((n,), 1.0 / n, device=self.mu.device)
        return Prediction(risk=self.forward_bag(bag.feats), attention=uniform,
                          contribution=self.contributions(bag.feats))
