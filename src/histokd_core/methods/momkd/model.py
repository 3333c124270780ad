"""The MoMKD model: one jointly trained network, omics branch in training only, WSI-only inference.

Training loss per bag (paper weights): ``0.5 CE + 0.01 MSE(recon, omics) + 0.05 L_align(omics)
+ 0.2 L_align(wsi) + 0.1 L_mem``. Gradient decoupling: the omics and WSI branches share no
parameters and are only compared through the memory; the memory is detached wherever the
classifier's loss could reach it (the attention scores). Before training call
:meth:`MoMKDModel.prepare` with the training bags (spherical k-means initialisation of the memory);
after each training epoch :meth:`MoMKDModel.epoch_end` returns the memory diagnostics.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from histokd_core.bag import Bag, DataInfo
from histokd_core.errors import DataError
from histokd_core.methods.base import BagModel, Explanation, Prediction
from histokd_core.methods.momkd.diagnostics import UsageTracker, active_ratio, perplexity
from histokd_core.methods.momkd.losses import alignment_loss, memory_loss, nearest_component
from histokd_core.methods.momkd.memory import ClassMemory, MemoryMode, spherical_kmeans
from histokd_core.methods.momkd.omics_branch import OmicsBranch, bag_labels, stack_omics
from histokd_core.methods.momkd.wsi_branch import WsiBranch

if TYPE_CHECKING:
    from histokd_core.methods.momkd import Config

log = logging.getLogger(__name__)


class MoMKDModel(BagModel):
    """MoMKD (classification). ``predict``/``explain`` read slide features only.

    Parameters
    ----------
    info : data description (``feat_dim``, ``n_genes`` > 0, ``n_classes`` = 2).
    config : :class:`histokd_core.methods.momkd.Config`.
    memory_mode : "ema", "gradient" or "fixed"; overrides the config (stages use it for ablations).
    """

    task = "classification"
    needs_omics = False

    def __init__(
        self, info: DataInfo, config: Config, memory_mode: MemoryMode | None = None
    ) -> None:
        super().__init__()
        if info.n_classes != 2:
            raise DataError(
                f"MoMKD needs a binary label (n_classes = 2), got n_classes = {info.n_classes}"
            )
        if info.n_genes <= 0:
            raise DataError(
                "MoMKD distils omics into the slide branch: the cohort needs an omics table "
                "(n_genes = 0)"
            )
        self.config = config
        mode = memory_mode or ("fixed" if config.fixed_memory else config.memory_update)
        self.wsi = WsiBranch(
            info.feat_dim,
            dim=config.wsi_dim,
            shared_dim=config.shared_dim,
            heads=config.gat_heads,
            dropout=config.wsi_dropout,
            cls_hidden=config.cls_hidden,
            tau_init=config.attn_tau,
            learnable_tau=config.learnable_tau,
            tau_range=config.attn_tau_range,
            k_neighbors=config.k_neighbors,
        )
        self.omics = OmicsBranch(info.n_genes, dim=config.omics_dim, shared_dim=config.shared_dim,
                                 dropout=config.omics_dropout)
        self.memory = ClassMemory(
            config.n_components, config.shared_dim, mode=mode, momentum=config.ema_momentum
        )
        self.n_genes = info.n_genes
        self.usage = UsageTracker(config.n_components)

    @property
    def memory_mode(self) -> str:
        return self.memory.mode

    def _memories(self) -> tuple[torch.Tensor, torch.Tensor]:
        mem = self.memory.normalized()
        return mem[1], mem[0]

    def terms(self, bags: Sequence[Bag]) -> dict[str, torch.Tensor]:
        """Unweighted loss terms (not detached), each the mean over the bags.

        ``"ce"``, ``"align_wsi"``, ``"align_omics"``, ``"mse"`` (omics reconstruction), ``"mem"``
        (commitment + ``orth_weight`` x orthogonality of the own-class memory), and for logging
        ``"commit"`` and ``"orth"``. In training mode this also applies the EMA memory update
        (mode "ema", after the terms are computed, from the modalities in
        ``config.ema_sources``) and counts memory usage for :meth:`epoch_end`.
        In modes "ema" and "fixed" the memory gets no gradient, so its orthogonality term is a
        diagnostic only.
        """
        cfg = self.config
        device = self.wsi.patch_projector.weight.device
        labels = bag_labels(bags).to(device)
        mem_pos, mem_neg = self._memories()
        ce, align_wsi, mem, commit, orth = [], [], [], [], []
        updates = []
        for bag, y in zip(bags, labels):
            out = self.wsi(bag, mem_pos, mem_neg)
            ce.append(F.cross_entropy(out["logits"][None], y[None]))
            align_wsi.append(self._align(out["z_wsi"], y, mem_pos, mem_neg))
            own = mem_pos if int(y) == 1 else mem_neg
            ml = memory_loss(
                out["z"], own, cfg.orth_weight, codebook_grad=self.memory.mode == "gradient"
            )
            mem.append(ml["loss"])
            commit.append(ml["commit"])
            orth.append(ml["orth"])
            updates.append((out["z"].detach(), int(y), ml["assign"]))
        omics = stack_omics(bags, self.n_genes).to(device)
        om = self.omics(omics)
        terms = {
            "ce": torch.stack(ce).mean(),
            "align_wsi": torch.stack(align_wsi).mean(),
            "align_omics": self._align(om["z"], labels, mem_pos, mem_neg),
            "mse": F.mse_loss(om["recon"], omics),
            "mem": torch.stack(mem).mean(),
            "commit": torch.stack(commit).mean(),
            "orth": torch.stack(orth).mean(),
        }
        if self.training:
            z_omics = om["z"].detach()
            for i, (z, y, assign) in enumerate(updates):
                self.usage.update(y, assign)
                sources = {"wsi": z, "omics": z_omics[i : i + 1]}
                self.memory.ema_update([sources[m] for m in cfg.ema_sources], y)
        return terms

    def loss(self, bags: Sequence[Bag]) -> dict[str, torch.Tensor]:
        """``{"loss": 0.5 ce + 0.01 mse + 0.05 align_omics + 0.2 align_wsi + 0.1 mem}`` (config
        weights) plus the detached terms of :meth:`terms` and the attention temperature
        ``"tau"``."""
        cfg = self.config
        t = self.terms(bags)
        total = (
            cfg.w_ce * t["ce"]
            + cfg.w_mse * t["mse"]
            + cfg.w_align_omics * t["align_omics"]
            + cfg.w_align_wsi * t["align_wsi"]
            + cfg.w_mem * t["mem"]
        )
        logged = {k: v.detach() for k, v in t.items()}
        return {"loss": total, **logged, "tau": self.wsi.tau.detach()}

    def _align(self, z, label, mem_pos, mem_neg) -> torch.Tensor:
        cfg = self.config
        return alignment_loss(z, label, mem_pos, mem_neg, cfg.tau_agg, cfg.beta, cfg.margin)

    def predict(self, bag: Bag) -> Prediction:
        """WSI-only inference: ``logits (2,)`` and memory-guided ``attention (n,)``."""
        mem_pos, mem_neg = self._memories()
        out = self.wsi(bag, mem_pos, mem_neg)
        return Prediction(logits=out["logits"], attention=out["attention"])

    def distillation_targets(self, bag: Bag) -> dict[str, torch.Tensor]:
        """The memory alignment quantities of one case: what carries its expression towards the
        slide branch (for the swap diagnostic,
        :func:`histokd_core.train.swap.model_swap_diagnostic`).

        MoMKD's omics and slide branches meet only in the class memory, so the expression can
        reach the slide branch only by moving the memory. Needs the bag's omics and label; uses
        the model as it is (call in eval mode for deterministic values); changes nothing.

        Returns
        -------
        dict of
        ``"memory_update" (2, K, D_N)``: how training on this case moves the memory (rows ``C-``,
            ``C+``). Mode "ema": new minus old components of the case's class after the momentum
            step from its patch projections and omics projection (``config.ema_sources``);
            mode "gradient": minus the gradient, with respect to the components, of the case's
            loss terms that reach the memory (``w_align_omics align_omics + w_align_wsi
            align_wsi + w_mem mem``; the classifier's loss never does); mode "fixed": zeros.
        ``"omics_alignment" (2K,)``: cosine of the omics projection to every component (the
            quantity the omics alignment loss acts on), order of :meth:`memory_names`.
        ``"slide_alignment" (2K,)``: the same for the pooled slide projection.
        ``"patch_memory_scores" (n,)``: each patch's memory score ``max cos(C+) - max cos(C-)``
            (the attention logits of the slide branch).
        """
        cfg = self.config
        device = self.wsi.patch_projector.weight.device
        y = int(bag_labels([bag])[0])
        omics = stack_omics([bag], self.n_genes).to(device)
        components = self.memory.components.detach().clone()
        with torch.no_grad():
            mem = F.normalize(components, dim=-1)
            mem_pos, mem_neg = mem[1], mem[0]
            out = self.wsi(bag.to(device), mem_pos, mem_neg)
            z_omics = self.omics(omics)["z"]
        order = torch.cat([mem_pos, mem_neg])
        scores = (out["z"] @ mem_pos.T).max(-1).values - (out["z"] @ mem_neg.T).max(-1).values
        if self.memory.mode == "ema":
            sources = {"wsi": out["z"], "omics": z_omics}
            own, _ = self.memory.ema_step([sources[m] for m in cfg.ema_sources], y)
            update = torch.zeros_like(components)
            update[y] = own - mem[y]
        elif self.memory.mode == "gradient":
            with torch.enable_grad():
                leaf = components.requires_grad_(True)
                m = F.normalize(leaf, dim=-1)
                own_memory = m[y]
                loss = (
                    cfg.w_align_omics * self._align(z_omics, y, m[1], m[0])
                    + cfg.w_align_wsi * self._align(out["z_wsi"], y, m[1], m[0])
                    + cfg.w_mem * memory_loss(out["z"], own_memory, cfg.orth_weight,
                                              codebook_grad=True)["loss"]
                )
                (grad,) = torch.autograd.grad(loss, leaf)
            update = -grad
        else:
            update = torch.zeros_like(components)
        return {
            "memory_update": update.detach(),
            "omics_alignment": (z_omics[0] @ order.T).detach(),
            "slide_alignment": (out["z_wsi"] @ order.T).detach(),
            "patch_memory_scores": scores.detach(),
        }

    def memory_names(self) -> list[str]:
        """Component names, ``C+0 .. C+{K-1}`` then ``C-0 .. C-{K-1}``."""
        k = self.memory.n_components
        return [f"C+{i}" for i in range(k)] + [f"C-{i}" for i in range(k)]

    def explain(self, bag: Bag, top_k: int = 3) -> Explanation:
        """Attention, per-component activations ``memory (2K, n)`` (cosine of each patch projection
        to each component, order of :meth:`memory_names`), top-``top_k`` patches per component and
        the positive-class probability. Uses slide features only."""
        with torch.no_grad():
            mem_pos, mem_neg = self._memories()
            out = self.wsi(bag, mem_pos, mem_neg)
            activations = (out["z"] @ torch.cat([mem_pos, mem_neg]).T).T.float().cpu().numpy()
            prob = float(torch.softmax(out["logits"].float(), -1)[1])
            attention = out["attention"].float().cpu().numpy()
        names = self.memory_names()
        n_top = min(top_k, activations.shape[1])
        top = {
            name: np.argsort(-row, kind="stable")[:n_top] for name, row in zip(names, activations)
        }
        top["attention"] = np.argsort(-attention, kind="stable")[:n_top]
        return Explanation(
            coords=bag.coords.cpu().numpy(),
            patch_size=bag.patch_size,
            attention=attention,
            memory=activations,
            memory_names=names,
            top_patches=top,
            probability=prob,
            risk_group="positive" if prob >= 0.5 else "negative",
        )

    @torch.no_grad()
    def prepare(self, train_bags: Sequence[Bag], seed: int = 0) -> None:
        """Initialise the memory by spherical k-means on sampled patch projections.

        Runs the (untrained) WSI encoder in eval mode over the training bags (shuffled, stopping
        once enough patches are collected), samples up to ``config.init_samples`` projections in all
        (half per class) and clusters each class's into ``K`` components. Call once per fold before
        training; the training mode is restored afterwards.
        """
        was_training = self.training
        self.eval()
        gen = torch.Generator().manual_seed(seed)
        per_class = max(1, self.config.init_samples // 2)
        labels = bag_labels(train_bags).tolist()
        collected: dict[int, list[torch.Tensor]] = {0: [], 1: []}
        counts = {0: 0, 1: 0}
        for i in torch.randperm(len(train_bags), generator=gen).tolist():
            y = labels[i]
            if counts[y] >= 2 * per_class:
                if all(c >= 2 * per_class for c in counts.values()):
                    break
                continue
            _, z = self.wsi.encode(train_bags[i])
            collected[y].append(z.cpu())
            counts[y] += z.shape[0]
        for y in (0, 1):
            if not collected[y]:
                raise DataError(
                    f"cannot initialise the MoMKD memory: no training case with label {y}"
                )
            z = torch.cat(collected[y])
            if z.shape[0] > per_class:
                z = z[torch.randperm(z.shape[0], generator=gen)[:per_class]]
            centres = spherical_kmeans(
                z, self.memory.n_components, self.config.kmeans_iters, gen
            )
            self.memory.set_components(y, centres)
        log.info("MoMKD memory initialised by k-means (%s)", {y: int(counts[y]) for y in counts})
        self.train(was_training)

    def epoch_end(self) -> dict[str, float]:
        """Memory diagnostics accumulated over the training epoch just finished (then reset):
        ``memory_active_ratio``, ``memory_perplexity`` and the per-class active ratios."""
        return self.usage.summary(reset=True)

    @torch.no_grad()
    def memory_diagnostics(self, bags: Sequence[Bag]) -> dict[str, float]:
        """Active ratio and perplexity of the memory over ``bags`` (each patch assigned to its
        nearest own-class component), computed without changing the model."""
        counts = torch.zeros(2, self.memory.n_components, dtype=torch.long)
        mem = self.memory.normalized()
        for bag, y in zip(bags, bag_labels(bags).tolist()):
            _, z = self.wsi.encode(bag)
            assign = nearest_component(z, mem[y]).cpu()
            counts[y] += torch.bincount(assign, minlength=counts.shape[1])
        return {
            "memory_active_ratio": active_ratio(counts),
            "memory_perplexity": perplexity(counts),
        }
