"""Stage I teacher: tumour / TME subspaces fused with histology at 10x and 20x (DMSF).

Per magnification and subspace ``s``: the gene embedding ``o_s`` (SNN over the subspace's genes)
is the query of a transcriptome-guided deformable attention over the patch-feature grid
(:class:`~histokd_core.nn.deformable.DeformableAttention2D`; offsets from the query map, which
is ``o_s`` at every cell, as in the public code), ``x_s = o_s + attention``. A fusion layer mixes
``[x_tumour | x_TME]``; then per subspace the selection layer (multi-head attention with the fused
multi-modal query over the subspace's gene key/value token, residual, LayerNorm, tanh pooler)
gives the subspace feature ``f_s (dim,)``. The classifier acts on ``[f_tumour | f_TME]``.

The gene SNNs are shared by the two magnifications; everything else is one network per
magnification. Loss = task(10x) + task(20x) + DEV (IGC, when 10x exists); CGC runs from
:meth:`SubspaceTeacher.after_backward`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from histokd_core.bag import Bag, DataInfo
from histokd_core.errors import DataError
from histokd_core.methods.base import BagModel, Prediction
from histokd_core.methods.subspace.cell_map import build_cell_map, to_map
from histokd_core.methods.subspace.cgc import apply_cgc
from histokd_core.methods.subspace.losses import dev_loss, targets, task_loss
from histokd_core.nn.deformable import DeformableAttention2D
from histokd_core.survival import discrete_risk

log = logging.getLogger(__name__)
_said_igc_off = False


def bag_views(
    bag: Bag, has_10x: bool
) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """``{"20x": (feats, coords, slide_index), "10x": ...}``; 10x only when the model uses it."""
    views = {"20x": (bag.feats, bag.coords, bag.slide_index)}
    if has_10x:
        if bag.feats_10x is None or bag.coords_10x is None:
            raise DataError(
                f"case {bag.case_id}: the model was built with 10x features but "
                "bag.feats_10x is None"
            )
        views["10x"] = (bag.feats_10x, bag.coords_10x, bag.slide_index_10x)
    return views


def combine_max_confidence(logits: dict[str, torch.Tensor]) -> torch.Tensor:
    """The magnification expert whose softmax maximum is larger (public ``max_confidence``)."""
    return max(logits.values(), key=lambda z: float(torch.softmax(z.detach(), -1).max()))


def outcome(logits: torch.Tensor, task: str, attention: torch.Tensor | None = None) -> Prediction:
    """Prediction of one case's ``(K,)`` logits (risk = -sum S for survival)."""
    if task == "classification":
        return Prediction(logits=logits, attention=attention)
    return Prediction(risk=discrete_risk(logits), logits=logits, attention=attention)


class GeneSNN(nn.Module):
    """Self-normalising gene encoder: ``[Linear, ELU, AlphaDropout]`` x layers, then ReLU."""

    def __init__(
        self, n_in: int, dim: int, hidden: Sequence[int] = (64, 48, 32), dropout: float = 0.25
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for a, b in zip((n_in, *hidden), (*hidden, dim)):
            layers += [nn.Linear(a, b), nn.ELU(), nn.AlphaDropout(dropout)]
        self.net = nn.Sequential(*layers, nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SelectionLayer(nn.Module):
    """Multi-modal query ``(dim,)`` attends to gene tokens ``(m, dim)``; residual, LN, pooler."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.pool = nn.Sequential(nn.Linear(dim, dim), nn.Tanh())

    def forward(self, x: torch.Tensor, genes: torch.Tensor) -> torch.Tensor:
        q = self.norm_q(x)[None, None]
        out, _ = self.attn(q, genes[None], genes[None], need_weights=False)
        return self.pool(self.norm(x + out[0, 0]))


@dataclass
class BranchOutput:
    """One magnification's output for one case: feature ``(2*dim,)`` (tumour | TME), logits
    ``(K,)``, attention maps ``(heads, P)`` per subspace."""

    feature: torch.Tensor
    logits: torch.Tensor
    attn_tumor: torch.Tensor
    attn_tme: torch.Tensor


class TeacherBranch(nn.Module):
    """DMSF for both subspaces at one magnification, plus the classifier."""

    def __init__(self, feat_dim: int, n_out: int, cfg) -> None:
        super().__init__()
        dim = cfg.dim
        self.fc = nn.Sequential(nn.Linear(feat_dim, dim), nn.ReLU(), nn.Dropout(cfg.dropout))
        kw = dict(heads=cfg.heads, dim_head=cfg.dim_head, offset_groups=cfg.offset_groups,
                  offset_kernel=cfg.offset_kernel, offset_stride=cfg.offset_stride,
                  offset_scale=cfg.offset_scale, n_points=cfg.n_points)
        self.dmsf = nn.ModuleDict({s: DeformableAttention2D(dim, **kw) for s in ("tumor", "tme")})
        self.fusion = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU())
        self.select = nn.ModuleDict({s: SelectionLayer(dim, cfg.heads) for s in ("tumor", "tme")})
        self.head = nn.Linear(2 * dim, n_out)

    def forward(
        self, feats, coords, slide_index, patch_size: int, genes: dict[str, torch.Tensor]
    ) -> BranchOutput:
        h = self.fc(feats.float())
        grid = build_cell_map(coords, patch_size, slide_index)
        hmap, mask = to_map(h, grid)
        xs, attn = {}, {}
        for s in ("tumor", "tme"):
            o = genes[s]
            qmap = o[:, None, None].expand(-1, grid.height, grid.width)
            out, a, _ = self.dmsf[s](qmap, hmap, mask, queries=o[None])
            xs[s], attn[s] = o + out[0], a[:, 0]
        fused = self.fusion(torch.cat([xs["tumor"], xs["tme"]]))
        f = torch.cat([self.select[s](fused, genes[s][None]) for s in ("tumor", "tme")])
        return BranchOutput(f, self.head(f), attn["tumor"], attn["tme"])


class SubspaceTeacher(BagModel):
    """Disentangled multi-modal teacher (slides + tumour / TME genes), 10x and 20x experts."""

    needs_omics = True

    def __init__(self, info: DataInfo, cfg) -> None:
        super().__init__()
        if not info.tumor_genes or not info.tme_genes:
            raise DataError(
                "subspace teacher: DataInfo.tumor_genes and tme_genes must both be non-empty "
                f"(got {len(info.tumor_genes)} and {len(info.tme_genes)}); "
                "see histokd_core.omics.subspaces"
            )
        self.task, self.cfg = info.task, cfg
        self.n_out = info.n_classes
        self.has_10x = bool(info.has_10x)
        global _said_igc_off
        if not self.has_10x and not _said_igc_off:
            _said_igc_off = True
            log.info("subspace teacher: one magnification only, inter-magnification loss (IGC) off")
        for name, idx in (("tumor_idx", info.tumor_genes), ("tme_idx", info.tme_genes)):
            self.register_buffer(name, torch.tensor(idx, dtype=torch.long), persistent=False)
        self.snn = nn.ModuleDict({
            "tumor": GeneSNN(len(info.tumor_genes), cfg.dim, dropout=cfg.gene_dropout),
            "tme": GeneSNN(len(info.tme_genes), cfg.dim, dropout=cfg.gene_dropout),
        })
        mags = ("20x", "10x") if self.has_10x else ("20x",)
        self.branches = nn.ModuleDict(
            {m: TeacherBranch(info.feat_dim, self.n_out, cfg) for m in mags}
        )
        self._cgc_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def genes(self, bag: Bag) -> dict[str, torch.Tensor]:
        if bag.omics is None:
            raise DataError(
                f"case {bag.case_id}: the subspace teacher needs omics (bag.omics is None)"
            )
        dev = self.tumor_idx.device
        omics = bag.omics.to(dev, torch.float32)
        return {
            "tumor": self.snn["tumor"](omics[self.tumor_idx]),
            "tme": self.snn["tme"](omics[self.tme_idx]),
        }

    def forward_bag(self, bag: Bag) -> dict[str, BranchOutput]:
        """Per-magnification outputs for one case."""
        genes = self.genes(bag)
        dev = self.tumor_idx.device
        return {
            m: self.branches[m](
                f.to(dev), c.to(dev), None if s is None else s.to(dev), bag.patch_size, genes
            )
            for m, (f, c, s) in bag_views(bag, self.has_10x).items()
        }

    def outputs(self, bags: Sequence[Bag]) -> dict[str, dict[str, torch.Tensor]]:
        """Batched outputs: magnification -> {"feature" (B, 2*dim), "logits" (B, K), "attn_tumor",
        "attn_tme" (B, heads, P)}."""
        per_bag = [self.forward_bag(b) for b in bags]
        return {
            m: {
                k: torch.stack([getattr(o[m], k) for o in per_bag])
                for k in ("feature", "logits", "attn_tumor", "attn_tme")
            }
            for m in self.branches
        }

    def distillation_targets(self, bag: Bag) -> dict[str, torch.Tensor]:
        """The SKD targets of one case, for the swap diagnostic (:mod:`histokd_core.train.swap`):
        per magnification ``m``, ``"feature_<m>"`` ``(2 dim,)`` (the MSE target) and
        ``"logits_<m>"`` ``log_softmax(logits / T)`` ``(K,)`` (the KL target as the KL reads it)."""
        with torch.no_grad():
            out = self.forward_bag(bag)
        t = self.cfg.temperature
        targets = {}
        for m, o in out.items():
            targets[f"feature_{m}"] = o.feature
            targets[f"logits_{m}"] = torch.log_softmax(o.logits / t, -1)
        return targets

    def loss(self, bags: Sequence[Bag]) -> dict[str, torch.Tensor]:
        out = self.outputs(bags)
        task = sum(task_loss(o["logits"], bags, self.task) for o in out.values())
        result = {"task": task.detach()}
        total = task
        if self.has_10x and self.cfg.use_igc:
            dev = sum(
                dev_loss(out["10x"][a], out["20x"][a], self.cfg.dev_weight)
                for a in ("attn_tumor", "attn_tme")
            )
            total = total + dev
            result["dev"] = dev.detach()
        y = targets(bags, self.task, self.n_out, task.device)
        self._cgc_cache = {m: (o["feature"].detach(), y) for m, o in out.items()}
        result["loss"] = total
        return result

    def after_backward(self, bags: Sequence[Bag]) -> None:
        """CGC on every magnification's classifier weight gradient (uses the last loss call)."""
        if self.cfg.cgc == "off":
            return
        for m, (f, y) in self._cgc_cache.items():
            apply_cgc(self.branches[m].head, f, y, self.cfg.cgc)
        self._cgc_cache = {}

    def predict(self, bag: Bag) -> Prediction:
        out = self.forward_bag(bag)
        return outcome(combine_max_confidence({m: o.logits for m, o in out.items()}), self.task)
