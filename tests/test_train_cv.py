"""run_cv end to end on a tiny planted cohort with a method made of the baselines."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from test_train import info_for, make_bags

from histokd_core.errors import Cancelled, CheckpointError, RunDirError
from histokd_core.train import (
    TrainConfig,
    load_model,
    predict_bags,
    run_cv,
)

METHOD = "baselines"


class TinyCohort:
    """CohortData-like: ``n_folds`` and ``fold(i)`` over planted bags (disjoint test sets)."""

    def __init__(self, n_folds: int = 3, per_fold: int = 16, task: str = "survival") -> None:
        self.n_folds = n_folds
        self.task = task
        self.parts = [make_bags(per_fold, 100 + i, task) for i in range(n_folds)]

    def fold(self, i: int):
        test = self.parts[i]
        rest = [b for j, p in enumerate(self.parts) if j != i for b in p]
        n_val = len(rest) // 5
        return SimpleNamespace(
            train=rest[n_val:], val=rest[:n_val], test=test, info=info_for(self.task)
        )


def cfg(**kw) -> TrainConfig:
    return TrainConfig(
        **{"epochs": 3, "lr": 2e-3, "batch_size": 8, "seed": 0, "device": "cpu", **kw}
    )


def test_run_cv_writes_run_and_metrics_schema(tmp_path):
    data = TinyCohort()
    run_dir = tmp_path / "run"
    result = run_cv(METHOD, {"models": ["abmil", "omics_only"]}, data, run_dir, cfg())
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m == result.metrics
    assert set(m) == {"method", "task", "folds", "summary", "data_warnings"}
    assert m["data_warnings"] == []  # what reading the data left out (none here)
    assert m["method"] == METHOD and m["task"] == "survival"
    assert [f["fold"] for f in m["folds"]] == [0, 1, 2]
    for f in m["folds"]:
        assert set(f) == {"fold", "test"}
        assert set(f["test"]) == {"abmil", "omics_only"}
        assert 0 <= f["test"]["abmil"]["c_index"] <= 1
    for model in ("abmil", "omics_only"):
        values = [f["test"][model]["c_index"] for f in m["folds"]]
        assert m["summary"][model]["c_index_mean"] == pytest.approx(np.mean(values))
        assert m["summary"][model]["c_index_std"] == pytest.approx(np.std(values))
    assert m["summary"]["omics_only"]["c_index_mean"] > 0.7  # the omics carry the planted risk
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["method"] == METHOD and config["train_config"]["epochs"] == 3
    history = json.loads((run_dir / "history.json").read_text())
    assert len(history["fold_2"]["abmil"]) == 3
    assert (run_dir / "km.png").read_bytes()[:4] == b"\x89PNG"
    assert (run_dir / "history.png").read_bytes()[:4] == b"\x89PNG"
    for i in range(3):
        assert (run_dir / f"fold_{i}" / "abmil.safetensors").is_file()
        assert (run_dir / f"fold_{i}" / "abmil.json").is_file()
        assert not (run_dir / f"fold_{i}" / "abmil.state.safetensors").exists()

    # load_model rebuilds through the method module and predicts what run_cv predicted
    model, meta = load_model(run_dir / "fold_1" / "abmil.safetensors")
    assert meta["stage"] == "abmil" and meta["fold"] == 1 and meta["encoder_id"] == "test-enc"
    preds = pd.read_csv(run_dir / "fold_1" / "predictions.csv")
    ours = predict_bags(model, data.fold(1).test).risk
    stored = preds[preds.model == "abmil"].risk.to_numpy()
    assert np.allclose(ours, stored, rtol=1e-4, atol=1e-5)
    with pytest.raises(CheckpointError, match="training state|not found"):
        load_model(run_dir / "fold_1" / "missing.safetensors")


def test_run_dir_refusal_and_resume(tmp_path):
    data = TinyCohort(n_folds=2, per_fold=10)
    run_dir = tmp_path / "run"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("user data")
    with pytest.raises(RunDirError, match="not a histokd run"):
        run_cv(METHOD, {"models": ["abmil"]}, data, tmp_path / "other", cfg(epochs=1))

    def cancel_in_fold_1() -> bool:
        return (run_dir / "fold_1").exists()

    with pytest.raises(Cancelled):
        run_cv(METHOD, {"models": ["abmil"]}, data, run_dir, cfg(epochs=2), cancel=cancel_in_fold_1)
    assert (run_dir / "fold_0" / "abmil.safetensors").is_file()
    assert not (run_dir / "metrics.json").exists()
    fold0 = (run_dir / "fold_0" / "abmil.safetensors").stat().st_mtime_ns

    with pytest.raises(RunDirError, match="another configuration"):
        run_cv(METHOD, {"models": ["abmil"]}, data, run_dir, cfg(epochs=3))
    with pytest.raises(RunDirError, match="--resume"):
        run_cv(METHOD, {"models": ["abmil"]}, data, run_dir, cfg(epochs=2))
    result = run_cv(METHOD, {"models": ["abmil"]}, data, run_dir, cfg(epochs=2), resume=True)
    assert (run_dir / "fold_0" / "abmil.safetensors").stat().st_mtime_ns == fold0  # not retrained
    assert [f["fold"] for f in result.metrics["folds"]] == [0, 1]
    # the resumed run gives what an uninterrupted run gives
    fresh = run_cv(METHOD, {"models": ["abmil"]}, data, tmp_path / "fresh", cfg(epochs=2))
    assert fresh.metrics == result.metrics


def test_run_cv_classification(tmp_path):
    data = TinyCohort(n_folds=2, per_fold=12, task="classification")
    result = run_cv(
        METHOD, {"models": ["omics_only"]}, data, tmp_path / "run", cfg(epochs=3, batch_size=4)
    )
    m = result.metrics
    assert m["task"] == "classification"
    assert set(m["folds"][0]["test"]["omics_only"]) == {"auc", "acc", "f1"}
    assert set(m["summary"]["omics_only"]) == {"auc_mean", "auc_std", "acc_mean", "f1_mean"}
    assert not (tmp_path / "run" / "km.png").exists()


def test_a_stage_trains_alike_whatever_stages_come_before_it(tmp_path):
    # each stage's random stream depends on (seed, fold, stream name) only, so adding a stage
    # before it (here abmil before omics_only) leaves its weights and its predictions unchanged
    data = TinyCohort(n_folds=2)
    alone = run_cv(METHOD, {"models": ["omics_only"]}, data, tmp_path / "a", cfg())
    after = run_cv(METHOD, {"models": ["abmil", "omics_only"]}, data, tmp_path / "b", cfg())
    for fa, fb in zip(alone.metrics["folds"], after.metrics["folds"]):
        assert fa["test"]["omics_only"] == fb["test"]["omics_only"]


def test_ablation_shares_the_random_stream_of_its_full_model():
    from histokd_core.methods.amkd import Config, stages
    from histokd_core.train.trainer import seed_everything, stage_seed

    by_name = {s.name: s for s in stages(Config(dim=8, heads=1, dim_head=4, pathway_hidden=8))}
    assert by_name["student_no_kd"].stream == by_name["student"].stream == "student"
    assert by_name["abmil"].stream == "abmil"
    assert stage_seed(0, 1, "student") != stage_seed(0, 1, "abmil")
    assert stage_seed(0, 1, "student") != stage_seed(0, 2, "student")
    from histokd_core.bag import DataInfo

    info = DataInfo(task="survival", feat_dim=8, n_genes=12,
                    pathways=[[0, 1, 2], [3, 4, 5, 6], [7, 8, 9, 10, 11]])
    models = []
    for name in ("student", "student_no_kd"):
        seed_everything(stage_seed(0, 1, by_name[name].stream))
        models.append(by_name[name].build(info, {"teacher": by_name["teacher"].build(info, {})}))
    own = [{k: v for k, v in m.state_dict().items() if not k.startswith("teacher.")}
           for m in models]
    assert own[0].keys() == own[1].keys()
    assert all(torch.equal(own[0][k], own[1][k]) for k in own[0])


def test_a_model_may_train_with_its_own_settings(tmp_path, monkeypatch):
    # BagModel.train_config: run_cv trains each stage with the settings its model asks for
    import dataclasses

    from histokd_core.methods.baselines import abmil

    monkeypatch.setattr(abmil.ABMIL, "train_config",
                        lambda self, config: dataclasses.replace(config, epochs=1), raising=False)
    run_cv(METHOD, {"models": ["abmil", "omics_only"]}, TinyCohort(n_folds=2), tmp_path / "r",
           cfg(epochs=3, patience=10))
    history = json.loads((tmp_path / "r" / "history.json").read_text())["fold_0"]
    assert len(history["abmil"]) == 1 and len(history["omics_only"]) == 3
