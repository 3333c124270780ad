"""Cross-fitted teacher targets: each training case's distillation targets come from a teacher
that did not train on it.

A teacher trained on the student's training cases gives in-sample targets on them: the teacher's
training C-index is far above its test C-index, and a student that imitates these targets learns
memorised expression signal rather than what the teacher can generalise. With cross-fitting the
fold's training cases are split into ``K`` inner folds (stratified by event or label); inner teacher
``k`` trains on the other ``K - 1`` inner folds (early stopping on the fold's validation cases) and
gives the targets of the cases of inner fold ``k`` only.

:class:`CrossFitTeachers` is the stage model that holds the ``K`` inner teachers; the
cross-validation runner (:func:`histokd_core.train.cv.run_cv`) recognises it, trains each inner
teacher (resumably, ``<stage>_inner<k>.safetensors``) and sets :attr:`CrossFitTeachers.held_out`.
Students ask :meth:`CrossFitTeachers.for_case` for the teacher of a case.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from histokd_core.bag import Bag
from histokd_core.errors import ConfigError, HistoKDError
from histokd_core.methods.base import BagModel, Prediction


def inner_folds(bags: Sequence[Bag], k: int, seed: int, task: str) -> dict[str, int]:
    """``case_id -> inner fold`` in ``0 .. k-1``: cases shuffled (``seed``), ordered by event
    (survival) or label (classification) and dealt round-robin, so each inner fold has about the
    same share of events / of each class. Needs at least ``k`` cases."""
    if k < 2:
        raise ConfigError(f"cross-fit needs at least 2 inner folds, got {k}")
    if len(bags) < k:
        raise HistoKDError(f"cross-fit: {len(bags)} training cases for {k} inner folds")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(bags))
    strata = [int(bags[i].event if task == "survival" else bags[i].label) for i in order]
    order = order[np.argsort(strata, kind="stable")]
    return {bags[int(i)].case_id: pos % k for pos, i in enumerate(order)}


class CrossFitTeachers(BagModel):
    """``K`` inner teachers of one outer fold and which inner fold each training case is in.

    Parameters
    ----------
    teachers : ``K`` freshly built teachers of one kind (trained by the CV runner).
    """

    needs_omics = True

    def __init__(self, teachers: Sequence[BagModel]) -> None:
        super().__init__()
        if len(teachers) < 2:
            raise ConfigError(f"cross-fit needs at least 2 inner teachers, got {len(teachers)}")
        self.teachers = nn.ModuleList(teachers)
        self.task = teachers[0].task
        #: case_id -> index of the inner teacher that did NOT train on that case
        self.held_out: dict[str, int] = {}

    @property
    def k(self) -> int:
        """Number of inner teachers."""
        return len(self.teachers)

    def for_case(self, case_id: str) -> BagModel:
        """The inner teacher that never saw ``case_id`` (a training case of the outer fold)."""
        try:
            return self.teachers[self.held_out[case_id]]
        except KeyError:
            raise HistoKDError(
                f"cross-fit teachers: case {case_id} is not a training case of this fold "
                "(no inner teacher was held out for it)"
            ) from None

    def outputs(self, bags: Sequence[Bag]) -> dict[str, dict[str, torch.Tensor]]:
        """Batched ``outputs`` (the subspace teacher's interface), each case from its own inner
        teacher: magnification -> name -> ``(B, ...)``."""
        per_bag = [self.for_case(b.case_id).outputs([b]) for b in bags]
        return {
            m: {name: torch.cat([o[m][name] for o in per_bag]) for name in per_bag[0][m]}
            for m in per_bag[0]
        }

    def loss(self, bags: Sequence[Bag]) -> dict[str, torch.Tensor]:
        raise HistoKDError("cross-fit teachers are trained one by one by the CV runner")

    def predict(self, bag: Bag) -> Prediction:
        """The first inner teacher's prediction (the stage is never reported or exported)."""
        return self.teachers[0].predict(bag)


def case_teacher(teacher: BagModel, bag: Bag) -> BagModel:
    """The teacher whose outputs are ``bag``'s distillation targets: ``teacher`` itself, or with
    cross-fitted targets (:class:`CrossFitTeachers`) the inner teacher that did not train on the
    case."""
    return teacher.for_case(bag.case_id) if isinstance(teacher, CrossFitTeachers) else teacher
