"""MoMKD: momentum-memory knowledge distillation from omics to slides (classification).

One model is trained jointly: an omics branch (training only) and a WSI branch (graph encoder +
memory-guided attention) that meet only through class-conditional memories ``C+``/``C-``.
Inference is WSI-only. See ``docs/architecture.md`` and DESIGN.md "MoMKD".

Engine hooks on :class:`MoMKDModel`: ``prepare(train_bags)`` once per fold before training
(k-means memory initialisation) and ``epoch_end() -> dict`` after each training epoch (memory
diagnostics: active ratio, perplexity).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from histokd_core.bag import DataInfo
from histokd_core.errors import ConfigError
from histokd_core.methods.base import BagModel, Stage
from histokd_core.methods.momkd.model import MoMKDModel

TASKS = ("classification",)

__all__ = ["TASKS", "Config", "MoMKDModel", "stages"]


@dataclass
class Config:
    """MoMKD hyper-parameters (paper values; public-code choices noted).

    Attributes
    ----------
    memory_update : "ema" (the paper's momentum-updated memory, the default) or "gradient" (the
        public code: a codebook trained by the optimiser). Neither was consistently better on the
        synthetic benchmark (``docs/benchmarks.md``); ``compare_memory_updates`` reports the
        other rule as a stage of every run.
    fixed_memory : ablation: k-means-initialised memory that is never updated.
    n_components : components per class ``K`` (16).
    ema_momentum : EMA momentum for ``memory_update = "ema"``.
    ema_sources : projections that move the EMA memory: ``("wsi", "omics")`` (paper: the memory
        aggregates genomic and histopathology information) or ``("wsi",)`` (patches only).
    wsi_dim : graph encoder dimension ``D`` (256); gat_heads (2); wsi_dropout (0.5).
    omics_dim : omics encoder width (256); omics_dropout (0.25).
    shared_dim : ``D_N`` (128), projection dimension of both branches and the memory.
    cls_hidden : classifier hidden width (128).
    k_neighbors : kNN graph degree (8).
    w_ce, w_mse, w_align_omics, w_align_wsi, w_mem : loss weights 0.5, 0.01, 0.05, 0.2, 0.1.
    tau_agg, beta, margin : alignment soft-max temperature 5, sharpness 20, margin 0.3.
    orth_weight : weight of the orthogonality term inside the memory loss (10, public code).
    attn_tau : attention temperature (0.2); learnable_tau : learnt in log space (public code),
        clamped to ``attn_tau_range`` [0.01, 2].
    init_samples : patch projections sampled for the k-means initialisation (about 10 000, half
        per class); kmeans_iters : spherical k-means iterations (20).
    compare_memory_updates : also train the other memory update rule as a reported stage.
    fixed_memory_ablation : also train the fixed-memory ablation (``student_fixed_memory``) as a
        reported stage.
    baselines : WSI-only baselines ("abmil", "transmil") and the omics-only reference
        ("omics_only") trained on the same folds.
    """

    memory_update: Literal["ema", "gradient"] = "ema"
    fixed_memory: bool = False
    n_components: int = 16
    ema_momentum: float = 0.99
    ema_sources: tuple[str, ...] = ("wsi", "omics")
    wsi_dim: int = 256
    gat_heads: int = 2
    wsi_dropout: float = 0.5
    omics_dim: int = 256
    omics_dropout: float = 0.25
    shared_dim: int = 128
    cls_hidden: int = 128
    k_neighbors: int = 8
    w_ce: float = 0.5
    w_mse: float = 0.01
    w_align_omics: float = 0.05
    w_align_wsi: float = 0.2
    w_mem: float = 0.1
    tau_agg: float = 5.0
    beta: float = 20.0
    margin: float = 0.3
    orth_weight: float = 10.0
    attn_tau: float = 0.2
    learnable_tau: bool = True
    attn_tau_range: tuple[float, float] = (0.01, 2.0)
    init_samples: int = 10_000
    kmeans_iters: int = 20
    compare_memory_updates: bool = True
    fixed_memory_ablation: bool = True
    baselines: tuple[str, ...] = ("abmil", "transmil", "omics_only")

    def __post_init__(self) -> None:
        if self.memory_update not in ("ema", "gradient"):
            raise ConfigError(
                f"momkd memory_update must be 'ema' or 'gradient', got {self.memory_update!r}"
            )
        if self.n_components < 1:
            raise ConfigError(f"momkd n_components must be >= 1, got {self.n_components}")
        self.ema_sources = tuple(self.ema_sources)
        if not self.ema_sources or set(self.ema_sources) - {"wsi", "omics"}:
            raise ConfigError(
                f"momkd ema_sources must be a non-empty subset of ('wsi', 'omics'), "
                f"got {self.ema_sources!r}"
            )
        unknown = set(self.baselines) - {"abmil", "transmil", "omics_only"}
        if unknown:
            raise ConfigError(
                f"momkd baselines: unknown {sorted(unknown)}; expected abmil, transmil, omics_only"
            )
        self.attn_tau_range = tuple(self.attn_tau_range)
        self.baselines = tuple(self.baselines)


def _build_abmil(info: DataInfo, trained: dict[str, BagModel]) -> BagModel:
    from histokd_core.methods.baselines import abmil

    return abmil.build(info)


def _build_transmil(info: DataInfo, trained: dict[str, BagModel]) -> BagModel:
    from histokd_core.methods.baselines import transmil

    return transmil.build(info)


def _build_omics_only(info: DataInfo, trained: dict[str, BagModel]) -> BagModel:
    from histokd_core.methods.baselines import snn

    return snn.build(info)


def stages(config: Config) -> list[Stage]:
    """Models trained per fold: ``student`` (MoMKD, WSI-only predict), its memory ablations
    (``student_fixed_memory`` unless ``fixed_memory_ablation`` is off; ``student_gradient_memory``
    or ``student_ema_memory``) and the
    baselines named in ``config.baselines``. No stage depends on another (MoMKD is trained jointly),
    so every builder works with ``trained={}``."""
    out = [Stage("student", lambda info, trained: MoMKDModel(info, config))]
    if not config.fixed_memory:
        if config.fixed_memory_ablation:
            out.append(
                Stage(
                    "student_fixed_memory", lambda info, trained: MoMKDModel(info, config, "fixed")
                )
            )
        if config.compare_memory_updates:
            other = "gradient" if config.memory_update == "ema" else "ema"
            out.append(
                Stage(
                    f"student_{other}_memory",
                    lambda info, trained: MoMKDModel(info, config, other),
                )
            )
    builders = {"abmil": _build_abmil, "transmil": _build_transmil, "omics_only": _build_omics_only}
    out.extend(Stage(name, builders[name]) for name in config.baselines)
    return out
