"""Survival toolkit: Cox and discrete-time losses against hand-computed values and lifelines,
C-index against lifelines, Kaplan-Meier / log-rank and the KM plot."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from histokd_core.survival import c_index, cox_nll, discrete_nll, discrete_risk, km_logrank, plot_km


def test_cox_nll_breslow_ties_hand_computed():
    # times 1, 2, 2, 3; events 1, 1, 1, 0; risks a, b, c, d
    r = torch.tensor([0.5, -0.2, 1.0, 0.3], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([1.0, 2.0, 2.0, 3.0])
    e = torch.tensor([1, 1, 1, 0])
    a, b, c, d = (math.exp(v) for v in (0.5, -0.2, 1.0, 0.3))
    # Breslow: both deaths at t=2 share the risk set {b, c, d}
    expected = -(
        (0.5 - math.log(a + b + c + d)) + (-0.2 - math.log(b + c + d)) + (1.0 - math.log(b + c + d))
    )
    assert float(cox_nll(r, t, e, reduction="sum")) == pytest.approx(expected, rel=1e-12)
    assert float(cox_nll(r, t, e)) == pytest.approx(expected / 3, rel=1e-12)
    # input order does not matter
    perm = torch.tensor([3, 1, 0, 2])
    assert float(cox_nll(r[perm], t[perm], e[perm], "sum")) == pytest.approx(expected, rel=1e-12)


def test_cox_nll_stable_for_large_risks_and_no_events():
    r = torch.tensor([1000.0, 990.0, -1000.0], requires_grad=True)
    loss = cox_nll(r, torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1, 1, 0]))
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(r.grad).all()
    r2 = torch.randn(5, requires_grad=True)
    zero = cox_nll(r2, torch.arange(5.0), torch.zeros(5))
    assert float(zero) == 0.0
    zero.backward()
    assert torch.equal(r2.grad, torch.zeros(5))
    # a single case with an event: its own risk set, loss 0
    assert float(cox_nll(torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([1]))) == 0.0


def test_cox_nll_matches_lifelines_partial_likelihood():
    from lifelines import CoxPHFitter

    rng = np.random.default_rng(0)
    n = 60
    x = rng.normal(size=(n, 2))
    time = rng.exponential(np.exp(-(x @ np.array([0.8, -0.5]))))  # distinct times: no ties
    event = (rng.random(n) < 0.7).astype(int)
    df = pd.DataFrame({"x0": x[:, 0], "x1": x[:, 1], "T": time, "E": event})
    cph = CoxPHFitter().fit(df, "T", "E")
    risk = torch.tensor(x @ cph.params_.to_numpy(), dtype=torch.float64)
    ours = float(cox_nll(risk, torch.tensor(time), torch.tensor(event), reduction="sum"))
    assert -ours == pytest.approx(cph.log_likelihood_, rel=1e-6)


def test_discrete_nll_hand_computed():
    logits = torch.tensor([[0.0, 1.0, -1.0, 0.5], [2.0, -0.5, 0.3, 0.0]], dtype=torch.float64)
    bins = torch.tensor([2, 1])
    event = torch.tensor([1, 0])
    s = lambda v: 1 / (1 + math.exp(-v))
    # case 0, uncensored in bin 2: -log[(1-h0)(1-h1)] - log h2
    l0 = -math.log((1 - s(0.0)) * (1 - s(1.0))) - math.log(s(-1.0))
    # case 1, censored in bin 1: -log S_1 = -log[(1-h0)(1-h1)]
    l1 = -math.log((1 - s(2.0)) * (1 - s(-0.5)))
    assert float(discrete_nll(logits, bins, event)) == pytest.approx((l0 + l1) / 2, rel=1e-12)
    alpha = 0.4
    expected = ((1 - alpha) * (l0 + l1) + alpha * l0) / 2
    assert float(discrete_nll(logits, bins, event, alpha=alpha)) == pytest.approx(
        expected, rel=1e-12
    )
    surv = np.cumprod([1 - s(v) for v in (0.0, 1.0, -1.0, 0.5)])
    assert float(discrete_risk(logits[0])) == pytest.approx(-surv.sum(), rel=1e-12)
    with pytest.raises(ValueError):
        discrete_nll(logits, torch.tensor([4, 0]), event)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_c_index_equals_lifelines_with_ties(seed):
    from lifelines.utils import concordance_index

    rng = np.random.default_rng(seed)
    n = 80
    time = rng.integers(1, 15, n).astype(float)  # many tied times
    event = rng.integers(0, 2, n)
    risk = rng.integers(0, 6, n).astype(float)  # many tied risks
    assert c_index(time, risk, event) == pytest.approx(
        concordance_index(time, -risk, event), abs=1e-12
    )
    assert c_index(time, -time, np.ones(n)) > 0.99
    assert math.isnan(c_index(time, risk, np.zeros(n)))


def test_km_logrank_matches_lifelines_and_plots(tmp_path):
    from lifelines import KaplanMeierFitter
    from lifelines.statistics import logrank_test

    rng = np.random.default_rng(3)
    n = 120
    risk = rng.normal(size=n)
    time = rng.exponential(np.exp(-risk)) * 20
    event = (rng.random(n) < 0.8).astype(int)
    res = km_logrank(time, event, risk)
    high = risk > np.median(risk)
    assert np.array_equal(res.high, high)
    assert res.counts == {"high risk": 60, "low risk": 60}
    expected = logrank_test(time[high], time[~high], event[high], event[~high]).p_value
    assert res.p_value == pytest.approx(expected)
    assert res.p_value < 0.01  # planted: risk drives the hazard
    kmf = KaplanMeierFitter().fit(time[high], event[high])
    assert np.allclose(res.curves["high risk"][1], kmf.survival_function_.iloc[:, 0].to_numpy())
    out = plot_km(res, tmp_path / "km.png", title="test")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["km.png"]
