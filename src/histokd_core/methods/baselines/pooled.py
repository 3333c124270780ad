"""Reference rows: simple models on mean-pooled patch features, and a slide-only oracle.

Every quality table compares the trained models with what needs no deep learning at all:

- ``ridge_cox``: a Cox model (lifelines ``CoxPHFitter``, L2 ``penalizer``) on each case's mean
  patch feature (all 20x patches of all its slides), standardised on the training cases;
- ``pca2_cox``: the same features reduced to their first two principal components (fitted on the
  training cases), then an unpenalised Cox model;
- ``ridge_kd`` (survival, when the cohort has expression): the same mean patch feature, a
  *distilled* linear student. A linear teacher (ridge Cox, ``TEACHER_PENALIZER``, on the
  expression) is cross-fitted on the training cases (:data:`KD_INNER_FOLDS` inner folds: every
  case's target comes from a teacher that did not see it); a ridge regression (scikit-learn,
  ``KD_RIDGE_ALPHA``) of those teacher risks on the standardised mean patch features is the
  student. It reads slides only at test time. Beside ``ridge_cox`` (the same student fitted on
  the labels) it measures what distillation gives a linear model;
- ``logistic`` (classification): L2 logistic regression (scikit-learn) on the mean patch feature;
- ``logistic_kd`` (classification, when the cohort has expression): the classification
  counterpart of ``ridge_kd``: a cross-fitted L2 logistic regression on the expression is the
  teacher, a ridge regression of its row-centred log-probabilities on the standardised mean patch
  features the student (softmax of its predictions at test time);
- ``oracle`` (synthetic cohorts only): the same Cox / logistic model on what a slide-only observer
  who knows the planted truth can measure (:func:`histokd_core.synthetic.slide_oracle_features`:
  subpopulation shares and local shifts). It bounds what the slides can tell.

They are fitted on a fold's training and validation cases together (they select nothing) and
scored on its test cases, with the metric the trained models report (C-index or AUC), so
:func:`reference_rows` gives one value per fold of the same folds as
:func:`histokd_core.train.run_cv`.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from histokd_core.errors import DataError
from histokd_core.survival.metrics import c_index

if TYPE_CHECKING:
    from histokd_core.dataset import CohortData
    from histokd_core.synthetic.cohort import FeatureCohort

RIDGE_PENALIZER = 0.1  # lifelines' penalizer: 0.5 * penalizer * ||beta||^2 per case
TEACHER_PENALIZER = 1.0  # ridge_kd's linear expression teacher (many genes, few cases)
KD_RIDGE_ALPHA = 10.0  # ridge_kd's student: scikit-learn Ridge alpha on standardised features
KD_INNER_FOLDS = 4


def mean_pooled(data: CohortData, case_ids: list[str] | None = None) -> pd.DataFrame:
    """``(n_cases, d)`` mean 20x patch feature of each case (all its slides), indexed by case."""
    case_ids = list(data.cohort.case_ids if case_ids is None else case_ids)
    rows = [data.case_features(c).feats.double().mean(0).numpy() for c in case_ids]
    return pd.DataFrame(np.stack(rows), index=pd.Index(case_ids, name="case_id"))


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, sd = train.mean(0), train.std(0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    return (train - mean) / sd, (test - mean) / sd


def cox_risk(
    x_train: np.ndarray, time: np.ndarray, event: np.ndarray, x_test: np.ndarray,
    penalizer: float = RIDGE_PENALIZER,
) -> np.ndarray:
    """Linear predictor ``x_test @ beta`` of a Cox model fitted on standardised ``x_train``.

    Parameters
    ----------
    x_train : ``(n, p)`` covariates; time : ``(n,)`` follow-up (any unit); event : ``(n,)`` 1 =
        event; x_test : ``(m, p)`` covariates to score; penalizer : lifelines' L2 penalizer.

    Returns
    -------
    ``(m,)`` log relative hazards (higher = shorter survival).
    """
    from lifelines import CoxPHFitter

    x_train = np.asarray(x_train, dtype=np.float64)
    x_test = np.asarray(x_test, dtype=np.float64)
    if int(np.sum(event)) == 0:
        raise DataError("Cox reference model: the training cases have no event")
    xs, xt = _standardise(x_train, x_test)
    cols = [f"x{j}" for j in range(xs.shape[1])]
    frame = pd.DataFrame(xs, columns=cols).assign(_time=np.asarray(time, dtype=np.float64),
                                                  _event=np.asarray(event, dtype=int))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lifelines' convergence chatter on tiny folds
        model = CoxPHFitter(penalizer=penalizer).fit(frame, "_time", "_event")
    return xt @ model.params_[cols].to_numpy()


def distilled_ridge_risk(
    x_train: np.ndarray, omics_train: np.ndarray, time: np.ndarray, event: np.ndarray,
    x_test: np.ndarray, seed: int = 0,
) -> np.ndarray:
    """Slide-only risks of the ``ridge_kd`` reference: a ridge regression on ``x`` of cross-fitted
    linear expression-teacher risks.

    Parameters
    ----------
    x_train : ``(n, p)`` slide covariates (mean patch features); omics_train : ``(n, g)`` the same
        cases' expression (the teacher's input, training cases only); time, event : ``(n,)``;
    x_test : ``(m, p)`` slide covariates to score; seed : the inner folds' shuffle.

    Returns
    -------
    ``(m,)`` risks (higher = shorter survival). ``x_test``'s cases' expression is never read.
    """
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import KFold

    omics_train = np.asarray(omics_train, np.float64)
    event = np.asarray(event)
    target = np.zeros(len(omics_train))
    for fit, held in KFold(KD_INNER_FOLDS, shuffle=True, random_state=seed).split(omics_train):
        target[held] = cox_risk(omics_train[fit], np.asarray(time)[fit], event[fit],
                                omics_train[held], penalizer=TEACHER_PENALIZER)
    xs, xt = _standardise(np.asarray(x_train, np.float64), np.asarray(x_test, np.float64))
    return Ridge(alpha=KD_RIDGE_ALPHA).fit(xs, target).predict(xt)


def pca_cox_risk(
    x_train: np.ndarray, time: np.ndarray, event: np.ndarray, x_test: np.ndarray,
    n_components: int = 2,
) -> np.ndarray:
    """:func:`cox_risk` (unpenalised) on the first ``n_components`` principal components of the
    standardised training covariates."""
    from sklearn.decomposition import PCA

    xs, xt = _standardise(np.asarray(x_train, np.float64), np.asarray(x_test, np.float64))
    pca = PCA(n_components=n_components).fit(xs)
    return cox_risk(pca.transform(xs), time, event, pca.transform(xt), penalizer=0.0)


def logistic_probs(
    x_train: np.ndarray, labels: np.ndarray, x_test: np.ndarray, c: float = 1.0
) -> np.ndarray:
    """``(m, C)`` class probabilities of an L2 logistic regression (inverse strength ``c``)
    fitted on standardised ``x_train``; columns are classes ``0..C-1``."""
    from sklearn.linear_model import LogisticRegression

    labels = np.asarray(labels).astype(int)
    xs, xt = _standardise(np.asarray(x_train, np.float64), np.asarray(x_test, np.float64))
    model = LogisticRegression(C=c, max_iter=1000).fit(xs, labels)
    probs = np.zeros((len(xt), int(labels.max()) + 1))
    probs[:, model.classes_] = model.predict_proba(xt)
    return probs


def distilled_logistic_probs(
    x_train: np.ndarray, omics_train: np.ndarray, labels: np.ndarray, x_test: np.ndarray,
    seed: int = 0,
) -> np.ndarray:
    """Slide-only class probabilities of the ``logistic_kd`` reference: a ridge regression on
    ``x`` of cross-fitted linear expression-teacher log-probabilities.

    Parameters
    ----------
    x_train : ``(n, p)`` slide covariates; omics_train : ``(n, g)`` the same cases' expression
        (training cases only); labels : ``(n,)`` classes ``0..C-1``; x_test : ``(m, p)``;
    seed : the inner folds' shuffle (stratified by class).

    Returns
    -------
    ``(m, C)`` probabilities. ``x_test``'s cases' expression is never read.
    """
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import StratifiedKFold

    omics_train = np.asarray(omics_train, np.float64)
    labels = np.asarray(labels).astype(int)
    n_classes = int(labels.max()) + 1
    target = np.zeros((len(omics_train), n_classes))
    folds = StratifiedKFold(KD_INNER_FOLDS, shuffle=True, random_state=seed)
    for fit, held in folds.split(omics_train, labels):
        probs = logistic_probs(omics_train[fit], labels[fit], omics_train[held])
        if probs.shape[1] < n_classes:
            probs = np.pad(probs, ((0, 0), (0, n_classes - probs.shape[1])))
        logp = np.log(np.clip(probs, 1e-9, None))
        target[held] = logp - logp.mean(1, keepdims=True)
    xs, xt = _standardise(np.asarray(x_train, np.float64), np.asarray(x_test, np.float64))
    z = Ridge(alpha=KD_RIDGE_ALPHA).fit(xs, target).predict(xt)
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def _auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """ROC AUC (one-vs-rest macro for more than two classes; NaN with a single class), as the
    trained models' ``auc``."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels).astype(int)
    if np.unique(labels).size < 2:
        return float("nan")
    if probs.shape[1] == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    return float(roc_auc_score(labels, probs, multi_class="ovr",
                               labels=list(range(probs.shape[1]))))


def reference_rows(
    data: CohortData, cohort: FeatureCohort | None = None, penalizer: float = RIDGE_PENALIZER
) -> dict[str, list[float]]:
    """Test metric of every reference model on each fold of ``data.folds``.

    Parameters
    ----------
    data : the cohort and folds the trained models used (survival or classification).
    cohort : the synthetic :class:`FeatureCohort` behind ``data``, for the ``oracle`` row
        (omitted without it).
    penalizer : ridge Cox penalizer.

    Returns
    -------
    model -> per-fold test C-index (survival: ``oracle``, ``ridge_cox``, ``pca2_cox``) or AUC
    (classification: ``oracle``, ``logistic``), in fold order; with expression also
    ``ridge_kd`` (survival) or ``logistic_kd`` (classification).
    """
    pooled = mean_pooled(data)
    sources = {"pooled": pooled}
    if cohort is not None:
        from histokd_core.synthetic.cohort import slide_oracle_features

        oracle = slide_oracle_features(cohort)
        missing = sorted(set(pooled.index) - set(oracle.index))
        if missing:
            raise DataError(f"oracle: cases {missing[:5]} are not in the synthetic cohort")
        sources["oracle"] = oracle.loc[pooled.index]
    cases = data.cohort.cases
    survival = data.task == "survival"
    models = {"oracle": "oracle"} if cohort is not None else {}
    models.update({"ridge_cox": "pooled", "pca2_cox": "pooled"} if survival
                  else {"logistic": "pooled"})
    expression = getattr(data, "expression", None)
    if expression is not None:
        models["ridge_kd" if survival else "logistic_kd"] = "pooled"
    rows: dict[str, list[float]] = {name: [] for name in models}
    for fold in range(data.n_folds):
        train_ids, val_ids, test_ids = data.folds.split(fold)
        fit_ids = list(train_ids) + list(val_ids)
        fit, test = cases.loc[fit_ids], cases.loc[test_ids]
        for name, source in models.items():
            x_fit = sources[source].loc[fit_ids].to_numpy()
            x_test = sources[source].loc[test_ids].to_numpy()
            if survival:
                args = (x_fit, fit["survival_months"].to_numpy(), fit["event"].to_numpy(), x_test)
                if name == "ridge_kd":
                    risk = distilled_ridge_risk(
                        x_fit, expression.loc[fit_ids].to_numpy(), *args[1:], seed=fold
                    )
                elif name == "pca2_cox":
                    risk = pca_cox_risk(*args)
                else:
                    risk = cox_risk(*args, penalizer=penalizer if name == "ridge_cox" else 0.0)
                value = c_index(test["survival_months"], risk, test["event"])
            else:
                if name == "logistic_kd":
                    probs = distilled_logistic_probs(
                        x_fit, expression.loc[fit_ids].to_numpy(), fit["label"].to_numpy(),
                        x_test, seed=fold,
                    )
                else:
                    probs = logistic_probs(x_fit, fit["label"].to_numpy(), x_test)
                value = _auc(test["label"].to_numpy(), probs)
            rows[name].append(float(value))
    return rows
