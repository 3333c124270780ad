"""Disentangled tumour / TME subspace distillation (DML; DESIGN.md "Subspace").

Stages per fold: ``teacher`` (slides + tumour / TME genes, CGC + IGC), [``teacher_cf``, the
cross-fitted inner teachers with ``teacher_targets = "cross_fit"``,] ``student`` (slides only,
task warm-up then SKD from the frozen teacher), ``student_no_kd`` (task loss only), optionally
``linear_student`` / ``linear_student_no_kd`` (:mod:`.linear_student`, not the paper's) and the
baselines ``abmil`` and ``omics_only``.

Engine hooks: :meth:`SubspaceTeacher.after_backward` (CGC, after ``loss.backward()``, before the
optimiser step) and :meth:`SubspaceStudent.set_epoch` (0-based epoch, counts the warm-up).
With one magnification (``DataInfo.has_10x`` False) the IGC loss is off (logged once).
"""

from __future__ import annotations

from dataclasses import dataclass

from histokd_core.bag import DataInfo
from histokd_core.errors import ConfigError
from histokd_core.methods.base import BagModel, Stage
from histokd_core.methods.subspace.student import SubspaceStudent
from histokd_core.methods.subspace.teacher import SubspaceTeacher

TASKS = ("classification", "survival")

__all__ = ["TASKS", "Config", "SubspaceStudent", "SubspaceTeacher", "stages"]


@dataclass
class Config:
    """Subspace hyper-parameters (public-code values unless noted).

    Attributes
    ----------
    dim : token width (128); heads, dim_head : attention heads (8) and width per head
        (16 here for CPU; public 64).
    offset_groups (1; public 8), offset_kernel (6), offset_stride (4), offset_scale (4, in
        reference-grid spacings), n_points : reference grid side (12 -> 144 sampled points).
    dropout : patch-feature dropout; gene_dropout : SNN alpha-dropout.
    use_igc : DEV loss between 10x and 20x attention maps; dev_weight : its weight, 100 here.
        The public code uses 10 000 on unpadded 50 x 50 maps (patches tile-repeated to 2500);
        on coordinate grids with padding the diagonal variance is far larger (10x and 20x maps
        differ in tissue shape) and 10 000 swamps the task loss: on a planted-signal toy set the
        teacher reached test AUC 1.0 with 1 or 100, 0.78 with 1000 and 0.42 with 10 000.
    cgc : "clean" projection, "public" (double subtraction as in the public code) or "off".
    n_prototypes : DPC-KNN prototypes per subspace ``K`` (2); knn_k : density neighbours (5).
    warmup_epochs : task-only epochs before SKD (the public code trains a student-only run
        first and initialises the distillation from it).
    w_mse, w_kd : SKD weights (0.01, 0.01); temperature : KL temperature (2).
    baselines : "abmil", "omics_only" trained on the same folds.
    teacher_targets : ``"in_sample"`` (default) or ``"cross_fit"``: each training case's SKD
        targets from one of ``inner_folds`` (4) teachers that did not train on it (stage
        ``teacher_cf``, :mod:`histokd_core.methods.crossfit`).
    linear_students : also train ``linear_student`` (a distilled linear student on the
        standardised mean patch feature, :mod:`.linear_student`; not in the paper) and its
        task-only ablation ``linear_student_no_kd`` (False).
    linear_kd_loss : its distillation term, ``"logit"`` (regression on the teacher's standardised
        logits) or ``"kl"`` (the paper's temperature KL); linear_kd_weight : its weight (1.0);
        linear_l2 : ridge penalty on the weights (0.05); linear_lr, linear_epochs,
        linear_patience : the linear stages' own training settings (2e-2, 100, 30).
    """

    dim: int = 128
    heads: int = 8
    dim_head: int = 16
    offset_groups: int = 1
    offset_kernel: int = 6
    offset_stride: int = 4
    offset_scale: float = 4.0
    n_points: int = 12
    dropout: float = 0.1
    gene_dropout: float = 0.25
    use_igc: bool = True
    dev_weight: float = 100.0
    cgc: str = "clean"
    n_prototypes: int = 2
    knn_k: int = 5
    warmup_epochs: int = 5
    w_mse: float = 0.01
    w_kd: float = 0.01
    temperature: float = 2.0
    baselines: tuple[str, ...] = ("abmil", "omics_only")
    teacher_targets: str = "in_sample"
    inner_folds: int = 4
    linear_students: bool = False
    linear_kd_loss: str = "logit"
    linear_kd_weight: float = 1.0
    linear_l2: float = 0.05
    linear_lr: float = 2e-2
    linear_epochs: int = 100
    linear_patience: int = 30

    def __post_init__(self) -> None:
        if self.cgc not in ("clean", "public", "off"):
            raise ConfigError(f"subspace cgc must be 'clean', 'public' or 'off', got {self.cgc!r}")
        if self.dim % self.offset_groups:
            raise ConfigError(
                f"subspace dim {self.dim} must be divisible by offset_groups {self.offset_groups}"
            )
        if self.n_prototypes < 1 or self.knn_k < 1 or self.n_points < 1:
            raise ConfigError("subspace n_prototypes, knn_k and n_points must be >= 1")
        if self.teacher_targets not in ("in_sample", "cross_fit") or self.inner_folds < 2:
            raise ConfigError(
                "subspace teacher_targets must be 'in_sample' or 'cross_fit' and inner_folds >= 2, "
                f"got {self.teacher_targets!r} / {self.inner_folds}"
            )
        if self.linear_kd_loss not in ("logit", "kl") or self.linear_kd_weight < 0:
            raise ConfigError(
                "subspace linear_kd_loss must be 'logit' or 'kl' and linear_kd_weight >= 0, got "
                f"{self.linear_kd_loss!r} / {self.linear_kd_weight}"
            )
        if self.linear_l2 < 0 or self.linear_lr <= 0 or self.linear_epochs < 1:
            raise ConfigError(
                "subspace linear_l2 must be >= 0, linear_lr > 0 and linear_epochs >= 1, got "
                f"{self.linear_l2} / {self.linear_lr} / {self.linear_epochs}"
            )
        self.baselines = tuple(self.baselines)
        unknown = set(self.baselines) - {"abmil", "omics_only"}
        if unknown:
            raise ConfigError(
                f"subspace baselines: unknown {sorted(unknown)}; expected abmil, omics_only"
            )


def stages(config: Config) -> list[Stage]:
    """``teacher``, [``teacher_cf``,] ``student`` (requires its teacher), ``student_no_kd``,
    [``linear_student`` (requires its teacher), ``linear_student_no_kd``,] and the baselines."""

    def build_teacher(info: DataInfo, trained: dict[str, BagModel]) -> BagModel:
        return SubspaceTeacher(info, config)

    source = "teacher_cf" if config.teacher_targets == "cross_fit" else "teacher"

    def build_teacher_cf(info: DataInfo, trained: dict[str, BagModel]) -> BagModel:
        from histokd_core.methods.crossfit import CrossFitTeachers

        return CrossFitTeachers([SubspaceTeacher(info, config) for _ in range(config.inner_folds)])

    def build_student(info: DataInfo, trained: dict[str, BagModel]) -> BagModel:
        return SubspaceStudent(info, config, trained.get(source), distill=True)

    def build_no_kd(info: DataInfo, trained: dict[str, BagModel]) -> BagModel:
        return SubspaceStudent(info, config, None, distill=False)

    def build_linear(info: DataInfo, trained: dict[str, BagModel]) -> BagModel:
        from histokd_core.methods.subspace.linear_student import LinearSubspaceStudent

        return LinearSubspaceStudent(info, config, trained.get(source), distill=True)

    def build_linear_no_kd(info: DataInfo, trained: dict[str, BagModel]) -> BagModel:
        from histokd_core.methods.subspace.linear_student import LinearSubspaceStudent

        return LinearSubspaceStudent(info, config, None, distill=False)

    def build_abmil(info: DataInfo, trained: dict[str, BagModel]) -> BagModel:
        from histokd_core.methods.baselines import abmil

        return abmil.build(info, survival_loss="nll")

    def build_omics(info: DataInfo, trained: dict[str, BagModel]) -> BagModel:
        from histokd_core.methods.baselines import snn

        return snn.build(info, survival_loss="nll")

    out = [
        Stage("teacher", build_teacher),
        *([Stage("teacher_cf", build_teacher_cf, report=False)] if source == "teacher_cf" else []),
        Stage("student", build_student, requires=(source,)),
        Stage("student_no_kd", build_no_kd, seed_key="student"),
    ]
    if config.linear_students:
        out += [
            Stage("linear_student", build_linear, requires=(source,)),
            Stage("linear_student_no_kd", build_linear_no_kd, seed_key="linear_student"),
        ]
    builders = {"abmil": build_abmil, "omics_only": build_omics}
    out.extend(Stage(name, builders[name]) for name in config.baselines)
    return out
