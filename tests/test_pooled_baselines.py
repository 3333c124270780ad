"""Reference rows: mean-pool ridge Cox, PCA-2 Cox, logistic regression and the planted oracle."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter

from histokd_core.cohort import validate_cohort
from histokd_core.dataset import CohortData
from histokd_core.errors import DataError
from histokd_core.methods.baselines.pooled import (
    cox_risk,
    distilled_logistic_probs,
    distilled_ridge_risk,
    logistic_probs,
    mean_pooled,
    pca_cox_risk,
    reference_rows,
)
from histokd_core.survival.metrics import c_index
from histokd_core.synthetic import make_feature_cohort


def _survival(n=200, p=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, p)) * rng.uniform(0.5, 3.0, p) + rng.uniform(-2, 2, p)
    log_hazard = 1.5 * (x[:, 0] - x[:, 0].mean()) / x[:, 0].std()
    t = rng.exponential(np.exp(-log_hazard))
    c = rng.exponential(2.0, n)
    return x, np.minimum(t, c), (t <= c).astype(int)


def test_cox_risk_is_lifelines_linear_predictor_and_its_c_index():
    x, time, event = _survival()
    risk = cox_risk(x, time, event, x, penalizer=0.1)
    xs = (x - x.mean(0)) / x.std(0)
    frame = pd.DataFrame(xs, columns=list("abcde")).assign(T=time, E=event)
    model = CoxPHFitter(penalizer=0.1).fit(frame, "T", "E")
    expected = model.predict_log_partial_hazard(frame).to_numpy()
    np.testing.assert_allclose(risk - risk.mean(), expected - expected.mean(), atol=1e-6)
    assert c_index(time, risk, event) == pytest.approx(model.concordance_index_, abs=1e-9)
    assert c_index(time, risk, event) > 0.75  # the planted covariate is found, with its sign


def test_cox_risk_generalises_and_refuses_no_events():
    x, time, event = _survival(n=400, seed=1)
    risk = cox_risk(x[:300], time[:300], event[:300], x[300:])
    assert risk.shape == (100,) and c_index(time[300:], risk, event[300:]) > 0.75
    with pytest.raises(DataError, match="no event"):
        cox_risk(x, time, np.zeros_like(event), x)


def test_pca_cox_uses_the_leading_components():
    rng = np.random.default_rng(2)
    n = 300
    z = rng.standard_normal(n)  # a strong shared component carries the risk
    x = np.outer(z, rng.standard_normal(10)) * 3 + 0.3 * rng.standard_normal((n, 10))
    t = rng.exponential(np.exp(-1.5 * z))
    risk = pca_cox_risk(x[:200], t[:200], np.ones(200), x[200:])
    assert c_index(t[200:], risk, np.ones(100)) > 0.75
    # two correlated blocks of columns dominate the (standardised) components; the risk sits
    # in a column of its own that two components miss
    w, v = rng.standard_normal((2, n, 1))
    noise = 0.3 * rng.standard_normal((n, 10))
    noise[:, :5] += w
    noise[:, 5:9] += v
    noise[:, 9] += z
    risk = pca_cox_risk(noise[:200], t[:200], np.ones(200), noise[200:])
    assert abs(c_index(t[200:], risk, np.ones(100)) - 0.5) < 0.1


def test_logistic_probs():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 4))
    y = (x[:, 1] + 0.5 * rng.standard_normal(300) > 0).astype(int)
    probs = logistic_probs(x[:200], y[:200], x[200:])
    assert probs.shape == (100, 2)
    np.testing.assert_allclose(probs.sum(1), 1.0)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y[200:], probs[:, 1]) > 0.85
    three = logistic_probs(x[:200], np.arange(200) % 3, x[200:])
    assert three.shape == (100, 3)


@pytest.fixture(scope="module")
def planted():
    """The default cohort at the benchmark's size (one seed: thresholds leave ~2 SE)."""
    return make_feature_cohort(None, n_cases=150, n_patches=96, feat_dim=64, seed=0,
                               with_10x=False)


def _data(fc, task):
    table = validate_cohort(fc.cohort, task, "label" if task == "classification" else None,
                            where="synthetic")
    return CohortData(table, fc.features, task=task, n_folds=5, seed=0)


def test_reference_rows_on_the_default_cohort(planted):
    data = _data(planted, "survival")
    pooled = mean_pooled(data, data.cohort.case_ids[:3])
    sid = data.cohort.slides_of(data.cohort.case_ids[0])
    manual = np.concatenate([planted.features[s].feats("20x") for s in sid]).mean(0)
    np.testing.assert_allclose(pooled.iloc[0].to_numpy(), manual, atol=1e-6)

    rows = reference_rows(data, planted)
    assert list(rows) == ["oracle", "ridge_cox", "pca2_cox"]
    assert all(len(v) == 5 and all(0 <= x <= 1 for x in v) for v in rows.values())
    means = {k: float(np.mean(v)) for k, v in rows.items()}
    # issue 11 targets (over 3 seeds: oracle ~0.79, ridge Cox ~0.62); one seed, so some slack
    assert means["oracle"] > 0.72 and means["ridge_cox"] > 0.55
    assert means["oracle"] > means["ridge_cox"] + 0.05
    assert list(reference_rows(data)) == ["ridge_cox", "pca2_cox"]


def test_reference_rows_classification(planted):
    rows = reference_rows(_data(planted, "classification"), planted)
    assert list(rows) == ["oracle", "logistic"]
    assert np.mean(rows["oracle"]) > 0.75 and np.mean(rows["logistic"]) > 0.55


def test_distilled_ridge_is_ridge_on_cross_fitted_teacher_risks():
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import KFold

    x, time, event = _survival(n=120, p=4, seed=3)
    rng = np.random.default_rng(4)
    omics = np.column_stack([x[:, 0] + 0.1 * rng.standard_normal(120),
                             rng.standard_normal((120, 5))])
    x_test = rng.standard_normal((7, 4))
    got = distilled_ridge_risk(x, omics, time, event, x_test, seed=2)
    target = np.zeros(120)
    for fit, held in KFold(4, shuffle=True, random_state=2).split(omics):
        frame = pd.DataFrame((omics[fit] - omics[fit].mean(0)) / omics[fit].std(0)).add_prefix("g")
        cph = CoxPHFitter(penalizer=1.0).fit(frame.assign(T=time[fit], E=event[fit]), "T", "E")
        z = (omics[held] - omics[fit].mean(0)) / omics[fit].std(0)
        target[held] = z @ cph.params_.to_numpy()
    mu, sd = x.mean(0), x.std(0)
    expected = Ridge(alpha=10.0).fit((x - mu) / sd, target).predict((x_test - mu) / sd)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("task, names", [("survival", ["ridge_cox", "pca2_cox", "ridge_kd"]),
                                          ("classification", ["logistic", "logistic_kd"])])
def test_distilled_rows_read_no_test_expression(planted, task, names):
    table = validate_cohort(planted.cohort, task, "label" if task == "classification" else None,
                            where="synthetic")
    data = CohortData(table, planted.features, omics=planted.expression, task=task,
                      n_folds=5, seed=0)
    rows = reference_rows(data)
    assert list(rows) == names
    kd = names[-1]
    assert np.mean(rows[kd]) > 0.55
    # scrambling every test case's expression leaves every fold's value unchanged
    _, _, test_ids = data.folds.split(0)
    scrambled = data.expression.astype(np.float64)
    scrambled.loc[list(test_ids)] = np.random.default_rng(0).standard_normal(
        (len(test_ids), scrambled.shape[1]))
    data.expression = scrambled
    assert reference_rows(data)[kd][0] == rows[kd][0]


def test_distilled_logistic_is_ridge_on_cross_fitted_teacher_log_probabilities():
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.model_selection import StratifiedKFold

    rng = np.random.default_rng(5)
    x = rng.standard_normal((90, 4)) * [1.0, 2.0, 0.5, 3.0]
    labels = (x[:, 0] + 0.5 * rng.standard_normal(90) > 0).astype(int)
    omics = np.column_stack([labels + 0.3 * rng.standard_normal(90), rng.standard_normal((90, 3))])
    x_test = rng.standard_normal((6, 4))
    got = distilled_logistic_probs(x, omics, labels, x_test, seed=1)
    target = np.zeros((90, 2))
    for fit, held in StratifiedKFold(4, shuffle=True, random_state=1).split(omics, labels):
        mu, sd = omics[fit].mean(0), omics[fit].std(0)
        teacher = LogisticRegression(C=1.0, max_iter=1000).fit((omics[fit] - mu) / sd, labels[fit])
        logp = np.log(teacher.predict_proba((omics[held] - mu) / sd))
        target[held] = logp - logp.mean(1, keepdims=True)
    mu, sd = x.mean(0), x.std(0)
    z = Ridge(alpha=10.0).fit((x - mu) / sd, target).predict((x_test - mu) / sd)
    expected = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
