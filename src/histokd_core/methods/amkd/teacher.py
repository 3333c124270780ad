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

import torch

from histokd_core.bag import Bag, DataInfo
from histokd_core.errors import DataError
from histokd_core.methods.amkd.shared import (
    batch_cox,
    patch_projection,
    pathway_explanation,
    pathway_names,
    risk_head,
    subsample,
    token_scores,
)
from histokd_core.methods.base import BagModel, Explanation, Prediction
from histokd_core.nn.attention import PathwayPatchAttention, SelfAttentionBlock
from histokd_core.nn.pathway import PathwayEncoder


class AMKDTeacher(BagModel):
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

    def distillation_targets(self, bag: Bag) -> dict[str, torch.Tensor]:
        """What the student is trained to match, for the swap diagnostic
        (:mod:`histokd_core.train.swap`), on all of the bag's patches: ``"ge_patch"``
        ``log_softmax(p2g / tau)`` ``(n, d)`` and ``"ge_pathway"`` ``log_softmax(g2p / tau)``
        ``(P, d)`` (the ``L_GE`` targets of ``ge_target`` "patch" / "pathway", as the KL reads
        them), ``"kd"`` ``sigmoid(risk / T)`` (the ``L_KD`` target, 0-d)."""
        c = self.config
        with torch.no_grad():
            risk, g2p, p2g = self.forward_bag(bag.feats, self._omics(bag))
        return {
            "ge_patch": torch.log_softmax(p2g / c.ge_temperature, -1),
            "ge_pathway": torch.log_softmax(g2p / c.ge_temperature, -1),
            "kd": torch.sigmoid(risk / c.kd_temperature),
        }

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
