"""Class-conditional memory of MoMKD: ``C+`` (label 1) and ``C-`` (label 0), ``K`` components each.

Three update rules (``mode``):

- ``"ema"`` (the paper's momentum memory, which "aggregates genomic and histopathology
  information across batches"): components are buffers; after each training case the own-class
  components move towards the projections of that case nearest to them,
  ``c_k <- normalize(m * c_k + (1 - m) * t_k)``, where ``t_k`` averages, over the modalities that
  have a projection nearest to ``c_k``, each modality's mean of those projections (the slide's
  patch projections and the case's omics projection, so the one omics vector has as much say as
  the thousands of patches). ``Config.ema_sources`` can drop the omics (WSI patches only).
- ``"gradient"`` (the public code): components are parameters trained by the optimiser from the
  commitment, orthogonality and alignment losses (never from the classifier).
- ``"fixed"`` (ablation): k-means initialisation, then never updated.

The omics knowledge reaches the slide branch only through the memory: in mode "ema" by the
omics projections pulling components, in mode "gradient" by the omics alignment loss training
them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from histokd_core.errors import HistoKDError

MemoryMode = Literal["ema", "gradient", "fixed"]


def spherical_kmeans(
    x: torch.Tensor, k: int, iters: int = 20, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Spherical k-means (cosine assignment, renormalised means), k-means++ seeding from the data.

    The public MoMKD code seeds with random data points; k-means++ (with the cosine distance
    ``1 - cos``) avoids two seeds in one cluster, which random seeding often leaves unresolved.

    Parameters
    ----------
    x : ``(n, D)`` points (normalised inside).
    k : number of centres; when ``n < k`` the missing centres are random unit vectors.

    Returns
    -------
    ``(k, D)`` unit-norm centres. An empty cluster is re-seeded with the point farthest from its
    centre.
    """
    x = F.normalize(x.float(), dim=-1)
    n, d = x.shape
    if n == 0:
        return F.normalize(torch.randn(k, d, generator=generator), dim=-1)
    take = min(n, k)
    centres = _kmeans_pp(x, take, generator)
    if take < k:
        extra = F.normalize(torch.randn(k - take, d, generator=generator), dim=-1)
        centres = torch.cat([centres, extra])
    for _ in range(iters):
        sim = x @ centres.T
        assign = sim.argmax(dim=1)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        empty = counts == 0
        if empty.any():
            if n >= k:
                worst = sim.max(dim=1).values.argsort()[: int(empty.sum())]
                sums[empty] = x[worst]
            else:
                sums[empty] = centres[empty]
        centres = F.normalize(sums, dim=-1)
    return centres


def _kmeans_pp(x: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """``k`` seeds from unit-norm ``x (n, D)``: each next seed drawn with probability proportional
    to its squared cosine distance ``(1 - max cos)^2`` to the seeds so far."""
    n = x.shape[0]
    seeds = [int(torch.randint(n, (1,), generator=generator))]
    dist = (1.0 - x @ x[seeds[0]]).clamp_min(0) ** 2
    for _ in range(k - 1):
        total = dist.sum()
        if total <= 0:
            nxt = int(torch.randint(n, (1,), generator=generator))
        else:
            nxt = int(torch.multinomial(dist / total, 1, generator=generator))
        seeds.append(nxt)
        dist = torch.minimum(dist, (1.0 - x @ x[nxt]).clamp_min(0) ** 2)
    return x[seeds].clone()


class ClassMemory(nn.Module):
    """Memories ``C-`` (index 0) and ``C+`` (index 1), stored as ``(2, K, D)``.

    Parameters
    ----------
    n_components : ``K`` per class.
    dim : projection dimension ``D_N``.
    mode : "ema", "gradient" or "fixed" (see the module docstring).
    momentum : EMA momentum ``m`` (mode "ema").
    """

    def __init__(
        self, n_components: int, dim: int, mode: MemoryMode = "ema", momentum: float = 0.99
    ) -> None:
        super().__init__()
        if mode not in ("ema", "gradient", "fixed"):
            raise HistoKDError(f"memory mode must be 'ema', 'gradient' or 'fixed', got {mode!r}")
        if not 0.0 <= momentum < 1.0:
            raise HistoKDError(f"memory momentum must be in [0, 1), got {momentum}")
        self.mode = mode
        self.momentum = momentum
        init = F.normalize(torch.randn(2, n_components, dim), dim=-1)
        if mode == "gradient":
            self.components = nn.Parameter(init)
        else:
            self.register_buffer("components", init)

    @property
    def n_components(self) -> int:
        return int(self.components.shape[1])

    def normalized(self) -> torch.Tensor:
        """``(2, K, D)`` unit-norm components (differentiable in mode "gradient")."""
        return F.normalize(self.components, dim=-1)

    @torch.no_grad()
    def set_components(self, label: int, centres: torch.Tensor) -> None:
        """Overwrite class ``label``'s components with ``centres (K, D)`` (normalised)."""
        self.components[int(label)] = F.normalize(centres.to(self.components), dim=-1)

    @torch.no_grad()
    def ema_step(
        self, sources: Sequence[torch.Tensor], label: int
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Class ``label``'s components after the momentum update from one case (not applied).

        Parameters
        ----------
        sources : one ``(n_m, D)`` tensor of projections per modality (the slide's patches, the
            case's omics ``(1, D)``); each modality's mean per nearest component counts once.
        label : the case's class.

        Returns
        -------
        ``(K, D)`` normalised components (those nearest to no projection unchanged) and the
        nearest-component assignment ``(n_m,)`` of each source.
        """
        mem = F.normalize(self.components[int(label)], dim=-1)
        k = mem.shape[0]
        assigns, target, votes = [], torch.zeros_like(mem), torch.zeros(k).to(mem)
        for z in sources:
            z = F.normalize(z.detach().reshape(-1, mem.shape[1]).to(mem), dim=-1)
            assign = (z @ mem.T).argmax(dim=1)
            assigns.append(assign)
            counts = torch.bincount(assign, minlength=k).to(mem)
            sums = torch.zeros_like(mem).index_add_(0, assign, z)
            used = counts > 0
            target[used] += sums[used] / counts[used, None]
            votes += used.to(mem)
        used = votes > 0
        means = target[used] / votes[used, None]
        mem[used] = F.normalize(self.momentum * mem[used] + (1.0 - self.momentum) * means, dim=-1)
        return mem, assigns

    @torch.no_grad()
    def ema_update(self, sources: Sequence[torch.Tensor], label: int) -> list[torch.Tensor]:
        """Momentum update of class ``label``'s memory from one training case
        (:meth:`ema_step`, applied in mode "ema" only; the other modes keep their memory).

        Returns the nearest-component assignment ``(n_m,)`` of each source.
        """
        mem, assigns = self.ema_step(sources, label)
        if self.mode == "ema":
            self.components[int(label)] = mem
        return assigns
