"""AMKD student: slides only, distilled from the frozen teacher.

``feats (n, F)`` -> ``Linear(F, d) -> ReLU -> Dropout`` -> patch self-attention block ``h_s``
``(n, d)`` (chunked ``scaled_dot_product_attention``: memory linear in ``n``, compute
``O(n^2 d)``). Gene-guided pathology enhancement (GGE), two parts:

- patch level: ``E_s^patch = Linear(h_s)`` ``(n, d)``, the student's projected patch tokens; with
  ``Config.ge_target = "patch"`` (default) ``L_GE`` trains them to mimic the teacher's per-patch
  genomics-informed features ``p2g (n, d)`` on the same subsampled patches;
- pathway level: ``P`` learnable pathway queries (one per teacher pathway token) cross-attend over
  ``h_s`` and a linear projection gives ``E_s^path (P, d)``; with ``ge_target = "pathway"``
  ``L_GE`` trains them to mimic the teacher's gene->path tokens ``g2p (P, d)``.

Risk: ``E_s^path`` and ``E_s^patch`` (``"patch"``) or ``E_s^path`` and ``h_s`` (``"pathway"``)
mean-pooled over tokens, concatenated ``(2d,)``, MLP (the teacher's head reads pooled ``g2p`` and
``p2g`` the same way). The student's pathway-conditioned maps are the GGE pathway queries'
attention over its own patch tokens, ``(P, n)``: learnt parameters and the slide, never the
teacher or the expression (with ``"patch"`` the queries are trained by the risk loss through the
head, with ``"pathway"`` also by ``L_GE``). The patch attention reported for overlays is that
attention averaged over pathway queries and heads ``(n,)`` (sums to 1).

Loss with a teacher (``distill=True``): see :mod:`histokd_core.methods.amkd.losses`
(``Config.distill_loss``: the paper's four terms, or the Cox loss plus the risk regression); without
(``student_no_kd`` ablation): Cox NLL only. ``predict`` and ``explain`` never read ``bag.omics``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from histokd_core.bag import Bag, DataInfo
from histokd_core.errors import HistoKDError
from histokd_core.methods.amkd.losses import (
    arr_gates,
    arr_loss,
    ge_loss,
    kd_loss,
    risk_regression_loss,
    total_loss,
)
from histokd_core.methods.amkd.shared import (
    batch_cox,
    patch_projection,
    pathway_explanation,
    pathway_names,
    risk_head,
    subsample,
    token_scores,
)
from histokd_core.methods.amkd.teacher import AMKDTeacher
from histokd_core.methods.base import BagModel, Explanation, Prediction
from histokd_core.methods.crossfit import case_teacher
from histokd_core.nn.attention import CrossAttentionBlock, SelfAttentionBlock


class AMKDStudent(BagModel):
    """Slide-only AMKD student. ``teacher`` is the frozen trained teacher (None for inference
    or for the no-distillation ablation); ``distill`` turns the distillation losses on."""

    needs_omics = False
    task = "survival"

    def __init__(
        self, info: DataInfo, config, teacher: AMKDTeacher | None = None, distill: bool = True
    ) -> None:
        super().__init__()
        if not info.pathways:
            raise HistoKDError(
                "the AMKD student has one enhancement query per pathway: DataInfo.pathways is empty"
            )
        c = config
        self.config = c
        self.distill = distill
        self.pathway_names = pathway_names(info)
        self.patches = patch_projection(info.feat_dim, c.dim, c.dropout)
        self.patch_sa = SelfAttentionBlock(
            c.dim, c.heads, c.dim_head, 0.1, c.chunk_size, c.patch_attention, c.landmarks
        )
        self.queries = nn.Parameter(torch.randn(len(info.pathways), c.dim) * 0.02)
        self.enhance = CrossAttentionBlock(c.dim, c.heads, c.dim_head, 0.1, c.chunk_size)
        self.enhance_proj = nn.Linear(c.dim, c.dim)
        self.patch_proj = nn.Linear(c.dim, c.dim) if c.ge_target == "patch" else None
        self.head = risk_head(c.dim, c.dropout)
        if teacher is not None:
            teacher.requires_grad_(False).eval()
        self.teacher = teacher

    def forward_bag(self, feats: torch.Tensor):
        """Risk (0-d), pathway-level ``E_s^path (P, d)``, patch tokens ``h_s (n, d)`` and the
        ``L_GE`` side: ``E_s^patch (n, d)`` (``ge_target = "patch"``) or ``E_s^path``."""
        h = self.patch_sa(self.patches(feats.to(self.head[0].weight.device, torch.float32)))
        e = self.enhance_proj(self.enhance(self.queries, h))
        e_ge = e if self.patch_proj is None else self.patch_proj(h)
        risk = self.head(torch.cat([e.mean(0), self._pooled_other(h, e_ge)]))[0]
        return risk, e, h, e_ge

    def _pooled_other(self, h: torch.Tensor, e_ge: torch.Tensor) -> torch.Tensor:
        """Second half of the head input: pooled ``E_s^patch`` ("patch") or ``h_s`` ("pathway")."""
        return (h if self.patch_proj is None else e_ge).mean(0)

    def teacher_for(self, bag: Bag) -> AMKDTeacher:
        """The teacher whose outputs are this case's targets (:func:`histokd_core.methods.crossfit.case_teacher`)."""
        return case_teacher(self.teacher, bag)

    def loss(self, bags: Sequence[Bag]) -> dict[str, torch.Tensor]:
        use_teacher = self.distill
        if use_teacher and self.teacher is None:
            raise HistoKDError(
                "the distilled AMKD student needs its trained teacher (stage 'teacher') to train"
            )
        risks, feats_s, risks_t, feats_t = [], [], [], []
        for b in bags:
            idx = subsample(b.feats.shape[0], self.config.max_train_patches, b.feats.device)
            feats = b.feats if idx is None else b.feats[idx]
            r, _, _, e_ge = self.forward_bag(feats)
            risks.append(r)
            feats_s.append(e_ge)
            if use_teacher:
                teacher = self.teacher_for(b)
                with torch.no_grad():
                    rt, g2p, p2g = teacher.forward_bag(feats, teacher._omics(b))
                risks_t.append(rt)
                feats_t.append(p2g if self.config.ge_target == "patch" else g2p)
        r_s = torch.stack(risks)
        l_surv = batch_cox(r_s, bags)
        if not use_teacher:
            return {"loss": l_surv, "cox": l_surv.detach()}
        c = self.config
        r_t = torch.stack(risks_t)
        l_t = batch_cox(r_t, bags)
        if c.distill_loss == "risk":
            l_risk = risk_regression_loss(r_s, r_t)
            return {
                "loss": l_surv + c.kd_weight * l_risk,
                "cox": l_surv.detach(),
                "risk_kd": l_risk.detach(),
                "teacher_cox": l_t.detach(),
            }
        # per case: patch counts differ between bags, so average the per-case token means
        l_ge = torch.stack(
            [ge_loss(s, t, c.ge_temperature) for s, t in zip(feats_s, feats_t)]
        ).mean()
        l_kd = kd_loss(r_s, r_t, c.kd_temperature)
        l_arr, w = arr_loss(r_s, r_t, l_kd, l_surv, l_t, c.arr_eps)
        g_kd, g_cox = arr_gates(l_kd, l_surv, l_t, c.arr_eps)
        total = total_loss(l_ge, l_kd, l_surv, l_arr, c.alpha)
        return {
            "loss": total,
            "cox": l_surv.detach(),
            "ge": l_ge.detach(),
            "kd": l_kd.detach(),
            "arr": l_arr.detach(),
            "arr_weight": w,
            "arr_gate_kd": g_kd,
            "arr_gate_cox": g_cox,
            "teacher_cox": l_t.detach(),
        }

    def pathway_maps(self, h: torch.Tensor) -> torch.Tensor:
        """GGE attention of each pathway query over the patches, ``(P, n)``, rows sum to 1."""
        return self.enhance.weights(self.queries, h)

    def predict(self, bag: Bag) -> Prediction:
        risk, _, h, _ = self.forward_bag(bag.feats)
        return Prediction(risk=risk, attention=self.pathway_maps(h).mean(0))

    def explain(self, bag: Bag) -> Explanation:
        """Student-only maps (no omics): GGE pathway-query attention over patches; pathway
        scores = gradient x input of the risk w.r.t. the enhanced pathway tokens ``E_s``."""
        with torch.no_grad():
            risk, e, h, e_ge = self.forward_bag(bag.feats)
            maps = self.pathway_maps(h)
            other = self._pooled_other(h, e_ge)
        scores = token_scores(e, lambda t: self.head(torch.cat([t.mean(0), other]))[0])
        return pathway_explanation(
            bag, self.pathway_names, maps, scores, maps.mean(0), float(risk),
            self.config.explain_top_pathways,
        )
