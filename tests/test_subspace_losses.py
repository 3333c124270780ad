"""Subspace losses and CGC against hand-computed values."""

import math

import pytest
import torch
from torch import nn

from histokd_core.bag import Bag
from histokd_core.errors import DataError
from histokd_core.methods.subspace.cgc import apply_cgc, confidences, coordinate, project_rows
from histokd_core.methods.amkd.losses import risk_regression_loss
from histokd_core.methods.subspace.losses import (
    dev_loss,
    kd_kl,
    logit_regression_loss,
    skd_loss,
    task_loss,
)


def test_dev_loss_hand_computed():
    a10 = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    a20 = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    # M = [[1, 0], [2, 2]] -> rows / norm -> diag = [1, 1/sqrt2]; unbiased variance of 2 values
    expected = (1 - 1 / math.sqrt(2)) ** 2 / 2
    assert float(dev_loss(a10, a20, weight=1.0)) == pytest.approx(expected, rel=1e-6)
    assert float(dev_loss(a10, a20)) == pytest.approx(10_000 * expected, rel=1e-6)
    assert float(dev_loss(a10[:1], a20[:1])) == 0.0
    # rows of M are L2-normalised: scaling every 20x map leaves the loss unchanged
    assert float(dev_loss(a10, a20 * 3.0, weight=1.0)) == pytest.approx(expected, rel=1e-6)


def test_kd_and_skd_values():
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[math.log(3.0) * 2, 0.0]])
    p = [0.75, 0.25]  # softmax(t / 2)
    kl = sum(pi * math.log(pi / 0.5) for pi in p) * 4
    assert float(kd_kl(s, t, 2.0)) == pytest.approx(kl, rel=1e-6)
    feats_s, feats_t = [torch.tensor([[1.0, 2.0]])], [torch.zeros(1, 2)]
    out = skd_loss(torch.tensor(1.0), feats_s, feats_t, [s], [t], 0.01, 0.1, 2.0)
    assert float(out["mse"]) == pytest.approx(2.5)
    assert float(out["loss"]) == pytest.approx(1.0 + 0.01 * 2.5 + 0.1 * kl, rel=1e-6)


def test_logit_regression_hand_values():
    # teacher [[0, 2], [0, 0]] -> row-centred [[-1, 1], [0, 0]] -> column-centred
    # [[-.5, .5], [.5, -.5]], rms 0.5 -> standardised [[-1, 1], [1, -1]]
    t = torch.tensor([[0.0, 2.0], [0.0, 0.0]])
    assert float(logit_regression_loss(torch.zeros(2, 2), t)) == pytest.approx(1.0, rel=1e-5)
    # student [[1, 0], [0, 1]] centres to [[.5, -.5], [-.5, .5]]: differences 1.5 everywhere
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert float(logit_regression_loss(s, t)) == pytest.approx(2.25, rel=1e-5)
    # zero for the standardised teacher up to a shift per row and per column; scale-free target
    s = torch.tensor([[-1.0, 1.0], [1.0, -1.0]]) + torch.tensor([[3.0], [-2.0]]) + 0.7
    assert float(logit_regression_loss(s, 10 * t)) == pytest.approx(0.0, abs=1e-6)
    # a constant student still gets a finite gradient
    s = torch.zeros(2, 2, requires_grad=True)
    logit_regression_loss(s, t).backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_logit_regression_with_two_classes_is_risk_regression_on_half_log_odds():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(7, 2, generator=g), torch.randn(7, 2, generator=g)
    half_s, half_t = (s[:, 1] - s[:, 0]) / 2, (t[:, 1] - t[:, 0]) / 2
    assert float(logit_regression_loss(s, t)) == pytest.approx(
        float(risk_regression_loss(half_s, half_t)), rel=1e-5)


def test_task_loss_classification_and_survival():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    z = torch.zeros(1, 2)
    bags = [Bag("a", z, z, label=0), Bag("b", z, z, label=1)]
    ce = -(math.log(math.exp(2) / (math.exp(2) + 1)) + math.log(math.e / (1 + math.e))) / 2
    assert float(task_loss(logits, bags, "classification")) == pytest.approx(ce, rel=1e-6)
    surv = [Bag("a", torch.zeros(1, 2), torch.zeros(1, 2), bin=0, event=1)]
    # uncensored in bin 0: -log h_0 = -log sigmoid(0)
    nll = float(task_loss(torch.zeros(1, 2), surv, "survival"))
    assert nll == pytest.approx(math.log(2), rel=1e-6)
    with pytest.raises(DataError, match="bag.bin"):
        task_loss(torch.zeros(1, 2), [Bag("c", torch.zeros(1, 2), torch.zeros(1, 2))], "survival")


def test_cgc_projection_on_conflict():
    ga, gb = torch.tensor([[1.0, 0.0]]), torch.tensor([[-1.0, 1.0]])
    torch.testing.assert_close(project_rows(ga, gb), torch.tensor([[0.5, 0.5]]))
    public = project_rows(ga, gb, "public")
    torch.testing.assert_close(public, torch.tensor([[0.0, math.sqrt(0.5)]]))
    new_a, new_b, conflict = coordinate(ga, gb, conf_a=1.0, conf_b=2.0)
    assert conflict.tolist() == [True]
    torch.testing.assert_close(new_a, torch.tensor([[0.5, 0.5]]))
    torch.testing.assert_close(new_b, gb)
    new_a, new_b, _ = coordinate(ga, gb, conf_a=3.0, conf_b=2.0)
    torch.testing.assert_close(new_a, ga)
    torch.testing.assert_close(new_b, torch.tensor([[0.0, 1.0]]))


def test_cgc_no_conflict_unchanged_rowwise():
    ga = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    gb = torch.tensor([[1.0, 1.0], [-2.0, 0.5]])
    new_a, new_b, conflict = coordinate(ga, gb, 0.1, 0.9)
    assert conflict.tolist() == [False, True]
    torch.testing.assert_close(new_a[0], ga[0])
    assert abs(float(new_a[1] @ gb[1])) < 1e-6
    torch.testing.assert_close(new_b, gb)
    with pytest.raises(ValueError):
        project_rows(ga, gb, "bogus")


def test_apply_cgc_on_linear_head():
    head = nn.Linear(4, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
        head.bias.zero_()
    feats = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    y = torch.tensor([0])
    conf_t, conf_m = confidences(head, feats, y)
    assert conf_t == pytest.approx(math.e / (math.e + 1))
    assert conf_m == pytest.approx(0.5)
    head.weight.grad = torch.tensor([[-1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 1.0, 1.0]])
    assert apply_cgc(head, feats, y) == 1
    # row 0 conflicts; the TME half (less confident) is projected off the tumour half
    torch.testing.assert_close(head.weight.grad[0], torch.tensor([-1.0, 1.0, 0.5, 0.5]))
    torch.testing.assert_close(head.weight.grad[1], torch.tensor([1.0, 0.0, 1.0, 1.0]))
