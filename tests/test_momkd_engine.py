"""MoMKD through the engine: run_cv on the synthetic feature cohort's binary label."""

from __future__ import annotations

import json

import pytest
import torch

from histokd_core.cohort import validate_cohort
from histokd_core.dataset import CohortData
from histokd_core.methods.momkd import Config
from histokd_core.methods.momkd.diagnostics import plot_memory_diagnostics
from histokd_core.synthetic.cohort import make_feature_cohort
from histokd_core.train import TrainConfig, load_model, run_cv


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_run_cv_reports_student_and_ablation_and_memory_diagnostics(tmp_path):
    fc = make_feature_cohort(None, n_cases=30, n_patches=40, seed=0)
    cohort = validate_cohort(fc.cohort, "classification", "label", where="synthetic cohort")
    data = CohortData(cohort, fc.features, omics=fc.expression, gene_sets=fc.gene_sets,
                      task="classification", n_folds=5, seed=0)
    config = Config(n_components=8, wsi_dim=64, shared_dim=32, omics_dim=64,
                    compare_memory_updates=False, baselines=())
    result = run_cv("momkd", config, data, tmp_path / "run",
                    train_config=TrainConfig(epochs=3, lr=2e-4, grad_clip=16.0), folds=[0])
    test = result.metrics["folds"][0]["test"]
    assert set(test) == {"student", "student_fixed_memory"}
    assert set(test["student"]) >= {"auc", "acc", "f1"}
    history = json.loads((tmp_path / "run" / "history.json").read_text())["fold_0"]["student"]
    assert len(history) == 3
    # the memory stays in use on the synthetic cohort (no collapse onto a few components)
    assert all(epoch["memory_active_ratio"] > 0.5 for epoch in history)
    assert all(1.0 <= epoch["memory_perplexity"] <= 16 for epoch in history)
    png = plot_memory_diagnostics({"fold_0 student": history}, tmp_path / "memory.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the checkpoint rebuilds with trained={} and predicts from slide features only
    model, _ = load_model(tmp_path / "run" / "fold_0" / "student.safetensors")
    bag = data.fold(0).test[0]
    bag.omics = None
    with torch.no_grad():
        pred = model.predict(bag)
    assert pred.logits.shape == (2,) and pred.attention.shape == (bag.feats.shape[0],)
