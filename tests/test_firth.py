"""Firth's penalised Cox model (stats.firth) against coxphf's numbers, another Python
implementation, the published two-individual example, closed forms and the ordinary fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, stats

from stats.firth import (
    cox_data,
    firth_coefficient,
    fit_cox_firth,
    monotone_likelihood,
    penalised_lr,
    profile_interval,
)

BREAST = Path(__file__).parent / "data" / "coxphf_breast.txt"


def _coxphf_separation_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """firthmodels' test data with monotone likelihood (tests/conftest.py,
    make_cox_separation_data, seed 42): no event among separator = 0."""
    rng = np.random.default_rng(42)
    n = 100
    separator = rng.choice([0, 1], n, p=[0.35, 0.65])
    x1 = rng.standard_normal(n)
    x2 = rng.uniform(-1, 1, n)
    x3 = rng.choice([0, 1], n, p=[0.6, 0.4])
    x = np.column_stack([separator, x1, x2, x3])
    eta = x @ np.array([0.0, 0.5, -0.3, 0.7])
    survival = rng.exponential(1 / (0.1 * np.exp(eta)))
    censor = rng.exponential(scale=15.0, size=n)
    time = np.minimum(survival, censor)
    event = survival <= censor
    event[separator == 0] = False
    return x, time, event


def test_matches_coxphf_on_data_with_monotone_likelihood():
    # R coxphf's output on this data, as quoted in firthmodels' test suite
    # (jzluo/firthmodels tests/test_cox.py, test_matches_coxphf_with_monotone_likelihood):
    # coefficients, standard errors, likelihood ratio 57.6071 (4 df), penalised LR p of the
    # separator and x1, and their profile penalised-likelihood 95% limits (log scale).
    x, time, event = _coxphf_separation_data()
    data = cox_data(x, time, event, ties="breslow")  # coxphf's ties; no tied events here
    assert monotone_likelihood(data) is not None  # the ordinary estimate does not exist
    fit = fit_cox_firth(data)
    assert fit.converged
    coef = [3.8815800583, 0.6042066427, -0.4202139201, 1.0415063080]
    se = [1.4430190269, 0.1599607483, 0.2541800107, 0.3128784410]
    np.testing.assert_allclose(fit.coef, coef, atol=1e-6)
    np.testing.assert_allclose(fit.se, se, atol=1e-6)
    null = fit_cox_firth(data, fixed=dict.fromkeys(range(4), 0.0))
    assert abs(2 * (fit.loglik - null.loglik) - 57.6071) < 1e-4
    for j, p, (low, high) in (
        (0, 7.318984974e-09, (1.9343469272, 8.7215676015)),
        (1, 1.686334002e-04, (0.2921186188, 0.9164270978)),
        (2, 9.295083722e-02, (-0.9217200647, 0.0699415336)),
        (3, 8.463066114e-04, (0.4348431279, 1.6550461482)),
    ):
        assert abs(stats.chi2.sf(penalised_lr(data, fit, j), 1) / p - 1) < 1e-4
        np.testing.assert_allclose(profile_interval(data, fit, j), (low, high), atol=1e-6)


def test_breast_example_of_coxphf():
    # coxphf's example, coxphf(Surv(TIME, CENS) ~ T + N + G + CD, data = breast): no event
    # among G = 0, so the ordinary estimate of G diverges (Heinze & Schemper 2001). The
    # package's printed output is not published in its manual; the reference numbers are
    # firthmodels 0.8.2 (FirthCoxPH, backend "numpy", itself checked against coxphf to 1e-6)
    # run on this file, 2026-12-01.
    breast = pd.read_csv(BREAST, sep=r"\s+", comment="#")
    assert len(breast) == 100 and breast.CENS.sum() == 26
    assert breast[breast.G == 0].CENS.sum() == 0
    data = cox_data(breast[["T", "N", "G", "CD"]], breast.TIME, breast.CENS, ties="breslow")
    direction = monotone_likelihood(data)
    assert direction is not None and direction[2] > 0 and np.allclose(direction[[0, 1, 3]], 0)
    fit = fit_cox_firth(data)
    np.testing.assert_allclose(fit.coef, [1.22443899, 0.9188885, 2.42441413, 0.39711848], atol=1e-6)
    np.testing.assert_allclose(fit.se, [0.49160449, 0.42257338, 1.47354658, 0.44185541], atol=1e-6)
    assert abs(stats.chi2.sf(penalised_lr(data, fit, 2), 1) - 0.01358988) < 1e-7
    np.testing.assert_allclose(profile_interval(data, fit, 2), (0.38231078, 7.28065997), atol=1e-6)


def test_two_individuals_published_example():
    # Heinze & Schemper (2001), section 2: one event (x = 1) and one censored (x = 0) later;
    # the ordinary estimate is infinite, Firth's is exp(beta) = 3.
    data = cox_data(np.array([[1.0], [0.0]]), np.array([1.0, 2.0]), np.array([1, 0]))
    assert monotone_likelihood(data) is not None
    assert abs(np.exp(fit_cox_firth(data).coef[0]) - 3.0) < 1e-8


def _pairs(after_first: int, before_first: int) -> tuple[np.ndarray, ...]:
    x, time, event, strata = [], [], [], []
    for i in range(after_first + before_first):
        after = i < after_first
        x += [0.0, 1.0]
        time += [365.0 if after else 50.0 + i, 40.0 + i if after else 365.0]
        event += [0 if after else 1, 1 if after else 0]
        strata += [i, i]
    return np.array(x), np.array(time), np.array(event), np.array(strata)


@pytest.mark.parametrize(("a", "b"), [(0, 10), (10, 0), (3, 9)])
def test_stratified_pairs_match_the_penalised_binomial(a, b):
    # One relapse per pair of two: the partial likelihood is binomial in p = HR / (1 + HR),
    # the information m p (1 - p), so Firth maximises (a + 1/2) log p + (b + 1/2) log(1 - p):
    # HR = (a + 1/2) / (b + 1/2). Its profile limits solved here from that closed form.
    data = cox_data(*_pairs(a, b)[:3], strata=_pairs(a, b)[3])
    res = firth_coefficient(data)
    assert abs(np.exp(res.coef) - (a + 0.5) / (b + 0.5)) < 1e-8

    def penalised(beta: float) -> float:
        p = 1 / (1 + np.exp(-beta))
        return (a + 0.5) * np.log(p) + (b + 0.5) * np.log(1 - p)

    top = penalised(np.log((a + 0.5) / (b + 0.5)))

    def drop(beta: float) -> float:
        return 2 * (top - penalised(beta)) - stats.chi2.ppf(0.95, 1)

    low = optimize.brentq(drop, -20, res.coef)
    high = optimize.brentq(drop, res.coef, 20)
    assert abs(res.ci_low - low) < 1e-7 and abs(res.ci_high - high) < 1e-7
    assert abs(res.lr_statistic - 2 * (top - penalised(0.0))) < 1e-8


def test_without_penalty_the_fit_is_the_ordinary_cox_fit_with_ties_and_strata():
    # Rossi recidivism data (many tied weeks): Efron with strata against lifelines, Breslow
    # against statsmodels' PHReg.
    from lifelines import CoxPHFitter
    from lifelines.datasets import load_rossi
    from statsmodels.duration.hazard_regression import PHReg

    rossi = load_rossi()
    covariates = ["fin", "age", "wexp", "mar", "paro", "prio"]
    reference = CoxPHFitter().fit(
        rossi, "week", "arrest", strata=["race"], fit_options={"precision": 1e-12}
    )
    data = cox_data(rossi[covariates], rossi.week, rossi.arrest, rossi.race, ties="efron")
    mine = fit_cox_firth(data, firth=False)
    np.testing.assert_allclose(mine.coef, reference.params_[covariates], atol=1e-6)
    np.testing.assert_allclose(mine.se, reference.standard_errors_[covariates], atol=1e-6)
    breslow = PHReg(rossi.week, rossi[covariates], status=rossi.arrest, ties="breslow").fit()
    data = cox_data(rossi[covariates], rossi.week, rossi.arrest, ties="breslow")
    np.testing.assert_allclose(fit_cox_firth(data, firth=False).coef, breslow.params, atol=1e-6)
    assert monotone_likelihood(data) is None


def test_firth_is_close_to_the_ordinary_fit_when_events_are_many():
    # Firth's correction is O(1/n): with 114 arrests it moves fin by a fraction of its SE.
    from lifelines.datasets import load_rossi

    rossi = load_rossi()
    data = cox_data(rossi[["fin"]], rossi.week, rossi.arrest)
    ordinary, firth = fit_cox_firth(data, firth=False), fit_cox_firth(data)
    assert abs(firth.coef[0] - ordinary.coef[0]) < 0.02 * ordinary.se[0]
    assert firth.coef[0] != ordinary.coef[0]
