"""Stage II student (slides only): ITA per magnification and a dual-expert head.

ITA: deformable self-attention over the patch grid (queries = the patch tokens, offsets from
the patch map), ``x = h + attention``; then, per subspace (tumour, TME), LayerNorm + projection,
a learnt token score ``s_i`` (weight ``w_i = exp(s_i)``), DPC-KNN into ``K`` centres and the
significance-weighted merge into ``K`` prototypes. The subspace feature is the mean of the
prototypes weighted by their total token weight, so the student's ``[f_tumour | f_TME]`` maps
explicitly onto the teacher's concatenated subspace features (the public code's two cluster
tokens are not tied to a subspace). Each magnification is an expert with its own classifier;
prediction takes the more confident expert (public ``max_confidence``).

Training: task loss summed over magnifications during the first ``warmup_epochs`` epochs
(counted by :meth:`SubspaceStudent.set_epoch`, which the trainer calls with the 0-based epoch),
then SKD (task + MSE to the teacher's features + KL on temperature-softened logits) when a
teacher is given. :meth:`predict` and :meth:`explain` never read ``bag.omics``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from histokd_core.bag import Bag, DataInfo
from histokd_core.methods.base import BagModel, Explanation, Prediction
from histokd_core.methods.subspace.cell_map import build_cell_map, to_map
from histokd_core.methods.subspace.losses import skd_loss, task_loss
from histokd_core.methods.subspace.teacher import bag_views, combine_max_confidence, outcome
from histokd_core.nn.deformable import DeformableAttention2D
from histokd_core.nn.dpc_knn import dpc_knn, merge_tokens

log = logging.getLogger(__name__)


@dataclass
class SubspaceTokens:
    """One subspace of one case: feature ``(dim,)``, prototypes ``(K, dim)``, assignment ``(n,)``,
    centres ``(K,)`` and token weights ``(n,)``."""

    feature: torch.Tensor
    prototypes: torch.Tensor
    assignment: torch.Tensor
    centres: torch.Tensor
    weight: torch.Tensor


class ClusterMerge(nn.Module):
    """Token score + DPC-KNN + weighted merge into ``n_prototypes`` prototypes."""

    def __init__(self, dim: int, n_prototypes: int, k: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, dim)
        self.score = nn.Linear(dim, 1)
        self.n_prototypes, self.k = n_prototypes, k

    def forward(self, x: torch.Tensor) -> SubspaceTokens:
        z = self.proj(self.norm(x))
        weight = torch.exp(self.score(z)[:, 0].clamp(max=30.0))
        cl = dpc_knn(z, self.n_prototypes, self.k)
        n_c = cl.centres.shape[0]
        protos = merge_tokens(z, cl.assignment, weight, n_c)
        mass = torch.zeros(n_c, dtype=weight.dtype, device=weight.device)
        mass = mass.index_add(0, cl.assignment, weight)
        feature = (mass[:, None] * protos).sum(0) / mass.sum().clamp_min(1e-12)
        return SubspaceTokens(feature, protos, cl.assignment, cl.centres, weight)


@dataclass
class StudentOutput:
    """One magnification's output: feature ``(2*dim,)``, logits ``(K,)``, per-subspace tokens."""

    feature: torch.Tensor
    logits: torch.Tensor
    tumor: SubspaceTokens
    tme: SubspaceTokens


class StudentBranch(nn.Module):
    """ITA + classifier (one magnification expert)."""

    def __init__(self, feat_dim: int, n_out: int, cfg) -> None:
        super().__init__()
        dim = cfg.dim
        self.fc = nn.Sequential(nn.Linear(feat_dim, dim), nn.ReLU(), nn.Dropout(cfg.dropout))
        self.attn = DeformableAttention2D(
            dim, heads=cfg.heads, dim_head=cfg.dim_head, offset_groups=cfg.offset_groups,
            offset_kernel=cfg.offset_kernel, offset_stride=cfg.offset_stride,
            offset_scale=cfg.offset_scale, n_points=cfg.n_points,
        )
        self.merge = nn.ModuleDict(
            {s: ClusterMerge(dim, cfg.n_prototypes, cfg.knn_k) for s in ("tumor", "tme")}
        )
        self.head = nn.Linear(2 * dim, n_out)

    def forward(self, feats, coords, slide_index, patch_size: int) -> StudentOutput:
        h = self.fc(feats.float())
        grid = build_cell_map(coords, patch_size, slide_index)
        hmap, mask = to_map(h, grid)
        out, _, _ = self.attn(hmap, hmap, mask, queries=h)
        x = h + out
        t, m = self.merge["tumor"](x), self.merge["tme"](x)
        f = torch.cat([t.feature, m.feature])
        return StudentOutput(f, self.head(f), t, m)


class SubspaceStudent(BagModel):
    """Slides-only student; ``teacher`` (frozen) enables SKD after the warm-up."""

    needs_omics = False

    def __init__(
        self, info: DataInfo, cfg, teacher: BagModel | None = None, distill: bool = True
    ) -> None:
        super().__init__()
        self.task, self.cfg, self.n_out = info.task, cfg, info.n_classes
        self.has_10x = bool(info.has_10x)
        mags = ("20x", "10x") if self.has_10x else ("20x",)
        self.branches = nn.ModuleDict(
            {m: StudentBranch(info.feat_dim, self.n_out, cfg) for m in mags}
        )
        self.distill = distill
        self._teacher = [teacher] if teacher is not None else []
        self.epoch = 0
        if distill and teacher is None:
            log.debug("subspace student without a teacher: task loss only (inference, ablation)")

    @property
    def teacher(self) -> BagModel | None:
        """The frozen teacher (kept out of the module tree, so not in the student's state dict)."""
        return self._teacher[0] if self._teacher else None

    def set_epoch(self, epoch: int) -> None:
        """0-based epoch from the trainer; SKD starts at ``epoch >= cfg.warmup_epochs``."""
        self.epoch = int(epoch)

    def forward_bag(self, bag: Bag) -> dict[str, StudentOutput]:
        dev = self.branches["20x"].head.weight.device
        return {
            m: self.branches[m](
                f.to(dev), c.to(dev), None if s is None else s.to(dev), bag.patch_size
            )
            for m, (f, c, s) in bag_views(bag, self.has_10x).items()
        }

    def loss(self, bags: Sequence[Bag]) -> dict[str, torch.Tensor]:
        per_bag = [self.forward_bag(b) for b in bags]
        logits = {m: torch.stack([o[m].logits for o in per_bag]) for m in self.branches}
        task = sum(task_loss(z, bags, self.task) for z in logits.values())
        teacher = self.teacher
        if not self.distill or teacher is None or self.epoch < self.cfg.warmup_epochs:
            return {"loss": task, "task": task.detach()}
        feats = {m: torch.stack([o[m].feature for o in per_bag]) for m in self.branches}
        with torch.no_grad():
            t_out = teacher.outputs(bags)
        mags = list(self.branches)
        return skd_loss(
            task,
            [feats[m] for m in mags],
            [t_out[m]["feature"] for m in mags],
            [logits[m] for m in mags],
            [t_out[m]["logits"] for m in mags],
            self.cfg.w_mse,
            self.cfg.w_kd,
            self.cfg.temperature,
        )

    def _attention(self, out: StudentOutput) -> torch.Tensor:
        w = out.tumor.weight + out.tme.weight
        return w / w.sum()

    def predict(self, bag: Bag) -> Prediction:
        out = self.forward_bag(bag)
        logits = combine_max_confidence({m: o.logits for m, o in out.items()})
        return outcome(logits, self.task, self._attention(out["20x"]))

    def explain(self, bag: Bag, top_k: int = 3) -> Explanation:
        """Per-20x-patch tumour / TME cluster ids and token-weight attention.

        ``top_patches`` holds, per subspace, the DPC-KNN centre tokens (``"tumor centres"``) and
        for each prototype the ``top_k`` member patches with the largest significance weight
        (``"tumor prototype 0"``: the patches that shape that prototype most).
        """
        with torch.no_grad():
            out = self.forward_bag(bag)
            logits = combine_max_confidence({m: o.logits for m, o in out.items()})
        o20 = out["20x"]
        pred = outcome(logits, self.task)
        top = {}
        for s, tok in (("tumor", o20.tumor), ("tme", o20.tme)):
            top[f"{s} centres"] = tok.centres.cpu().numpy()
            weight = tok.weight.cpu().numpy()
            assignment = tok.assignment.cpu().numpy()
            for c in range(tok.centres.shape[0]):
                members = np.flatnonzero(assignment == c)
                order = np.argsort(-weight[members], kind="stable")[:top_k]
                top[f"{s} prototype {c}"] = members[order]
        prob = risk = None
        if self.task == "classification":
            prob = float(torch.softmax(logits, -1)[-1])
        else:
            risk = float(pred.risk)
        return Explanation(
            coords=bag.coords.cpu().numpy(),
            patch_size=bag.patch_size,
            attention=self._attention(o20).cpu().numpy().astype(np.float64),
            clusters={
                "tumor": o20.tumor.assignment.cpu().numpy(),
                "tme": o20.tme.assignment.cpu().numpy(),
            },
            top_patches=top,
            risk=risk,
            probability=prob,
        )
