"""AMKD: adaptive multimodal knowledge distillation for survival (Xu et al., Computational
Biomedicine 2026). No public code exists; SurvPath (Jaume et al., CVPR 2024) is its closest
relative and supplies the pathway tokenisation and the pathway/patch attention pattern.

Stages per fold: ``teacher`` (slides + omics), ``student`` (slides only, distilled from the
frozen teacher), ``student_no_kd`` (same student, Cox loss only), optionally
``linear_student`` / ``linear_student_no_kd`` (:mod:`.linear_student`, not the paper's), and the
``abmil`` and ``omics_only`` baselines. With ``teacher_targets = "cross_fit"`` a stage ``teacher_cf`` (not reported) trains
``inner_folds`` inner teachers and the student distils, case by case, from the one that did not
train on the case (:mod:`histokd_core.methods.crossfit`). See :mod:`.teacher`, :mod:`.student`
and :mod:`.losses` for the formulas.
"""

from __future__ import annotations

from dataclasses import dataclass

from histokd_core.bag import DataInfo
from histokd_core.errors import ConfigError
from histokd_core.methods.base import BagModel, Stage

TASKS = ("survival",)


@dataclass
class Config:
    """AMKD settings.

    Attributes
    ----------
    dim : token width ``d`` (256, SurvPath's; gives a ~0.9 M-parameter student for 1024-d
        features, near the paper's 803 K); heads, dim_head : attention heads (4 x 64).
    pathway_hidden : first SNN block width of the pathway encoder (256).
    dropout : dropout / alpha-dropout rate (0.25).
    alpha : weight of ``L_GE + L_KD + L_surv`` against ``L_ARR`` (0.75).
    kd_temperature : ``T`` of ``sigmoid(risk/T)`` in ``L_KD`` (2.0); ge_temperature : softmax
        temperature of ``L_GE`` (1.0); arr_eps : ``L_ARR`` epsilon of its logs (1e-6).
    ge_target : the teacher tensor ``L_GE`` distils: ``"patch"`` (default), its per-patch
        genomics-informed features ``p2g (n, d)`` mimicked by the student's projected patch tokens;
        ``"pathway"``, its gene->path tokens ``g2p (P, d)`` mimicked by the student's pathway-query
        tokens (the paper's two statements and why: :mod:`.losses`).
    distill_loss : ``"paper"`` (default: ``alpha * (L_GE + L_KD + L_surv) + (1 - alpha) * L_ARR``)
        or ``"risk"`` (not the paper's: ``L_surv + kd_weight * L_risk``, the student regressing the
        teacher's batch-standardised risks; :mod:`.losses` says why); kd_weight : its weight (1.0).
    linear_students : also train ``linear_student`` (a distilled linear student on the standardised
        mean patch feature: :mod:`.linear_student`; not in the paper) and its Cox-only ablation
        ``linear_student_no_kd`` (True: the default since it beat its ablation over 25 fresh
        folds, docs/benchmarks.md "Distillation"); linear_l2 : their ridge penalty on the weights (0.05);
        linear_lr, linear_epochs, linear_patience : their own training settings (2e-2, 100, 30),
        in place of the run's.
    linear_pathway_weight : weight ``lambda`` of the distilled linear student's pathway head
        objective ``lambda * sum_p MSE_p + linear_l2 * ||V||^2`` (1.0): a ridge regression of each
        training case's standardised pathway activity on the same standardised mean patch feature
        the risk reads, solved exactly in ``prepare`` (:mod:`.linear_student`); it gives the
        student slide-only pathway maps and scores and does not touch the risk weights. 0 = no
        head (no pathway maps); the ablation ``linear_student_no_kd`` never has one.
    teacher_targets : ``"in_sample"`` (default: the fold's teacher gives every training case's
        distillation targets) or ``"cross_fit"`` (each training case's targets come from one of
        ``inner_folds`` teachers trained without it; stage ``teacher_cf``).
    inner_folds : ``K`` of the cross-fit (4).
    max_train_patches : random patches per bag while training (SurvPath's 4096; None = all).
    chunk_size : query chunk of the memory-bounded attention (512: at 50 000 patches one
        chunk's scores take ``heads * 512 * 50 000 * 4`` bytes = 410 MB).
    patch_attention : the student's patch self-attention, ``"full"`` (the paper's, default) or
        ``"nystrom"`` (:func:`histokd_core.nn.attention.nystrom_attention`, ``O(n m)``; accuracy
        and cost against full in docs/benchmarks.md); landmarks : its ``m`` (256).
    teacher_patch_self_attention : add patch-to-patch self-attention to the teacher (off:
        SurvPath's pattern, no patch-to-patch attention).
    explain_top_pathways : pathways whose maps :meth:`explain` returns (20).
    """

    dim: int = 256
    heads: int = 4
    dim_head: int = 64
    pathway_hidden: int = 256
    dropout: float = 0.25
    alpha: float = 0.75
    kd_temperature: float = 2.0
    ge_temperature: float = 1.0
    arr_eps: float = 1e-6
    ge_target: str = "patch"
    distill_loss: str = "paper"
    kd_weight: float = 1.0
    linear_students: bool = True
    linear_l2: float = 0.05
    linear_lr: float = 2e-2
    linear_epochs: int = 100
    linear_patience: int = 30
    linear_pathway_weight: float = 1.0
    teacher_targets: str = "in_sample"
    inner_folds: int = 4
    max_train_patches: int | None = 4096
    chunk_size: int = 512
    patch_attention: str = "full"
    landmarks: int = 256
    teacher_patch_self_attention: bool = False
    explain_top_pathways: int = 20

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"amkd alpha must be in [0, 1], got {self.alpha}")
        if self.dim < 4 or self.heads < 1 or self.dim_head < 1 or self.pathway_hidden < 1:
            raise ConfigError(
                f"amkd dim/heads/dim_head/pathway_hidden must be positive (dim >= 4), got "
                f"{self.dim}/{self.heads}/{self.dim_head}/{self.pathway_hidden}"
            )
        if self.kd_temperature <= 0 or self.ge_temperature <= 0:
            raise ConfigError("amkd temperatures must be > 0")
        if self.ge_target not in ("patch", "pathway"):
            raise ConfigError(
                f"amkd ge_target must be 'patch' or 'pathway', got {self.ge_target!r}"
            )
        if (self.linear_l2 < 0 or self.linear_lr <= 0 or self.linear_epochs < 1
                or self.linear_pathway_weight < 0):
            raise ConfigError(
                "amkd linear_l2 must be >= 0, linear_lr > 0, linear_epochs >= 1 and "
                f"linear_pathway_weight >= 0, got {self.linear_l2} / {self.linear_lr} / "
                f"{self.linear_epochs} / {self.linear_pathway_weight}"
            )
        if self.distill_loss not in ("paper", "risk") or self.kd_weight < 0:
            raise ConfigError(
                "amkd distill_loss must be 'paper' or 'risk' and kd_weight >= 0, got "
                f"{self.distill_loss!r} / {self.kd_weight}"
            )
        if self.teacher_targets not in ("in_sample", "cross_fit") or self.inner_folds < 2:
            raise ConfigError(
                "amkd teacher_targets must be 'in_sample' or 'cross_fit' and inner_folds >= 2, "
                f"got {self.teacher_targets!r} / {self.inner_folds}"
            )
        if self.max_train_patches is not None and self.max_train_patches < 1:
            raise ConfigError(
                f"amkd max_train_patches must be >= 1 or None, got {self.max_train_patches}"
            )
        if self.chunk_size < 1:
            raise ConfigError(f"amkd chunk_size must be >= 1, got {self.chunk_size}")
        if self.patch_attention not in ("full", "nystrom") or self.landmarks < 1:
            raise ConfigError(
                f"amkd patch_attention must be 'full' or 'nystrom' and landmarks >= 1, got "
                f"{self.patch_attention!r} / {self.landmarks}"
            )


def stages(config: Config) -> list[Stage]:
    """``teacher``, [``teacher_cf``,] ``student`` (requires its teacher), ``student_no_kd``,
    [``linear_student`` (requires its teacher), ``linear_student_no_kd``,] ``abmil``,
    ``omics_only``."""

    def build_teacher(info: DataInfo, trained: dict[str, BagModel]) -> BagModel:
        from histokd_core.methods.amkd.teacher import AMKDTeacher

        return AMKDTeacher(info, config)

    source = "teacher_cf" if config.teacher_targets == "cross_fit" else "teacher"

    def build_teacher_cf(info: DataInfo, trained: dict[str, BagModel]) -> BagModel:
        from histokd_core.methods.amkd.teacher import AMKDTeacher
        from histokd_core.methods.crossfit import CrossFitTeachers

        return CrossFitTeachers([AMKDTeacher(info, config) for _ in range(config.inner_folds)])

    def build_student(info: DataInfo, trained: dict[str, BagModel]) -> BagModel:
        from histokd_core.methods.amkd.student import AMKDStudent

        return AMKDStudent(info, config, teacher=trained.get(source), distill=True)

    def build_student_no_kd(info: DataInfo, trained: dict[str, BagModel]) -> BagModel:
        from histokd_core.methods.amkd.student import AMKDStudent

        return AMKDStudent(info, config, teacher=None, distill=False)

    def build_abmil(info: DataInfo, trained: dict[str, BagModel]) -> BagModel:
        from histokd_core.methods.baselines import abmil

        return abmil.build(info)

    def build_omics_only(info: DataInfo, trained: dict[str, BagModel]) -> BagModel:
        from histokd_core.methods.baselines import snn

        return snn.build(info)

    def build_linear(info: DataInfo, trained: dict[str, BagModel]) -> BagModel:
        from histokd_core.methods.amkd.linear_student import LinearStudent

        return LinearStudent(info, config, teacher=trained.get(source), distill=True)

    def build_linear_no_kd(info: DataInfo, trained: dict[str, BagModel]) -> BagModel:
        from histokd_core.methods.amkd.linear_student import LinearStudent

        return LinearStudent(info, config, teacher=None, distill=False)

    linear = [
        Stage("linear_student", build_linear, requires=(source,)),
        Stage("linear_student_no_kd", build_linear_no_kd, seed_key="linear_student"),
    ] if config.linear_students else []
    cross_fit = (
        [Stage("teacher_cf", build_teacher_cf, report=False)] if source == "teacher_cf" else []
    )
    return [
        Stage("teacher", build_teacher),
        *cross_fit,
        Stage("student", build_student, requires=(source,)),
        Stage("student_no_kd", build_student_no_kd, seed_key="student"),
        *linear,
        Stage("abmil", build_abmil),
        Stage("omics_only", build_omics_only),
    ]
