"""The distilled linear AMKD student's pathway head: its fit, maps and scores by hand, that it
leaves the risk's training alone, that inference never reads expression, checkpoints, and that it
learns planted pathways from the slides."""

import dataclasses

import numpy as np
import pytest
import torch

from histokd_core.bag import Bag, DataInfo
from histokd_core.errors import ConfigError
from histokd_core.methods.amkd import Config, stages
from histokd_core.methods.amkd.linear_student import PATHWAY_SCORE_UNIT, PATHWAY_UNIT

SMALL = Config(dim=32, heads=2, dim_head=16, pathway_hidden=16, dropout=0.1, max_train_patches=None)


def tiny_info(feat_dim=4):
    # 3 pathways over 7 genes; gene 6 in none; pathway 2 lists a gene twice (counted once)
    return DataInfo(task="survival", feat_dim=feat_dim, n_genes=7,
                    pathways=[[0, 1], [2, 3, 4], [5, 5, 1]], pathway_names=["A", "B", "C"])


def tiny_bags(n, seed, feat_dim=4, n_patch=3):
    g = torch.Generator().manual_seed(seed)
    bags = []
    for i in range(n):
        feats = torch.randn(n_patch, feat_dim, generator=g)
        omics = torch.randn(7, generator=g)
        omics[:2] += 2.0 * feats[:, 0].mean()  # pathway A follows feature 0
        x = torch.arange(n_patch) * 256
        bags.append(Bag(f"c{i}", feats, torch.stack([x, torch.zeros_like(x)], 1), omics=omics,
                        time=float(i + 1), event=i % 2))
    return bags


def build(cfg, info, stage="linear_student"):
    return {s.name: s for s in stages(cfg)}[stage].build(info, {})


def test_head_fit_maps_and_scores_by_hand(one_thread):
    info = tiny_info()
    cfg = dataclasses.replace(SMALL, linear_l2=0.2, linear_pathway_weight=2.0,
                              explain_top_pathways=2)
    student = build(cfg, info)
    train = tiny_bags(9, 0)
    student.prepare(train)
    # targets: mean expression over each pathway's genes, standardised over the training cases
    raw = torch.stack([torch.stack([b.omics[[0, 1]].mean(), b.omics[[2, 3, 4]].mean(),
                                    b.omics[[5, 1]].mean()]) for b in train]).double()
    a = (raw - raw.mean(0)) / raw.std(0, unbiased=False)
    torch.testing.assert_close(student.pathway_targets(train), a)
    # V minimises 2.0 * sum_p mean_i (v_p . z_i - a_ip)^2 + 0.2 * ||V||^2: zero gradient there
    z = torch.stack([(b.feats.mean(0) - student.mu) / student.sd for b in train]).double()
    v = student.pathway_weight.double().clone().requires_grad_(True)
    objective = 2.0 * ((z @ v.T - a) ** 2).mean(0).sum() + 0.2 * v.pow(2).sum()
    (grad,) = torch.autograd.grad(objective, v)
    assert float(grad.abs().max()) < 1e-4
    v = v.detach()
    # maps: v_p . z_n / n per patch, summing to the predicted activity v_p . z (no bias)
    bag = tiny_bags(1, 7)[0]
    with torch.no_grad():
        student.linear.weight.copy_(torch.tensor([[0.5, -1.0, 0.25, 2.0]]))
    zn = ((bag.feats - student.mu) / student.sd).double()
    maps = (zn @ v.T).T / 3
    expl = student.explain(bag)
    assert expl.pathway_unit == PATHWAY_UNIT and expl.pathway_score_unit == PATHWAY_SCORE_UNIT
    assert expl.pathway_map_kind == "contribution"  # signed, not attention (the paper student's)
    torch.testing.assert_close(student.pathway_contributions(bag.feats).double(), maps,
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(maps.sum(1), v @ ((bag.feats.mean(0) - student.mu)
                                                 / student.sd).double(), rtol=1e-5, atol=1e-6)
    # scores: w^T (Z^T Z / N) v_p = covariance over the training cases of the risk (minus b)
    # with each predicted activity
    w = student.linear.weight[0].double().detach()
    risk, act = z @ w, z @ v.T
    scores = ((risk - risk.mean())[:, None] * (act - act.mean(0))).mean(0)
    np.testing.assert_allclose([expl.pathway_scores[n] for n in "ABC"], scores.numpy(),
                               rtol=1e-5, atol=1e-6)
    # the top 2 pathways by |score| have maps; the risk contribution and attention stay
    top = [["A", "B", "C"][i] for i in np.argsort(-np.abs(scores.numpy()))[:2]]
    assert list(expl.pathway_maps) == top
    for name in top:
        np.testing.assert_allclose(expl.pathway_maps[name], maps["ABC".index(name)].numpy(),
                                   rtol=1e-5, atol=1e-6)
        assert expl.top_patches[name][0] == int(np.argmax(expl.pathway_maps[name]))
    torch.testing.assert_close(torch.as_tensor(expl.contribution),
                               student.predict(bag).contribution.detach())
    np.testing.assert_allclose(expl.attention, 1 / 3)


def test_inference_never_reads_expression_and_the_ablation_has_no_head(one_thread):
    info = tiny_info()
    student = build(SMALL, info)
    student.prepare(tiny_bags(9, 0))
    bag = tiny_bags(1, 3)[0]
    without = Bag(bag.case_id, bag.feats, bag.coords, omics=None)
    a, b = student.explain(bag), student.explain(without)
    assert a.pathway_maps and list(a.pathway_maps) == list(b.pathway_maps)
    for name in a.pathway_maps:
        np.testing.assert_array_equal(a.pathway_maps[name], b.pathway_maps[name])
    assert a.pathway_scores == b.pathway_scores
    assert float(student.predict(without).risk.detach()) == float(student.predict(bag).risk.detach())
    # the Cox-only ablation reads no expression at all, also not in prepare
    ablation = build(SMALL, info, "linear_student_no_kd")
    ablation.prepare([Bag(t.case_id, t.feats, t.coords, omics=None, time=t.time, event=t.event)
                      for t in tiny_bags(9, 0)])
    assert ablation.pathway_weight is None and ablation.explain(without).pathway_maps == {}
    # weight 0 turns the head off; a negative weight is refused
    assert build(dataclasses.replace(SMALL, linear_pathway_weight=0.0), info).pathway_weight is None
    with pytest.raises(ConfigError, match="linear_pathway_weight"):
        dataclasses.replace(SMALL, linear_pathway_weight=-1.0)


def test_head_leaves_the_risk_training_unchanged(one_thread):
    """The same fit with and without the head: identical risk weights, bias and history."""
    from histokd_core.train.trainer import TrainConfig, Trainer

    info = tiny_info()
    teacher = build(SMALL, info, "teacher")
    teacher.requires_grad_(False).eval()
    bags = tiny_bags(24, 5)
    run = TrainConfig(epochs=6, batch_size=8, lr=1e-3, device="cpu", patience=10, seed=3)
    fits = []
    for weight in (1.0, 0.0):
        cfg = dataclasses.replace(SMALL, linear_pathway_weight=weight, linear_epochs=6)
        torch.manual_seed(11)
        model = {s.name: s for s in stages(cfg)}["linear_student"].build(info, {"teacher": teacher})
        result = Trainer().fit(model, bags[:16], bags[16:], model.train_config(run))
        fits.append((model, result))
    (with_head, r1), (without, r0) = fits
    assert with_head.pathway_weight is not None and without.pathway_weight is None
    torch.testing.assert_close(with_head.linear.weight, without.linear.weight, rtol=0, atol=0)
    torch.testing.assert_close(with_head.linear.bias, without.linear.bias, rtol=0, atol=0)
    assert r1.history == r0.history and r1.best_epoch == r0.best_epoch
    assert "train_risk_kd" in r1.history[-1]


def test_trained_head_round_trips_through_a_checkpoint(one_thread, tmp_path):
    from histokd_core.train.checkpoint import load_model, model_state, save_checkpoint

    info = tiny_info()
    student = build(SMALL, info)
    student.prepare(tiny_bags(9, 0))
    path = save_checkpoint(tmp_path / "linear_student.safetensors", model_state(student),
                           {"kind": "model", "method": "amkd",
                            "method_config": dataclasses.asdict(SMALL),
                            "stage": "linear_student", "data_info": dataclasses.asdict(info)})
    loaded, _ = load_model(path)
    bag = tiny_bags(1, 4)[0]
    a, b = student.explain(bag), loaded.explain(bag)
    assert b.pathway_unit == PATHWAY_UNIT and a.pathway_scores == b.pathway_scores
    for name in a.pathway_maps:
        np.testing.assert_array_equal(a.pathway_maps[name], b.pathway_maps[name])


def test_head_learns_planted_pathways_from_the_slides(one_thread):
    """Feature cohort whose factors set their planted patches' share (160 cases, fold 0): on the
    fold's held-out cases the predicted activity of the 6 planted driver pathways correlates with
    their expression activity at 0.57 on average (measured, seed 0; 0.44-0.69 each over seeds
    0-2; noise pathways -0.04-0.15); the bound is half that."""
    from histokd_core.cohort import validate_cohort
    from histokd_core.dataset import CohortData
    from histokd_core.omics.subspaces import DEFAULT_TME_SETS, DEFAULT_TUMOR_SETS
    from histokd_core.synthetic.cohort import make_feature_cohort

    syn = make_feature_cohort(None, n_cases=160, n_patches=24, feat_dim=16, seed=0,
                              with_10x=False, multi_slide_fraction=0.0, histology_signal=2.5,
                              histology_noise=0.5, local_factors=0)
    fold = CohortData(validate_cohort(syn.cohort), syn.features, omics=syn.expression,
                      gene_sets=syn.gene_sets).fold(0)
    student = build(Config(), fold.info)
    student.prepare(fold.train)
    held_out = fold.val + fold.test
    truth = student.pathway_targets(held_out).float()
    with torch.no_grad():
        pred = torch.stack([student.pathway_contributions(b.feats).sum(1) for b in held_out])
    drivers = [i for i, n in enumerate(fold.info.pathway_names)
               if n in DEFAULT_TUMOR_SETS or n in DEFAULT_TME_SETS]
    assert len(drivers) == 6
    r = [float(np.corrcoef(truth[:, i], pred[:, i])[0, 1]) for i in drivers]
    assert np.mean(r) > 0.28, r
