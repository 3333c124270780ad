"""Subspace method: stages, omics-free inference, explanations, CGC hook, planted-signal
learning."""

import logging

import numpy as np
import pytest
import torch

from histokd_core.bag import Bag, DataInfo
from histokd_core.errors import ConfigError, DataError
from histokd_core.methods.registry import get_method
from histokd_core.methods.subspace import Config, SubspaceStudent, SubspaceTeacher, stages

D, G = 16, 12


def make_bag(
    i: int, rng: np.random.Generator, label: int, has_10x: bool = True, signal: float = 0.0
) -> Bag:
    side = int(rng.integers(5, 9))
    cells = np.array([(x, y) for x in range(side) for y in range(side) if rng.random() < 0.8])
    n = len(cells)
    feats = rng.normal(0, 1, (n, D))
    if signal:
        planted = rng.random(n) < 0.3
        feats[planted, 0] += signal * (1 if label else -1)
    omics = rng.normal(0, 1, G)
    omics[:3] += 2.0 * (1 if label else -1)
    bag = Bag(
        f"case{i}", torch.tensor(feats, dtype=torch.float32), torch.tensor(cells * 512 + 100),
        patch_size=512, omics=torch.tensor(omics, dtype=torch.float32), label=label, bin=label * 3,
        event=1,
    )
    if has_10x:
        c10 = np.unique(cells // 2, axis=0)
        f10 = rng.normal(0, 1, (len(c10), D))
        if signal:
            f10[:, 0] += 0.5 * signal * (1 if label else -1)
        bag.feats_10x = torch.tensor(f10, dtype=torch.float32)
        bag.coords_10x = torch.tensor(c10 * 1024)
    return bag


def info(task="classification", has_10x=True):
    return DataInfo(
        task=task, feat_dim=D, n_genes=G, tumor_genes=[0, 1, 2, 3, 4], tme_genes=list(range(5, G)),
        n_classes=2 if task == "classification" else 4, has_10x=has_10x,
    )


CFG = Config(
    dim=16, heads=2, dim_head=8, n_points=4, offset_kernel=3, offset_stride=1, warmup_epochs=1
)


def test_registry_and_stages():
    mod = get_method("subspace")
    assert mod.TASKS == ("classification", "survival")
    names = [s.name for s in stages(Config())]
    assert names == ["teacher", "student", "student_no_kd", "abmil", "omics_only"]
    student = [s for s in stages(Config()) if s.name == "student"][0]
    assert student.requires == ("teacher",)
    for s in stages(CFG):
        assert s.build(info(), {}) is not None
    with pytest.raises(ConfigError, match="cgc"):
        Config(cgc="twice")


@pytest.mark.parametrize("task", ["classification", "survival"])
def test_student_clusters_and_prototype_patches(task):
    """Omics-free inference, shapes and the checkpoint round trip are checked for every model in
    tests/test_model_contract.py; here: the student's tumour/TME clusters and prototypes."""
    rng = np.random.default_rng(0)
    student = SubspaceStudent(info(task), CFG)
    student.eval()
    bag = make_bag(0, rng, 1)
    pred = student.predict(bag)
    n = bag.feats.shape[0]
    expl = student.explain(bag)
    assert set(expl.clusters) == {"tumor", "tme"}
    for ids in expl.clusters.values():
        assert ids.shape == (n,) and ids.min() >= 0 and ids.max() < CFG.n_prototypes
    assert expl.top_patches["tumor centres"].shape == (CFG.n_prototypes,)
    with torch.no_grad():
        weight = student.forward_bag(bag)["20x"].tumor.weight.numpy()
    for c in range(CFG.n_prototypes):
        top = expl.top_patches[f"tumor prototype {c}"]
        members = np.flatnonzero(expl.clusters["tumor"] == c)
        assert 1 <= len(top) <= 3 and set(top) <= set(members)
        assert weight[top].min() >= np.sort(weight[members])[::-1][len(top) - 1]
    if task == "classification":
        assert 0.0 <= expl.probability <= 1.0
    else:
        assert pred.risk.dim() == 0 and expl.risk is not None


def test_teacher_needs_gene_subsets():
    with pytest.raises(DataError, match="tumor_genes"):
        SubspaceTeacher(DataInfo(task="classification", feat_dim=D, n_genes=G), CFG)


def test_teacher_loss_dev_and_cgc_hook():
    rng = np.random.default_rng(2)
    teacher = SubspaceTeacher(info(), CFG)
    bags = [make_bag(i, rng, i % 2) for i in range(4)]
    out = teacher.loss(bags)
    assert "dev" in out and torch.isfinite(out["loss"])
    out["loss"].backward()
    head = teacher.branches["20x"].head
    before = head.weight.grad.clone()
    teacher.after_backward(bags)
    d = CFG.dim
    after = head.weight.grad
    cos = torch.nn.functional.cosine_similarity(before[:, :d], before[:, d:], dim=1)
    for r in range(after.shape[0]):
        if cos[r] >= 0:
            torch.testing.assert_close(after[r], before[r])
        else:
            assert abs(float(after[r, :d] @ after[r, d:])) < 1e-5 * float(before[r].norm() ** 2 + 1)


def test_single_magnification_turns_igc_off(caplog, monkeypatch):
    from histokd_core.methods.subspace import teacher as teacher_module

    monkeypatch.setattr(teacher_module, "_said_igc_off", False)
    rng = np.random.default_rng(3)
    with caplog.at_level(logging.INFO):
        teacher = SubspaceTeacher(info(has_10x=False), CFG)
    assert "IGC" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        SubspaceTeacher(info(has_10x=False), CFG)
    assert "IGC" not in caplog.text
    bags = [make_bag(i, rng, i % 2, has_10x=False) for i in range(3)]
    out = teacher.loss(bags)
    assert "dev" not in out
    student = SubspaceStudent(info(has_10x=False), CFG, teacher.eval())
    student.set_epoch(1)
    assert {"mse", "kl"} <= set(student.loss(bags))


def test_student_warmup_then_skd():
    rng = np.random.default_rng(4)
    teacher = SubspaceTeacher(info(), CFG).eval()
    student = SubspaceStudent(info(), CFG, teacher)
    bags = [make_bag(i, rng, i % 2) for i in range(2)]
    student.set_epoch(0)
    assert set(student.loss(bags)) == {"loss", "task"}
    student.set_epoch(1)
    out = student.loss(bags)
    assert {"mse", "kl"} <= set(out)
    out["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert not any(k.startswith("_teacher") for k in student.state_dict())


def _auc(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    return np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])


def test_student_learns_planted_signal(one_thread):
    torch.manual_seed(0)
    rng = np.random.default_rng(5)
    train = [make_bag(i, rng, i % 2, signal=2.0) for i in range(16)]
    test = [make_bag(100 + i, rng, i % 2, signal=2.0) for i in range(16)]
    cfg = Config(dim=16, heads=2, dim_head=8, n_points=4, dropout=0.0)
    model = SubspaceStudent(info(), cfg, distill=False)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for epoch in range(4):
        model.train()
        model.set_epoch(epoch)
        for s in range(0, len(train), 4):
            loss = model.loss(train[s : s + 4])["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        scores = [float(torch.softmax(model.predict(b).logits, -1)[1]) for b in test]
    assert _auc(scores, [b.label for b in test]) > 0.8


def test_teacher_learns_planted_survival_signal(one_thread):
    """Survival: the omics tumour genes set the bin (bin 0 = early death); held-out C-index."""
    from histokd_core.survival import c_index

    torch.manual_seed(1)
    rng = np.random.default_rng(6)

    def surv_bag(i):
        bag = make_bag(i, rng, i % 2, has_10x=True, signal=1.0)
        bag.bin = 0 if bag.label == 1 else 3
        bag.time = 3.0 if bag.label == 1 else 30.0  # tied events within a group: not comparable
        return bag

    train = [surv_bag(i) for i in range(12)]
    test = [surv_bag(100 + i) for i in range(12)]
    cfg = Config(dim=16, heads=2, dim_head=8, n_points=4, dropout=0.0, gene_dropout=0.0)
    model = SubspaceTeacher(info("survival"), cfg)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(4):
        model.train()
        for s in range(0, len(train), 4):
            batch = train[s : s + 4]
            loss = model.loss(batch)["loss"]
            opt.zero_grad()
            loss.backward()
            model.after_backward(batch)
            opt.step()
    model.eval()
    with torch.no_grad():
        risk = [float(model.predict(b).risk) for b in test]
    assert c_index([b.time for b in test], risk, [1] * len(test)) > 0.8


def test_run_cv_and_checkpoint_reload_without_omics(tmp_path, one_thread):
    """Teacher -> student through the engine; the reloaded student predicts with no omics."""
    from types import SimpleNamespace

    import pandas as pd

    from histokd_core.train import TrainConfig, load_model, predict_bags, run_cv

    rng = np.random.default_rng(7)
    parts = [[make_bag(10 * f + i, rng, i % 2, signal=2.0) for i in range(6)] for f in range(2)]

    class Tiny:
        n_folds = 2

        def fold(self, i):
            rest = parts[1 - i]
            return SimpleNamespace(train=rest[2:], val=rest[:2], test=parts[i], info=info())

    config = {"dim": 16, "heads": 2, "dim_head": 8, "n_points": 4, "warmup_epochs": 1,
              "baselines": []}
    train = TrainConfig(epochs=2, batch_size=2, lr=1e-3, device="cpu", seed=0)
    result = run_cv("subspace", config, Tiny(), tmp_path / "run", train, folds=[0])
    assert set(result.metrics["summary"]) == {"teacher", "student", "student_no_kd"}
    model, meta = load_model(tmp_path / "run" / "fold_0" / "student.safetensors")
    assert meta["stage"] == "student" and not model.needs_omics
    bags = [Bag(**{**b.__dict__, "omics": None}) for b in parts[0]]
    preds = pd.read_csv(tmp_path / "run" / "fold_0" / "predictions.csv")
    stored = preds[preds.model == "student"]
    ours = predict_bags(model, bags).probs[:, 1]
    np.testing.assert_allclose(ours, stored.prob_positive.to_numpy(), rtol=1e-4, atol=1e-5)


def test_linear_student_stages_loss_and_omics_free_prediction():
    from histokd_core.methods.crossfit import CrossFitTeachers
    from histokd_core.methods.subspace.linear_student import LinearSubspaceStudent
    from histokd_core.methods.subspace.losses import kd_kl, logit_regression_loss
    from histokd_core.train.trainer import TrainConfig

    cfg = Config(dim=16, heads=2, dim_head=8, n_points=4, offset_kernel=3, offset_stride=1,
                 linear_students=True, linear_kd_weight=0.5, linear_l2=0.3, baselines=())
    by_name = {s.name: s for s in stages(cfg)}
    assert list(by_name)[3:] == ["linear_student", "linear_student_no_kd"]
    assert by_name["linear_student"].requires == ("teacher",)
    assert by_name["linear_student_no_kd"].stream == by_name["linear_student"].stream
    rng = np.random.default_rng(3)
    bags = [make_bag(i, rng, i % 2, signal=1.0) for i in range(6)]
    teacher = by_name["teacher"].build(info(), {}).eval()
    student = by_name["linear_student"].build(info(), {"teacher": teacher})
    assert isinstance(student, LinearSubspaceStudent)
    student.prepare(bags)
    means = torch.stack([b.feats.mean(0) for b in bags])
    torch.testing.assert_close(student.mu, means.mean(0))
    # loss = cross-entropy + linear_kd_weight x logit regression on the teacher's logits + ridge
    out = student.loss(bags)
    z_s = torch.stack([student.linear((b.feats.mean(0) - student.mu) / student.sd) for b in bags])
    with torch.no_grad():
        z_t = torch.stack([teacher.predict(b).logits for b in bags])
    y = torch.tensor([b.label for b in bags])
    ridge = 0.3 * student.linear.weight.pow(2).sum()
    torch.testing.assert_close(out["loss"], torch.nn.functional.cross_entropy(z_s, y)
                               + 0.5 * logit_regression_loss(z_s, z_t) + ridge)
    # the KL option is the paper's temperature KL
    kl = by_name["linear_student"].build(info(), {"teacher": teacher})
    kl.cfg = Config(**{**cfg.__dict__, "linear_kd_loss": "kl"})
    kl.load_state_dict(student.state_dict())
    torch.testing.assert_close(kl.loss(bags)["kd"], kd_kl(z_s, z_t, cfg.temperature).detach())
    ablation = by_name["linear_student_no_kd"].build(info(), {})
    ablation.prepare(bags)
    assert set(ablation.loss(bags)) == {"loss", "task"}
    # several cases per loss call even for classification (the regression centres over them)
    own = student.train_config(TrainConfig(lr=1e-3, epochs=40, patience=10))
    assert (own.lr, own.epochs, own.patience, own.batch_size) == (2e-2, 100, 30, 16)
    assert student.train_config(TrainConfig(batch_size=4)).batch_size == 4
    # cross-fitted targets: each case's target comes from the inner teacher that did not see it
    cf = CrossFitTeachers([SubspaceTeacher(info(), cfg).eval() for _ in range(2)])
    cf.held_out = {b.case_id: i % 2 for i, b in enumerate(bags)}
    crossed = LinearSubspaceStudent(info(), cfg, cf)
    got = torch.stack([crossed._target(b) for b in bags])
    with torch.no_grad():
        want = torch.stack([cf.teachers[i % 2].predict(b).logits for i, b in enumerate(bags)])
    torch.testing.assert_close(got, want)
    # slide only at inference: scrambled expression, same prediction; uniform attention
    b = bags[0]
    scrambled = Bag(**{**b.__dict__, "omics": torch.randn_like(b.omics)})
    torch.testing.assert_close(student.predict(scrambled).logits, student.predict(b).logits)
    torch.testing.assert_close(student.predict(scrambled).contribution,
                               student.predict(b).contribution)
    torch.testing.assert_close(student.predict(b).attention,
                               torch.full((b.feats.shape[0],), 1.0 / b.feats.shape[0]))
    with pytest.raises(ConfigError, match="linear_kd_loss"):
        Config(linear_kd_loss="mse")


def _tiny_student(n_classes: int, task: str = "classification"):
    """A linear subspace student on 2 features with hand-set weights: ``mu = (1, 1)``,
    ``sd = (2, 1)``; its bag's two patches ``(3, 1)`` and ``(1, 3)`` standardise to ``(1, 0)``
    and ``(0, 2)`` (mean ``(0.5, 1)``)."""
    from histokd_core.methods.subspace.linear_student import LinearSubspaceStudent

    data = DataInfo(task=task, feat_dim=2, n_classes=n_classes)
    model = LinearSubspaceStudent(data, Config(linear_students=True))
    w = [[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [0.5, -1.0]][:n_classes]
    b = [0.5, -0.5, -0.5, 0.0][:n_classes]
    with torch.no_grad():
        model.linear.weight.copy_(torch.tensor(w))
        model.linear.bias.copy_(torch.tensor(b))
        model.mu.copy_(torch.tensor([1.0, 1.0]))
        model.sd.copy_(torch.tensor([2.0, 1.0]))
    bag = Bag("c", torch.tensor([[3.0, 1.0], [1.0, 3.0]]), torch.zeros(2, 2, dtype=torch.long),
              patch_size=512, omics=torch.tensor([5.0]))
    return model, bag


def test_linear_student_contribution_binary_is_the_share_of_the_log_odds():
    """Two classes: c_n = (W[1] - W[0]) . z_n / n with W[1] - W[0] = (-1, 2): patch 1
    (-1 * 1 + 2 * 0) / 2 = -0.5, patch 2 (-1 * 0 + 2 * 2) / 2 = 2; logits (1.0, 1.5), so they sum
    to the log-odds 0.5 minus the bias difference b1 - b0 = -1."""
    model, bag = _tiny_student(2)
    pred = model.predict(bag)
    torch.testing.assert_close(pred.logits.detach(), torch.tensor([1.0, 1.5]))
    torch.testing.assert_close(pred.contribution.detach(), torch.tensor([-0.5, 2.0]))
    log_odds = pred.logits[1] - pred.logits[0]
    bias = model.linear.bias[1] - model.linear.bias[0]
    torch.testing.assert_close(pred.contribution.sum().detach(), (log_odds - bias).detach())
    assert pred.contribution_unit == "log-odds contribution (class 1 vs class 0)"
    expl = model.explain(bag)
    np.testing.assert_allclose(expl.contribution, [-0.5, 2.0])
    assert expl.contribution_unit == pred.contribution_unit
    # slide only: the expression is never read
    without = Bag(bag.case_id, bag.feats, bag.coords, patch_size=512)
    torch.testing.assert_close(model.predict(without).contribution, pred.contribution)


def test_linear_student_contribution_multiclass_is_the_predicted_class_centred_logit():
    """Three classes: logits (1.0, 1.5, 1.0) predict class 1; W[1] - mean W = (-2/3, 1), so the
    patches give (-2/3 * 1) / 2 = -1/3 and (1 * 2) / 2 = 1, summing to 2/3: the centred logit
    1.5 - 3.5 / 3 minus the centred bias -0.5 + 0.5 / 3."""
    model, bag = _tiny_student(3)
    pred = model.predict(bag)
    torch.testing.assert_close(pred.logits.detach(), torch.tensor([1.0, 1.5, 1.0]))
    torch.testing.assert_close(pred.contribution.detach(), torch.tensor([-1 / 3, 1.0]))
    centred = pred.logits[1] - pred.logits.mean()
    bias = model.linear.bias[1] - model.linear.bias.mean()
    torch.testing.assert_close(pred.contribution.sum().detach(), (centred - bias).detach())
    assert pred.contribution_unit == "centred-logit contribution (predicted class 1)"


def test_linear_student_survival_has_no_contribution_map():
    """Discrete-time survival: its risk -sum S is not linear in the logits, so no patch shares."""
    model, bag = _tiny_student(4, task="survival")
    pred = model.predict(bag)
    assert pred.risk is not None and pred.contribution is None and pred.contribution_unit is None
    assert model.explain(bag).contribution is None


def _latent_bag(i: int, rng: np.random.Generator, signal: float) -> Bag:
    """A case whose latent ``z`` shifts feature 0 of ~30 % of its patches by ``signal * z``, whose
    label is ``z`` plus unit noise thresholded at 0, and whose one-gene "expression" is ``z``."""
    z = rng.standard_normal()
    n = int(rng.integers(30, 50))
    feats = rng.standard_normal((n, D))
    feats[rng.random(n) < 0.3, 0] += signal * z
    return Bag(f"case{i}", torch.tensor(feats, dtype=torch.float32),
               torch.zeros(n, 2, dtype=torch.long), patch_size=512,
               omics=torch.tensor([z], dtype=torch.float32), label=int(z + rng.standard_normal() > 0))


def test_linear_student_learns_from_a_teacher_that_knows_the_latent(one_thread):
    """The labels are noisy thresholds of a latent that the expression holds exactly; a teacher
    whose logits are that latent gives the distilled linear student a cleaner target than the
    labels, so over three draws (40 training cases each) it beats its task-only ablation on 200
    held-out cases (measured: +0.127 mean AUC gain, 0.695 AUC; bounds +0.05, 0.62)."""
    from histokd_core.methods.base import Prediction
    from histokd_core.methods.subspace.linear_student import LinearSubspaceStudent
    from histokd_core.train.trainer import TrainConfig, Trainer

    class LatentTeacher(torch.nn.Module):
        """Logits ``(-z, z)`` from the expression (a teacher whose dependence is known)."""

        task = "classification"

        def predict(self, bag):
            return Prediction(logits=torch.stack([-bag.omics[0], bag.omics[0]]))

    cfg = Config(linear_students=True, linear_kd_weight=1.0, linear_l2=0.05)
    gains, distilled = [], []
    for seed in (11, 12, 13):
        rng = np.random.default_rng(seed)
        train = [_latent_bag(i, rng, 1.0) for i in range(40)]
        test = [_latent_bag(100 + i, rng, 1.0) for i in range(200)]
        aucs = []
        for teacher in (LatentTeacher(), None):
            torch.manual_seed(0)
            model = LinearSubspaceStudent(info(has_10x=False), cfg, teacher,
                                          distill=teacher is not None)
            Trainer().fit(model, train, [], model.train_config(
                TrainConfig(epochs=60, patience=60, device="cpu", seed=0)))
            with torch.no_grad():
                scores = [float(torch.softmax(model.predict(b).logits, -1)[1]) for b in test]
            aucs.append(_auc(scores, [b.label for b in test]))
        gains.append(aucs[0] - aucs[1])
        distilled.append(aucs[0])
    assert np.mean(gains) > 0.05 and np.mean(distilled) > 0.62, (gains, distilled)
