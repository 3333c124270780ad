"""Linear students: a weight matrix on the standardised mean patch feature.

Not in any of the three papers. ``out = W (mean_n(x_n) - mu) / sd + b`` with ``feats (n, F)``,
``mu, sd`` ``(F,)`` the mean and SD of the training cases' mean patch features (fitted in
:meth:`MeanPoolLinear.prepare`, kept as buffers in the checkpoint) and ``W (n_out, F)``. Every
weight acts on a standardised feature, so one ridge penalty ``l2 * ||W||^2`` suits them all.
Why they exist: on the redesigned synthetic cohorts the papers' neural students do not gain from
their teachers while a distilled linear student does (docs/benchmarks.md, "Distillation").

Each method adds its own loss (AMKD: :mod:`histokd_core.methods.amkd.linear_student`; subspace:
:mod:`histokd_core.methods.subspace.linear_student`). Mean pooling weighs every patch alike, so
the attention they report is uniform (``1/n``); where the output is decided shows in each patch's
share of it, :meth:`MeanPoolLinear.contributions`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from histokd_core.bag import Bag
from histokd_core.methods.base import BagModel


class MeanPoolLinear(BagModel):
    """``nn.Linear(feat_dim, n_out)`` on the standardised mean patch feature (module docstring).

    Parameters
    ----------
    feat_dim : patch feature width ``F``; n_out : outputs (1 risk, or ``K`` logits).
    l2 : ridge penalty on ``W`` (:meth:`penalty`).
    lr, epochs, patience : this model's own training settings (:meth:`train_config`): a linear
        model on 32-1024 standardised features needs a larger step and more epochs than the
        attention models of the same run.
    batch_size : cases per loss call when the run leaves it to the task (16: distillation
        terms that centre over the batch need several cases, also for classification).
    """

    def __init__(self, feat_dim: int, n_out: int, l2: float, lr: float, epochs: int,
                 patience: int, batch_size: int = 16) -> None:
        super().__init__()
        self.linear = nn.Linear(feat_dim, n_out)
        self.register_buffer("mu", torch.zeros(feat_dim))
        self.register_buffer("sd", torch.ones(feat_dim))
        self.l2, self._lr, self._epochs, self._patience = l2, lr, epochs, patience
        self._batch_size = batch_size

    def train_config(self, config):
        """The run's settings with this model's ``lr``, ``epochs``, ``patience`` and, unless the
        run sets one, ``batch_size``."""
        return dataclasses.replace(config, lr=self._lr, epochs=self._epochs,
                                   patience=self._patience,
                                   batch_size=config.batch_size or self._batch_size)

    def prepare(self, train_bags: Sequence[Bag], seed: int = 0) -> None:
        """Fit ``mu, sd`` ``(F,)`` on the training cases' mean patch features."""
        means = torch.stack([b.feats.to(torch.float32).mean(0) for b in train_bags])
        self.mu.copy_(means.mean(0))
        self.sd.copy_(means.std(0, unbiased=False).clamp_min(1e-6))

    def standardised_mean(self, feats: torch.Tensor) -> torch.Tensor:
        """``(F,)`` the standardised mean patch feature ``(mean_n(x_n) - mu) / sd`` of one bag's
        ``feats (n, F)``, the input of every linear map here."""
        x = feats.to(self.mu.device, torch.float32).mean(0)
        return (x - self.mu) / self.sd

    def standardised_patches(self, feats: torch.Tensor) -> torch.Tensor:
        """``(n, F)`` each patch's standardised feature ``z_n = (x_n - mu) / sd`` of one bag's
        ``feats (n, F)``; per-patch maps share out a linear output through these."""
        return (feats.to(self.mu.device, torch.float32) - self.mu) / self.sd

    def forward_feats(self, feats: torch.Tensor) -> torch.Tensor:
        """``(n_out,)`` output of one bag's ``feats (n, F)``."""
        return self.linear(self.standardised_mean(feats))

    def penalty(self) -> torch.Tensor:
        """``l2 * ||W||^2`` (0-d)."""
        return self.l2 * self.linear.weight.pow(2).sum()

    def contributions(self, feats: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
        """``(n,)`` each patch's share of ``direction . (out - b)`` for one bag's ``feats (n, F)``,
        ``direction (n_out,)`` (e.g. ``[1]`` for a risk, ``e_1 - e_0`` for the log-odds of class 1):
        ``c_n = direction . W (x_n - mu) / sd / n``.

        The output is linear in the mean standardised feature, so the ``c_n`` add up exactly to
        ``direction . (out - b)``, in the output's unit (log-hazard for a Cox risk, logits for
        class scores); ``c_n > 0`` raises that quantity.
        """
        x = self.standardised_patches(feats)
        w = direction.to(self.linear.weight) @ self.linear.weight
        return (x @ w) / x.shape[0]

    def uniform_attention(self, bag: Bag) -> torch.Tensor:
        """``(n,)`` the weight mean pooling gives each patch, ``1/n``."""
        n = bag.feats.shape[0]
        return torch.full((n,), 1.0 / n, device=self.mu.device)
