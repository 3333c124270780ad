"""AMKD teacher: slides + pathway-tokenised expression, Cox risk.

``feats (n, F)`` -> ``Linear(F, d) -> ReLU -> Dropout`` patch tokens; ``omics (g,)`` -> sparse
pathway MLP -> ``P`` pathway tokens ``(P, d)``. Pathway self-attention (pre-norm block,
``P x P``), optional patch self-attention (off by default: SurvPath's pattern, no patch-to-patch
attention, so 50 000-patch slides stay ``O(P n)``), then bidirectional co-attention
(:class:`~histokd_core.nn.attention.PathwayPatchAttention`): gene->path = pathway queries over
pathway and patch keys, ``(P, d)``, the features the student's enhancement module mimics;
path->gene = patch queries over pathway keys, ``(n, d)``. Both are mean-pooled over tokens,
concatenated ``(2d,)`` and an MLP ``2d -> d/4 -> 1`` gives the risk; Cox partial-likelihood NLL.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from histokd_core.errors import DataError
from histokd_core.methods.base import Bag, DataInfo, Explanation, KDModel, Prediction
from histokd_core.nn.attention import PathwayPatchAttention, SelfAttentionBlock
from histokd_core.nn.pathway import PathwayEncoder
from histokd_core.survival.losses import cox_nll


def pathway_names(info: DataInfo) -> list[str]:
    """``info.pathway_names``, or ``pathway_<i>`` when the data has none."""
    return list(info.pathway_names) or [f"pathway_{i}" for i in range(len(info.pathways))]


def patch_projection(feat_dim: int, dim: int, dropout: float) -> nn.Sequential:
    """``Linear(feat_dim, dim) -> ReLU -> Dropout``: patch features to tokens ``(n, dim)``."""
    return nn.Sequential(nn.Linear(feat_dim, dim), nn.ReLU(), nn.Dropout(dropout))


def risk_head(dim: int, dropout: float) -> nn.Sequential:
    """MLP ``2 dim -> dim/4 -> 1`` on the concatenated pooled tokens."""
    return nn.Sequential(
        nn.Linear(2 * dim, dim // 4), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim // 4, 1)
    )


def subsample(n: int, k: int | None, device: torch.device) -> torch.Tensor | None:
    """Random ``k`` of ``n`` patch indices while training (SurvPath draws 4096), else None."""
    if k is None or n <= k:
        return None
    return torch.randperm(n, device=device)[:k]


def batch_cox(risks: torch.Tensor, bags: Sequence[Bag]) -> torch.Tensor:
    """Cox NLL of risks ``(B,)`` for the bags' times and events."""
    time = torch.tensor([float(b.time) for b in bags], dtype=torch.float64, device=risks.device)
    event = torch.tensor([int(b.event) for b in bags], device=risks.device)
    return cox_nll(risks, time, event)


def token_scores(tokens: torch.Tensor, risk_fn) -> np.ndarray:
    """Gradient x input of ``risk_fn(tokens)`` per token, summed over features: ``(P,)``."""
    with torch.enable_grad():
        t = tokens.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(risk_fn(t), t)
    return (grad * t).sum(-1).detach().float().cpu().numpy()


def pathway_explanation(
    bag: Bag,
    names: Sequence[str],
    maps: torch.Tensor,
    scores: np.ndarray,
    attention: torch.Tensor,
    risk: float,
    top: int,
) -> Explanation:
    """Explanation with the ``top`` pathways (by |score|) as maps ``(n,)`` and all scores."""
    order = np.argsort(-np.abs(scores))[:top]
    maps_np = maps.detach().float().cpu().numpy()
    return Explanation(
        coords=bag.coords.cpu().numpy(),
        patch_size=bag.patch_size,
        attention=attention.detach().float().cpu().numpy(),
        pathway_maps={names[i]: maps_np[i] for i in order},
        pathway_scores={names[i]: float(scores[i]) for i in range(len(names))},
        top_patches={names[i]: np.argsort(-maps_np[i])[:8] for i in order},
        risk=risk,
    )


class AMKDTeacher(KDModel):
    """Multimodal AMKD teacher (needs ``bag.omics``). See the module docstring."""

    needs_omics = True
    task = "survival"

    def __init__(self, info: DataInfo, config) -> None:
        super().__init__()
        if info.n_genes <= 0 or not info.pathways:
            raise DataError(
                "the AMKD teacher needs an omics table and gene sets (DataInfo.n_genes = "
                f"{info.n_genes}, {len(info.pathways)} pathways)"
            )
        c = config
        self.config = c
        self.pathway_names = pathway_names(info)
        self.genes = PathwayEncoder(info.n_genes, info.pathways, c.dim, c.pathway_hidden, c.dropout)
        self.patches = patch_projection(info.feat_dim, c.dim, c.dropout)
        self.pathway_sa = SelfAttentionBlock(c.dim, c.heads, c.dim_head, 0.1, c.chunk_size)
        self.patch_sa = (
            SelfAttentionBlock(c.dim, c.heads, c.dim_head, 0.1, c.chunk_size)
            if c.teacher_patch_self_attention
            else None
        )
        self.coattn = PathwayPatchAttention(c.dim, c.heads, c.dim_head, 0.1, c.chunk_size)
        self.head = risk_head(c.dim, c.dropout)

    def tokens(self, feats: torch.Tensor, omics: torch.Tensor):
        """Pathway tokens ``(P, d)`` after self-attention and patch tokens ``(n, d)``."""
        dev = self.device_
        g = self.pathway_sa(self.genes(omics.to(dev, torch.float32)))
        p = self.patches(feats.to(dev, torch.float32))
        if self.patch_sa is not None:
            p = self.patch_sa(p)
        return g, p

    @property
    def device_(self) -> torch.device:
        """Device of the model's weights."""
        return self.head[0].weight.device

    def forward_bag(self, feats: torch.Tensor, omics: torch.Tensor):
        """Risk (0-d), gene->path features ``(P, d)`` and path->gene features ``(n, d)``."""
        g, p = self.tokens(feats, omics)
        g2p, p2g = self.coattn(g, p)
        risk = self.head(torch.cat([g2p.mean(0), p2g.mean(0)]))[0]
        return risk, g2p, p2g

    def _omics(self, bag: Bag) -> torch.Tensor:
        if bag.omics is None:
            raise DataError(f"case {bag.case_id}: the AMKD teacher needs omics (bag.omics is None)")
        return bag.omics

    def loss(self, bags: Sequence[Bag]) -> dict[str, torch.Tensor]:
        risks = []
        for b in bags:
            idx = subsample(b.feats.shape[0], self.config.max_train_patches, b.feats.device)
            feats = b.feats if idx is None else b.feats[idx]
            risks.append(self.forward_bag(feats, self._omics(b))[0])
        cox = batch_cox(torch.stack(risks), bags)
        return {"loss": cox, "cox": cox.detach()}

    def predict(self, bag: Bag) -> Prediction:
        g, p = self.tokens(bag.feats, self._omics(bag))
        g2p, p2g = self.coattn(g, p)
        risk = self.head(torch.cat([g2p.mean(0), p2g.mean(0)]))[0]
        return Prediction(risk=risk, attention=self.coattn.pathway_weights(g, p).mean(0))

    def explain(self, bag: Bag) -> Explanation:
        """Co-attention maps of each pathway over the patches ``(P, n)``; pathway scores are
        gradient x input of the risk w.r.t. the gene->path tokens."""
        with torch.no_grad():
            g, p = self.tokens(bag.feats, self._omics(bag))
            g2p, p2g = self.coattn(g, p)
            maps = self.coattn.pathway_weights(g, p)
            p_pool = p2g.mean(0)
            risk = float(self.head(torch.cat([g2p.mean(0), p_pool]))[0])
        scores = token_scores(g2p, lambda t: self.head(torch.cat([t.mean(0), p_pool]))[0])
        return pathway_explanation(
            bag, self.pathway_names, maps, scores, maps.mean(0), risk,
            self.config.explain_top_pathways,
        )
