"""Training engine: learning on planted signal, checkpoints, resume, cancellation, callbacks."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch

from histokd_core.bag import Bag, DataInfo
from histokd_core.errors import Cancelled, CheckpointError, ConfigError
from histokd_core.methods.baselines import abmil, snn
from histokd_core.train import (
    Callback,
    TrainConfig,
    Trainer,
    classification_metrics,
    predict_bags,
    read_checkpoint,
    save_checkpoint,
    score,
)
from histokd_core.train.checkpoint import load_model_state, model_state

FEAT_DIM = 12
N_GENES = 6


def make_bags(n: int, seed: int = 0, task: str = "survival") -> list[Bag]:
    """Planted-signal bags: a latent risk ``z`` sets the share of 'tumour' patches (feature 0
    shifted by +3) and the first omics genes; survival times are exponential with hazard
    ``exp(1.5 z)``, the binary label is ``z > 0``."""
    rng = np.random.default_rng(seed)
    bags = []
    for i in range(n):
        z = rng.normal()
        n_patches = int(rng.integers(12, 30))
        feats = rng.normal(size=(n_patches, FEAT_DIM)).astype(np.float32)
        frac = 1 / (1 + math.exp(-2 * z))
        tumour = rng.random(n_patches) < frac
        feats[tumour, 0] += 3.0
        omics = rng.normal(scale=0.3, size=N_GENES).astype(np.float32)
        omics[:3] += z
        time = float(rng.exponential(10 * math.exp(-1.5 * z)))
        event = int(rng.random() < 0.8)
        coords = np.stack([np.arange(n_patches) * 256, np.zeros(n_patches)], 1).astype(np.int64)
        bags.append(
            Bag(
                case_id=f"case{seed}_{i}",
                feats=torch.from_numpy(feats),
                coords=torch.from_numpy(coords),
                omics=torch.from_numpy(omics),
                time=time,
                event=event,
                label=int(z > 0) if task == "classification" else -1,
            )
        )
    return bags


def info_for(task: str = "survival") -> DataInfo:
    return DataInfo(
        task=task, feat_dim=FEAT_DIM, n_genes=N_GENES, n_classes=2, encoder_id="test-enc"
    )


def fast_config(**kw) -> TrainConfig:
    base = {"epochs": 6, "lr": 2e-3, "batch_size": 16, "patience": 20, "seed": 0, "device": "cpu"}
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("builder", [abmil.build, snn.build], ids=["abmil", "snn"])
def test_survival_models_learn_planted_signal(builder):
    torch.manual_seed(0)
    train, val, test = make_bags(96, 1), make_bags(24, 2), make_bags(60, 3)
    model = builder(info_for())
    result = Trainer().fit(model, train, val, fast_config(epochs=12))
    assert len(result.history) == 12 and "val_c_index" in result.history[0]
    c = score(predict_bags(model, test), "survival")["c_index"]
    assert c > 0.7, c


def test_abmil_classification_learns_and_metrics():
    train, val, test = (make_bags(n, s, "classification") for n, s in ((48, 4), (16, 5), (40, 6)))
    model = abmil.build(info_for("classification"))
    Trainer().fit(model, train, val, fast_config(epochs=4, batch_size=None, grad_accum=4))
    metrics = score(predict_bags(model, test), "classification")
    assert metrics["auc"] > 0.8, metrics
    assert set(metrics) == {"auc", "acc", "f1"}


def test_gradient_accumulation_equals_one_large_batch():
    bags = make_bags(4, 20, "classification")
    models = []
    for bsz, accum in ((4, 1), (1, 4)):
        torch.manual_seed(0)
        model = abmil.ABMIL(FEAT_DIM, 2, task="classification", dropout=0.0)
        Trainer().fit(model, bags, [], fast_config(epochs=1, batch_size=bsz, grad_accum=accum))
        models.append(model)
    one, accumulated = (dict(m.named_parameters()) for m in models)
    assert all(torch.allclose(one[k], accumulated[k], atol=1e-6) for k in one)
    torch.manual_seed(0)
    fresh = abmil.ABMIL(FEAT_DIM, 2, task="classification", dropout=0.0)
    assert not torch.allclose(fresh.head.weight, models[0].head.weight)


def test_classification_metrics_match_sklearn_by_hand():
    labels = np.array([0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.35, 0.65], [0.2, 0.8], [0.7, 0.3]])
    m = classification_metrics(labels, probs)
    # positive scores: negatives 0.1, 0.6; positives 0.65, 0.8, 0.3 -> 5 of 6 pairs ordered
    assert m["auc"] == pytest.approx(5 / 6)
    assert m["acc"] == pytest.approx(3 / 5)
    # class 0: tp 1 fp 1 fn 1 -> f1 0.5; class 1: tp 2 fp 1 fn 1 -> f1 2/3
    assert m["f1"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert math.isnan(classification_metrics([1, 1], [[0.2, 0.8], [0.3, 0.7]])["auc"])


def test_checkpoint_round_trip_and_tampering(tmp_path):
    model = abmil.build(info_for())
    Trainer().fit(model, make_bags(20, 7), [], fast_config(epochs=1))
    path = save_checkpoint(
        tmp_path / "m.safetensors", model_state(model), {"kind": "model", "stage": "abmil"}
    )
    tensors, meta = read_checkpoint(path)
    assert meta["stage"] == "abmil" and meta["package_version"]
    assert (tmp_path / "m.json").is_file()
    clone = abmil.build(info_for())
    load_model_state(clone, tensors, "test")
    clone.eval()
    bags = make_bags(5, 8)
    assert np.allclose(predict_bags(model, bags).risk, predict_bags(clone, bags).risk)
    # garbage
    (tmp_path / "garbage.safetensors").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="garbage.safetensors"):
        read_checkpoint(tmp_path / "garbage.safetensors")
    # one weight changed in place, header intact
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    (tmp_path / "tampered.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="digest"):
        read_checkpoint(tmp_path / "tampered.safetensors")
    # weights of another model
    with pytest.raises(CheckpointError, match="do not match"):
        load_model_state(snn.build(info_for()), tensors, "test")
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "missing.safetensors")


class StopAfter(Callback):
    """Sets an event after ``n`` steps and records every step it saw."""

    def __init__(self, event: threading.Event, n: int) -> None:
        self.event, self.n, self.steps, self.epochs = event, n, [], []

    def on_step(self, progress, logs):
        self.steps.append((progress.epoch, progress.step, logs["loss"]))
        if len(self.steps) == self.n:
            self.event.set()

    def on_epoch_end(self, progress, metrics):
        self.epochs.append(progress.epoch)


def test_cancellation_stops_within_one_step_and_resume_matches(tmp_path):
    train, val = make_bags(48, 9), make_bags(16, 10)
    cfg = fast_config(epochs=4, batch_size=8)  # 6 steps per epoch
    torch.manual_seed(0)
    reference = abmil.build(info_for())
    ref_result = Trainer().fit(reference, train, val, cfg)

    event = threading.Event()
    stopper = StopAfter(event, 14)  # in epoch 3, step 2
    state = tmp_path / "abmil.state.safetensors"
    torch.manual_seed(0)
    interrupted = abmil.build(info_for())
    with pytest.raises(Cancelled):
        Trainer().fit(interrupted, train, val, cfg, [stopper], cancel=event, state_path=state)
    assert len(stopper.steps) == 14  # no step ran after the cancel request
    assert stopper.epochs == [1, 2]
    _, meta = read_checkpoint(state)
    assert meta["epoch"] == 2 and meta["kind"] == "train_state"

    torch.manual_seed(123)  # a fresh model; its weights must come from the state file
    resumed = abmil.build(info_for())
    result = Trainer().fit(resumed, train, val, cfg, state_path=state)
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert result.best_epoch == ref_result.best_epoch
    bags = make_bags(6, 11)
    assert np.allclose(
        predict_bags(resumed, bags).risk, predict_bags(reference, bags).risk, atol=1e-5
    )


def test_callable_cancel_and_early_stopping():
    with pytest.raises(Cancelled):
        Trainer().fit(
            abmil.build(info_for()), make_bags(10, 12), [], fast_config(), cancel=lambda: True
        )
    model = snn.build(info_for())
    # validation set without events: C-index undefined -> monitored on the training loss
    val = make_bags(8, 13)
    for b in val:
        b.event = 0
    result = Trainer().fit(
        model, make_bags(32, 14), val, fast_config(epochs=30, patience=2, lr=1e-9)
    )
    assert result.epochs_run < 30 and result.stopped_early


def test_frozen_teacher_is_excluded_from_checkpoint_and_optimizer():
    teacher = snn.build(info_for())
    teacher.requires_grad_(False)
    student = abmil.build(info_for())
    student.teacher = teacher  # a student holding its frozen teacher
    state = model_state(student)
    assert not any(k.startswith("teacher.") for k in state)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    Trainer().fit(student, make_bags(16, 15), [], fast_config(epochs=1))
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not teacher.training or not student.training


def test_bad_train_config_is_a_config_error():
    with pytest.raises(ConfigError, match="epochs"):
        TrainConfig(epochs=0)


def test_fit_in_worker_thread_cancelled_from_another_thread():
    started, cancel, caught = threading.Event(), threading.Event(), []

    class Signal(Callback):
        def on_step(self, progress, logs):
            started.set()

    def work():
        try:
            Trainer().fit(
                abmil.build(info_for()),
                make_bags(32, 21),
                [],
                fast_config(epochs=1000, batch_size=4),
                [Signal()],
                cancel=cancel,
            )
        except Cancelled as exc:
            caught.append(exc)

    worker = threading.Thread(target=work)
    worker.start()
    assert started.wait(60)
    cancel.set()
    worker.join(60)
    assert not worker.is_alive() and len(caught) == 1


def test_task_loss_hand_values():
    from histokd_core.train.evaluation import Outputs, task_loss

    # classification: -mean(log p(label)) over known labels: -(ln 0.8 + ln 0.25) / 2
    out = Outputs(
        ["a", "b", "c"], np.zeros(3), np.zeros(3, np.int64), np.array([0, 1, -1]),
        probs=np.array([[0.8, 0.2], [0.75, 0.25], [0.5, 0.5]]),
    )
    assert task_loss(out, "classification") == pytest.approx(-(math.log(0.8) + math.log(0.25)) / 2)
    # Cox: times 1, 2, 3, all events, risks (0, 0, 0): -[ln(1/3) + ln(1/2) + ln 1] / 3
    out = Outputs(["a", "b", "c"], np.array([1.0, 2, 3]), np.ones(3, np.int64),
                  np.full(3, -1), risk=np.zeros(3))
    assert task_loss(out, "survival") == pytest.approx(math.log(6) / 3)
    out.event[:] = 0
    assert math.isnan(task_loss(out, "survival"))
    # discrete hazards: one bin, logit 0 -> hazard 1/2; an event in bin 0: -ln(1/2)
    out = Outputs(["a"], np.array([1.0]), np.ones(1, np.int64), np.full(1, -1),
                  risk=np.zeros(1),
                  extra={"logits": np.zeros((1, 1)), "bin": np.zeros(1, np.int64)})
    assert task_loss(out, "survival") == pytest.approx(math.log(2))


def test_model_selection_follows_the_validation_loss_or_metric():
    train, val = make_bags(48, 21), make_bags(24, 22)
    with pytest.raises(ConfigError, match="monitor"):
        TrainConfig(monitor="auc")
    for monitor, key in (("loss", "val_loss"), ("metric", "val_c_index")):
        torch.manual_seed(0)
        result = Trainer().fit(abmil.build(info_for()), train, val, fast_config(monitor=monitor))
        assert result.monitor == key
        values = [h[key] for h in result.history]
        best = min(values) if monitor == "loss" else max(values)
        assert result.history[result.best_epoch - 1][key] == best
        assert all("val_loss" in h and "val_c_index" in h for h in result.history)
