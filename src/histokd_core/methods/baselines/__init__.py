"""Baselines trained on the same folds as the distillation methods.

``abmil`` (gated-attention MIL, slides only), ``snn`` (self-normalising network, omics only) and
``transmil`` (TransMIL-style, slides only). Each module has ``build(info, ...) -> BagModel``.
This package is also a method in its own right (``Config``, ``TASKS``, ``stages``): the two
baselines ABMIL and omics-only SNN, for any task, usable with ``histokd_core.train.run_cv``.
"""

from __future__ import annotations

from dataclasses import dataclass

from histokd_core.bag import DataInfo
from histokd_core.errors import ConfigError
from histokd_core.methods.base import BagModel, Stage

TASKS = ("survival", "classification")


@dataclass
class Config:
    """Baselines to train. ``survival_loss`` is "cox" (partial likelihood, risk head) or "nll"
    (discrete-time hazards over the cohort's bins); dropout applies to both models."""

    models: tuple[str, ...] = ("abmil", "omics_only")
    survival_loss: str = "cox"
    dropout: float = 0.25

    def __post_init__(self) -> None:
        self.models = tuple(self.models)
        unknown = set(self.models) - {"abmil", "omics_only"}
        if unknown:
            raise ConfigError(
                f"baselines models: unknown {sorted(unknown)}; expected abmil, omics_only"
            )
        if self.survival_loss not in ("cox", "nll"):
            raise ConfigError(
                f"baselines survival_loss must be 'cox' or 'nll', got {self.survival_loss!r}"
            )


def stages(config: Config) -> list[Stage]:
    """One stage per baseline named in ``config.models`` (no dependencies between them)."""

    def build_abmil(info: DataInfo, trained: dict[str, BagModel]) -> BagModel:
        from histokd_core.methods.baselines import abmil

        return abmil.build(info, survival_loss=config.survival_loss, dropout=config.dropout)

    def build_snn(info: DataInfo, trained: dict[str, BagModel]) -> BagModel:
        from histokd_core.methods.baselines import snn

        return snn.build(info, survival_loss=config.survival_loss, dropout=config.dropout)

    builders = {"abmil": build_abmil, "omics_only": build_snn}
    return [Stage(name, builders[name]) for name in config.models]
