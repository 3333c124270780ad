"""Cross-fitted teacher targets: a training case's targets never come from a teacher that saw it;
the swap diagnostic in metrics.json; resuming loads the inner teachers."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest
import torch
from test_amkd_model import SMALL, planted_bags, small_info

from histokd_core.errors import HistoKDError
from histokd_core.methods.amkd.student import AMKDStudent
from histokd_core.methods.crossfit import CrossFitTeachers, inner_folds
from histokd_core.train import TrainConfig, run_cv
from histokd_core.train.trainer import Trainer


class PlantedCohort:
    """One fold of planted AMKD bags (omics and slides carry the same latent risk)."""

    n_folds = 1

    def __init__(self) -> None:
        bags = planted_bags(44, 7)
        self.split = SimpleNamespace(
            train=bags[:28], val=bags[28:36], test=bags[36:], info=small_info()
        )

    def fold(self, i: int):
        return self.split


def test_inner_folds_are_balanced_and_stratified():
    bags = planted_bags(22, 1)
    folds = inner_folds(bags, 4, seed=3, task="survival")
    assert set(folds) == {b.case_id for b in bags} and set(folds.values()) == {0, 1, 2, 3}
    sizes = [sum(1 for f in folds.values() if f == k) for k in range(4)]
    assert max(sizes) - min(sizes) <= 1
    events = [sum(b.event for b in bags if folds[b.case_id] == k) for k in range(4)]
    assert max(events) - min(events) <= 1
    assert folds == inner_folds(bags, 4, seed=3, task="survival")  # deterministic
    with pytest.raises(HistoKDError, match="inner folds"):
        inner_folds(bags[:3], 4, seed=0, task="survival")


def test_for_case_refuses_cases_outside_the_training_set():
    info = small_info()
    from histokd_core.methods.amkd.teacher import AMKDTeacher

    cf = CrossFitTeachers([AMKDTeacher(info, SMALL), AMKDTeacher(info, SMALL)])
    cf.held_out = {"a": 1}
    assert cf.for_case("a") is cf.teachers[1]
    with pytest.raises(HistoKDError, match="not a training case"):
        cf.for_case("b")


def test_cross_fit_targets_never_come_from_a_teacher_that_saw_the_case(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    trained_on: dict[int, set[str]] = {}
    real_fit = Trainer.fit

    def recording_fit(self, model, train_bags, *args, **kw):
        trained_on[id(model)] = {b.case_id for b in train_bags}
        return real_fit(self, model, train_bags, *args, **kw)

    def recording(pick_teacher, sink: list[tuple[str, int]]):
        """``pick_teacher(..., bag)`` that also records (case, chosen teacher) in ``sink``."""
        def wrapped(*args):
            t = pick_teacher(*args)
            sink.append((args[-1].case_id, id(t)))
            return t
        return wrapped

    from histokd_core.methods.amkd import linear_student

    used: list[tuple[str, int]] = []
    used_linear: list[tuple[str, int]] = []
    monkeypatch.setattr(Trainer, "fit", recording_fit)
    monkeypatch.setattr(AMKDStudent, "teacher_for", recording(AMKDStudent.teacher_for, used))
    monkeypatch.setattr(linear_student, "case_teacher",
                        recording(linear_student.case_teacher, used_linear))
    config = dataclasses.asdict(SMALL) | {"teacher_targets": "cross_fit", "inner_folds": 4}
    train_config = TrainConfig(epochs=2, lr=1e-3, batch_size=8, device="cpu", seed=0)
    data = PlantedCohort()
    run_dir = tmp_path / "run"
    result = run_cv("amkd", config, data, run_dir, train_config, swap_diagnostic=True)

    train_ids = {b.case_id for b in data.split.train}
    assert used and {c for c, _ in used} == train_ids  # every training case got targets
    # the distilled linear student draws its targets from the same inner teachers
    assert {c for c, _ in used_linear} == train_ids
    assert {t for _, t in used_linear} == {t for _, t in used}
    for case, teacher in used + used_linear:
        assert teacher in trained_on, "targets from a teacher that was not trained as an inner one"
        assert case not in trained_on[teacher], f"{case}'s targets come from a teacher that saw it"
        # the inner teacher trained on every other training case outside its held-out fold
        assert len(trained_on[teacher]) >= len(train_ids) * 3 // 4 - 1
    assert len({t for _, t in used}) == 4
    for k in range(4):
        assert (run_dir / "fold_0" / f"teacher_cf_inner{k}.safetensors").is_file()
    assert "teacher_cf" not in result.metrics["folds"][0]["test"]  # not reported

    swap = result.metrics["folds"][0]["swap"]["teacher"]
    assert set(swap) == {"ge_patch", "ge_pathway", "kd"}
    assert all(0.0 <= v["expression"] <= 1.0 for v in swap.values())
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk["swap"]["teacher"]["ge_patch"]["expression_mean"] == pytest.approx(
        swap["ge_patch"]["expression"]
    )
    history = json.loads((run_dir / "history.json").read_text())
    assert {h["inner"] for h in history["fold_0"]["teacher_cf"]} == {0.0, 1.0, 2.0, 3.0}
    assert "train_arr_weight" in history["fold_0"]["student"][0]

    # resuming a finished run loads the inner teachers instead of training them again
    trained_on.clear()
    run_cv("amkd", config, data, run_dir, train_config, resume=True)
    assert not trained_on
