"""AMKD teacher and student: contracts, parameter count, distillation loss wiring, learning."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from histokd_core.bag import Bag, DataInfo
from histokd_core.errors import ConfigError, HistoKDError
from histokd_core.methods.amkd import TASKS, Config, stages
from histokd_core.methods.amkd.losses import (
    arr_loss,
    ge_loss,
    kd_loss,
    risk_regression_loss,
    total_loss,
)
from histokd_core.methods.amkd.shared import batch_cox
from histokd_core.survival import c_index

SMALL = Config(dim=32, heads=2, dim_head=16, pathway_hidden=16, dropout=0.1, max_train_patches=None)


def small_info(n_genes=40, n_path=8, feat_dim=16):
    pathways = [list(range(5 * i, 5 * i + 5)) for i in range(n_path)]
    return DataInfo(
        task="survival", feat_dim=feat_dim, n_genes=n_genes, pathways=pathways,
        pathway_names=[f"P{i}" for i in range(n_path)],
    )


def planted_bags(n, seed, feat_dim=16, n_genes=40, n_patch=40):
    """Latent risk z drives death times, the mean of feature 0 over a third of the patches,
    and the expression of pathway 0's genes (5 genes) - learnable from either modality."""
    g = torch.Generator().manual_seed(seed)
    bags = []
    for i in range(n):
        z = float(torch.randn(1, generator=g))
        feats = torch.randn(n_patch, feat_dim, generator=g)
        feats[: n_patch // 3, 0] += 2.0 * z
        omics = torch.randn(n_genes, generator=g) * 0.5
        omics[:5] += z
        t = float(torch.empty(1).exponential_(1.0, generator=g)) * math.exp(-2.5 * z) * 20
        event = int(torch.rand(1, generator=g) < 0.8)
        x = torch.arange(n_patch) * 256
        coords = torch.stack([x, torch.zeros_like(x)], 1)
        bags.append(Bag(f"c{i}", feats, coords, omics=omics, time=t, event=event))
    return bags


def test_stages_and_tasks():
    st = stages(Config())
    assert [s.name for s in st] == ["teacher", "student", "student_no_kd", "linear_student",
                                    "linear_student_no_kd", "abmil", "omics_only"]
    assert st[1].requires == ("teacher",)
    assert TASKS == ("survival",)
    with pytest.raises(ConfigError, match="alpha"):
        Config(alpha=1.5)


def test_student_parameter_count_near_paper():
    info = DataInfo(
        task="survival", feat_dim=1024, n_genes=4999,
        pathways=[list(range(i, i + 20)) for i in range(331)],
    )
    student = stages(Config())[1].build(info, {})
    n = sum(p.numel() for p in student.parameters())
    assert 0.5e6 < n < 1.5e6  # paper: 803 K


def test_student_explains_every_pathway(one_thread):
    """Omics-free inference, shapes and the checkpoint round trip are checked for every model in
    tests/test_model_contract.py; here: the student's pathway-conditioned maps."""
    info = small_info()
    st = stages(SMALL)
    teacher = st[0].build(info, {}).requires_grad_(False).eval()
    student = st[1].build(info, {"teacher": teacher}).eval()
    ex = student.explain(planted_bags(1, 0)[0])
    assert len(ex.pathway_scores) == 8 and len(ex.pathway_maps) == 8
    assert all(m.shape == (40,) for m in ex.pathway_maps.values())
    # GGE attention of each query: drawn as attention, scored by gradient x input (the default)
    assert ex.pathway_map_kind == "attention" and ex.pathway_score_unit is None
    assert float(teacher.explain(planted_bags(1, 0)[0]).attention.sum()) == pytest.approx(1.0, abs=1e-5)


def test_student_rebuilt_without_teacher_refuses_to_distil(one_thread):
    info = small_info()
    fresh = stages(SMALL)[1].build(info, {}).eval()  # inference from a checkpoint: no teacher
    bag = planted_bags(1, 1)[0]
    with pytest.raises(HistoKDError, match="teacher"):
        fresh.loss([bag, bag])


@pytest.mark.parametrize("ge_target", ["patch", "pathway"])
def test_distillation_loss_components_add_up(one_thread, ge_target):
    info = small_info()
    st = stages(dataclasses.replace(SMALL, ge_target=ge_target))
    teacher = st[0].build(info, {}).requires_grad_(False).eval()
    student = st[1].build(info, {"teacher": teacher}).eval()
    bags = planted_bags(6, 2)
    out = student.loss(bags)
    r_s, e_s, r_t, e_t = [], [], [], []
    for b in bags:
        r, e_path, h, e_ge = student.forward_bag(b.feats)
        rt, g2p, p2g = teacher.forward_bag(b.feats, b.omics)
        if ge_target == "patch":  # the student's projected patch tokens vs the teacher's p2g
            assert e_ge.shape == p2g.shape == (b.feats.shape[0], SMALL.dim)
            torch.testing.assert_close(e_ge, student.patch_proj(h))
            e_s.append(e_ge), e_t.append(p2g)
        else:
            e_s.append(e_path), e_t.append(g2p)
        r_s.append(r), r_t.append(rt)
    r_s, r_t = torch.stack(r_s), torch.stack(r_t)
    l_s, l_t = batch_cox(r_s, bags), batch_cox(r_t, bags)
    l_kd = kd_loss(r_s, r_t, 2.0)
    l_ge = torch.stack([ge_loss(s, t) for s, t in zip(e_s, e_t)]).mean()
    l_arr, w = arr_loss(r_s, r_t, l_kd, l_s, l_t)
    expected = total_loss(l_ge, l_kd, l_s, l_arr, 0.75)
    torch.testing.assert_close(out["loss"], expected)
    torch.testing.assert_close(out["arr_weight"], w)
    assert out["loss"].requires_grad
    no_kd = st[2].build(info, {}).eval()
    assert set(no_kd.loss(bags)) == {"loss", "cox"}


def test_risk_distillation_is_cox_plus_weighted_risk_regression(one_thread):
    info = small_info()
    st = stages(dataclasses.replace(SMALL, distill_loss="risk", kd_weight=2.5))
    teacher = st[0].build(info, {}).requires_grad_(False).eval()
    student = st[1].build(info, {"teacher": teacher}).eval()
    bags = planted_bags(6, 2)
    out = student.loss(bags)
    r_s = torch.stack([student.forward_bag(b.feats)[0] for b in bags])
    r_t = torch.stack([teacher.forward_bag(b.feats, b.omics)[0] for b in bags])
    expected = batch_cox(r_s, bags) + 2.5 * risk_regression_loss(r_s, r_t)
    torch.testing.assert_close(out["loss"], expected)
    torch.testing.assert_close(out["risk_kd"], risk_regression_loss(r_s, r_t))
    with pytest.raises(ConfigError, match="distill_loss"):
        dataclasses.replace(SMALL, distill_loss="mse")


def test_teacher_distillation_targets_shapes(one_thread):
    info = small_info()
    teacher = stages(SMALL)[0].build(info, {}).eval()
    bag = planted_bags(1, 4)[0]
    t = teacher.distillation_targets(bag)
    assert t["ge_patch"].shape == (40, SMALL.dim) and t["ge_pathway"].shape == (8, SMALL.dim)
    assert t["kd"].shape == () and 0 < float(t["kd"]) < 1
    torch.testing.assert_close(t["ge_patch"].exp().sum(-1), torch.ones(40))


def _fit(model, bags, epochs, lr=3e-3, batch=16, seed=0):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        if getattr(model, "teacher", None) is not None:
            model.teacher.eval()
        order = torch.randperm(len(bags), generator=g).tolist()
        for s in range(0, len(order), batch):
            loss = model.loss([bags[i] for i in order[s : s + batch]])["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


def _cindex(model, bags):
    with torch.no_grad():
        risk = [float(model.predict(b).risk) for b in bags]
    return c_index([b.time for b in bags], np.array(risk), [b.event for b in bags])


def test_teacher_and_student_learn_planted_signal(one_thread):
    torch.manual_seed(0)
    info = small_info()
    train, test = planted_bags(64, 10), planted_bags(40, 11)
    st = stages(SMALL)
    teacher = st[0].build(info, {})
    _fit(teacher, train, epochs=6)
    c_teacher = _cindex(teacher, test)
    teacher.requires_grad_(False)
    student = st[1].build(info, {"teacher": teacher})
    _fit(student, train, epochs=6)
    c_student = _cindex(student, test)
    assert c_teacher > 0.7, c_teacher  # oracle (true latent risk): 0.83
    assert c_student > 0.7, c_student


def test_trains_with_the_engine_trainer(one_thread, tmp_path):
    from histokd_core.train.trainer import TrainConfig, Trainer

    info = small_info()
    bags = planted_bags(24, 3)
    cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-3, device="cpu", patience=5)
    st = stages(SMALL)
    teacher = st[0].build(info, {})
    Trainer().fit(teacher, bags[:16], bags[16:], cfg)
    teacher.requires_grad_(False)
    student = st[1].build(info, {"teacher": teacher})
    before = teacher.head[0].weight.clone()
    state = tmp_path / "s.safetensors"
    result = Trainer().fit(student, bags[:16], bags[16:], cfg, state_path=state)
    assert result.epochs_run == 2
    assert "train_ge" in result.history[-1] and "train_kd" in result.history[-1]
    torch.testing.assert_close(teacher.head[0].weight, before)  # the teacher stays frozen


def test_linear_student_loss_prepare_and_learning(one_thread):
    from histokd_core.methods.amkd.linear_student import LinearStudent
    from histokd_core.train.trainer import TrainConfig, Trainer

    info = small_info()
    cfg = dataclasses.replace(SMALL, linear_students=True, kd_weight=0.5, linear_l2=0.3)
    names = [s.name for s in stages(cfg)]
    assert names[3:5] == ["linear_student", "linear_student_no_kd"]
    by_name = {s.name: s for s in stages(cfg)}
    assert by_name["linear_student"].requires == ("teacher",)
    assert by_name["linear_student_no_kd"].stream == by_name["linear_student"].stream

    train, test = planted_bags(64, 10), planted_bags(40, 11)
    teacher = by_name["teacher"].build(info, {})
    _fit(teacher, train, epochs=6)
    teacher.requires_grad_(False)
    student = by_name["linear_student"].build(info, {"teacher": teacher})
    assert isinstance(student, LinearStudent)
    student.prepare(train)
    means = torch.stack([b.feats.mean(0) for b in train])
    torch.testing.assert_close(student.mu, means.mean(0))
    torch.testing.assert_close(student.sd, means.std(0, unbiased=False))
    # loss = Cox + kd_weight x risk regression on the teacher's risks (same patches) + ridge
    bags = train[:6]
    out = student.loss(bags)
    r_s = torch.stack([student.linear((b.feats.mean(0) - student.mu) / student.sd)[0] for b in bags])
    r_t = torch.stack([teacher.forward_bag(b.feats, b.omics)[0] for b in bags])
    ridge = 0.3 * student.linear.weight.pow(2).sum()
    torch.testing.assert_close(
        out["loss"], batch_cox(r_s, bags) + 0.5 * risk_regression_loss(r_s, r_t) + ridge)
    ablation = by_name["linear_student_no_kd"].build(info, {})
    ablation.prepare(train)
    r_a = torch.stack([ablation.forward_feats(b.feats)[0] for b in bags])
    torch.testing.assert_close(ablation.loss(bags)["loss"], batch_cox(r_a, bags)
                               + 0.3 * ablation.linear.weight.pow(2).sum())
    assert set(ablation.loss(bags)) == {"loss", "cox"}
    # slide only at inference: the expression does not change the prediction; uniform attention
    b = test[0]
    pred = student.predict(b)
    scrambled = Bag(b.case_id, b.feats, b.coords, omics=torch.randn_like(b.omics))
    assert float(student.predict(scrambled).risk) == float(pred.risk)
    torch.testing.assert_close(pred.attention.sum(), torch.tensor(1.0))
    # each patch's risk contribution w . (x_n - mu) / sd / n sums to the risk minus the bias
    c = pred.contribution.detach()
    assert c.shape == (b.feats.shape[0],)
    torch.testing.assert_close(c.sum(), (pred.risk - student.linear.bias[0]).detach())
    w = student.linear.weight[0].detach()
    torch.testing.assert_close(c[3], w @ ((b.feats[3] - student.mu) / student.sd) / len(c))
    torch.testing.assert_close(student.predict(scrambled).contribution.detach(), c)
    np.testing.assert_allclose(student.explain(b).contribution, c.numpy(), rtol=1e-6)
    # it learns the planted signal through the engine (prepare runs there)
    fresh = by_name["linear_student"].build(info, {"teacher": teacher})
    Trainer().fit(fresh, train, [], TrainConfig(epochs=40, batch_size=16, lr=3e-2, device="cpu"))
    assert _cindex(fresh, test) > 0.7


def test_linear_student_trains_with_its_own_settings():
    from histokd_core.train.trainer import TrainConfig

    cfg = dataclasses.replace(SMALL, linear_students=True, linear_lr=0.05, linear_epochs=7,
                              linear_patience=3)
    by_name = {s.name: s for s in stages(cfg)}
    run = TrainConfig(lr=1e-3, epochs=40, patience=10, seed=4)
    own = by_name["linear_student_no_kd"].build(small_info(), {}).train_config(run)
    assert (own.lr, own.epochs, own.patience, own.seed) == (0.05, 7, 3, 4)
    # the batch size a survival run gives every model when it sets none (the Cox loss needs
    # several cases), or the run's own
    assert own.cases_per_batch("survival") == run.cases_per_batch("survival") == 16
    set_run = dataclasses.replace(run, batch_size=8)
    assert by_name["linear_student"].build(small_info(), {}).train_config(set_run).batch_size == 8
    assert by_name["student"].build(small_info(), {}).train_config(run) is run
    with pytest.raises(ConfigError, match="linear_lr"):
        dataclasses.replace(SMALL, linear_lr=0.0)


def test_linear_student_checkpoint_keys_and_an_earlier_checkpoint_loads(tmp_path):
    """The checkpoint holds ``linear.weight``, ``linear.bias``, ``mu`` and ``sd`` (not the
    teacher), the names the linear student has always saved, and the pathway head's buffers; a
    checkpoint written before either change (before it became a MeanPoolLinear and before the
    pathway head: tensors written by hand here) loads, predicts ``w . (mean x - mu) / sd + b`` and
    explains itself without pathway maps."""
    from histokd_core.train.checkpoint import load_model, model_state, save_checkpoint

    info = small_info()
    cfg = dataclasses.replace(SMALL, linear_students=True)
    by_name = {s.name: s for s in stages(cfg)}
    teacher = by_name["teacher"].build(info, {})
    student = by_name["linear_student"].build(info, {"teacher": teacher})
    assert set(model_state(student)) == {"linear.weight", "linear.bias", "mu", "sd",
                                         "pathway_weight", "pathway_mu", "pathway_sd",
                                         "pathway_cov"}
    assert set(model_state(by_name["linear_student_no_kd"].build(info, {}))) == {
        "linear.weight", "linear.bias", "mu", "sd"}
    g = torch.Generator().manual_seed(3)
    w, b = torch.randn(1, info.feat_dim, generator=g), torch.tensor([0.25])
    mu, sd = torch.randn(info.feat_dim, generator=g), torch.rand(info.feat_dim, generator=g) + 0.5
    path = save_checkpoint(tmp_path / "linear_student.safetensors",
                           {"linear.weight": w, "linear.bias": b, "mu": mu, "sd": sd},
                           {"kind": "model", "method": "amkd",
                            "method_config": dataclasses.asdict(cfg), "stage": "linear_student",
                            "data_info": dataclasses.asdict(info)})
    loaded, _ = load_model(path)
    bag = planted_bags(1, 5)[0]
    pred = loaded.predict(bag)
    expected = w[0] @ ((bag.feats.mean(0) - mu) / sd) + b[0]
    torch.testing.assert_close(pred.risk, expected)
    torch.testing.assert_close(pred.contribution.sum(), expected - b[0])
    expl = loaded.explain(bag)
    assert expl.pathway_maps == {} and expl.pathway_scores == {} and expl.pathway_unit is None
    assert set(model_state(loaded)) == {"linear.weight", "linear.bias", "mu", "sd"}
