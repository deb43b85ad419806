"""Cox partial likelihood with Firth's penalty (Heinze & Schemper 2001, R's coxphf), and the
check that tells whether the ordinary maximum-likelihood estimate exists at all.

Why written here: firthmodels' FirthCoxPH (the maintained Python package) has neither strata
nor Efron ties, and the trial's matched analysis needs both. The partial likelihood is small
enough to write in numpy: per event time a weighted sum over the risk set, Breslow or Efron.

Firth's penalised log partial likelihood is l*(b) = l(b) + 1/2 log det I(b); its maximiser
exists where the ordinary one does not (monotone likelihood). Intervals are profile penalised
likelihood intervals and tests are penalised likelihood-ratio tests, as coxphf's defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import optimize, stats

Ties = Literal["efron", "breslow"]


@dataclass(frozen=True)
class CoxData:
    """Covariates and the partial likelihood's structure (risk sets within strata), laid out
    as one row per factor of the denominator so every quantity is a few matrix products."""

    x: np.ndarray  # n x p
    event_sum: np.ndarray  # sum of the covariates of all events
    shares: np.ndarray  # factors x n: each row's weight in the factor (0: not at risk)
    times: np.ndarray  # how often each factor counts (Breslow: the tied events)
    comparisons: np.ndarray  # rows x_event - x_at_risk, for the existence check


def cox_data(
    x: np.ndarray,
    time: np.ndarray,
    event: np.ndarray,
    strata: np.ndarray | None = None,
    ties: Ties = "efron",
) -> CoxData:
    """The partial likelihood's risk sets for ``x`` (n x p), ``time``, ``event`` (0/1) and
    optional ``strata`` labels; ``ties`` 'efron' (lifelines' and R coxph's default) or
    'breslow' (coxphf's). Efron's factor k of d tied events counts each of them 1 - k/d."""
    x = np.asarray(x, float).reshape(len(time), -1)
    time, event = np.asarray(time, float), np.asarray(event).astype(bool)
    strata = np.zeros(len(time)) if strata is None else np.asarray(strata)
    shares, times, diffs = [], [], []
    for stratum in np.unique(strata):
        members = strata == stratum
        for t in np.unique(time[members & event]):
            at_risk = members & (time >= t)
            dead = at_risk & (time == t) & event
            d = int(dead.sum())
            if ties == "breslow" or d == 1:
                shares.append(at_risk.astype(float))
                times.append(float(d))
            else:
                for k in range(d):
                    shares.append(np.where(dead, 1.0 - k / d, at_risk.astype(float)))
                    times.append(1.0)
            diffs.extend(x[i] - x[at_risk] for i in np.flatnonzero(dead))
    p = x.shape[1]
    return CoxData(
        x,
        x[event].sum(axis=0),
        np.array(shares).reshape(-1, len(time)),
        np.array(times),
        np.vstack(diffs) if diffs else np.zeros((0, p)),
    )


@dataclass(frozen=True)
class _Quantities:
    loglik: float  # penalised when the fit is
    score: np.ndarray  # modified score when penalised
    information: np.ndarray  # the ordinary Fisher information


def _quantities(beta: np.ndarray, data: CoxData, firth: bool) -> _Quantities:
    x, m = data.x, data.times
    eta = x @ beta
    shift = eta.max()
    a = data.shares * np.exp(eta - shift)  # factors x n
    s0 = a.sum(axis=1)
    e1 = (a @ x) / s0[:, None]  # factors x p: weighted means
    e2 = np.einsum("tn,ni,nj->tij", a, x, x) / s0[:, None, None]
    loglik = float(data.event_sum @ beta - m @ (np.log(s0) + shift))
    score = data.event_sum - m @ e1
    v = e2 - np.einsum("ti,tj->tij", e1, e1)
    info = np.einsum("t,tij->ij", m, v)
    if not firth:
        return _Quantities(loglik, score, info)
    # dI/db_r = sum_t m_t (E3_r - E2 e1_r - E2_r e1' - e1 E2_r' + 2 e1 e1' e1_r), E_k the
    # k-th weighted moments of the risk set.
    e3 = np.einsum("tn,ni,nj,nk->tijk", a, x, x, x) / s0[:, None, None, None]
    d_info = (
        e3
        - np.einsum("tij,tk->tijk", e2, e1)
        - np.einsum("tik,tj->tijk", e2, e1)
        - np.einsum("ti,tjk->tijk", e1, e2)
        + 2.0 * np.einsum("ti,tj,tk->tijk", e1, e1, e1)
    )
    d_info = np.einsum("t,tijk->kij", m, d_info)
    sign, logdet = np.linalg.slogdet(info)
    loglik += 0.5 * logdet if sign > 0 else -np.inf
    inverse = np.linalg.pinv(info)
    score = score + 0.5 * np.einsum("ij,kji->k", inverse, d_info)
    return _Quantities(loglik, score, info)


@dataclass(frozen=True)
class CoxFit:
    coef: np.ndarray
    se: np.ndarray  # from the inverse information at coef
    loglik: float  # penalised if firth
    converged: bool
    firth: bool


def fit_cox_firth(
    data: CoxData,
    firth: bool = True,
    fixed: dict[int, float] | None = None,
    start: np.ndarray | None = None,
    tol: float = 1e-10,
    max_iter: int = 200,
) -> CoxFit:
    """Maximise the (penalised) log partial likelihood by Newton-Raphson with step-halving
    and steps capped at 0.5 per coefficient (as coxphf); coefficients in ``fixed`` (index ->
    value) are held, the others maximised, as for a profile or a likelihood-ratio test."""
    p = data.x.shape[1]
    fixed = fixed or {}
    beta = np.zeros(p) if start is None else np.asarray(start, float).copy()
    for j, value in fixed.items():
        beta[j] = value
    free = np.array([j for j in range(p) if j not in fixed], int)
    q = _quantities(beta, data, firth)
    converged = free.size == 0
    for _ in range(max_iter if free.size else 0):
        step = np.linalg.lstsq(q.information[np.ix_(free, free)], q.score[free], rcond=None)[0]
        biggest = np.abs(step).max()
        if biggest > 0.5:
            step *= 0.5 / biggest
        for _halving in range(30):
            trial = beta.copy()
            trial[free] += step
            new = _quantities(trial, data, firth)
            if new.loglik >= q.loglik - 1e-12:
                break
            step /= 2.0
        beta, q = trial, new
        if np.abs(step).max() < tol:
            converged = True
            break
        if firth and _ > 20 and np.abs(step).max() < 1e-5:
            break  # creeping: the quasi-Newton polish below finishes
    if free.size and firth and not converged:
        # Newton with the information converges only linearly for the penalised score (its
        # Jacobian is not -I): polish the root of the modified score with a quasi-Newton
        # solver from where the steps became small.
        def modified_score(b_free: np.ndarray) -> np.ndarray:
            trial = beta.copy()
            trial[free] = b_free
            return _quantities(trial, data, True).score[free]

        root = optimize.root(modified_score, beta[free], method="hybr", tol=tol)
        polished = beta.copy()
        polished[free] = root.x
        best = _quantities(polished, data, True)
        if root.success and best.loglik >= q.loglik - 1e-9:
            beta, q = polished, best
            converged = True
    se = np.sqrt(np.clip(np.diag(np.linalg.pinv(q.information)), 0, None))
    return CoxFit(beta, se, q.loglik, converged, firth)


CHI2_95 = float(stats.chi2.ppf(0.95, 1))


def penalised_lr(data: CoxData, fit: CoxFit, j: int, value: float = 0.0) -> float:
    """Penalised likelihood-ratio statistic of coefficient ``j`` = ``value`` (others free)."""
    held = fit_cox_firth(data, fit.firth, fixed={j: value}, start=fit.coef)
    return max(0.0, 2.0 * (fit.loglik - held.loglik))


def profile_interval(
    data: CoxData, fit: CoxFit, j: int, level: float = 0.95, limit: float = 30.0
) -> tuple[float, float]:
    """Profile (penalised) likelihood interval of coefficient ``j``: where twice the drop of
    the profile log-likelihood from its maximum equals the chi-squared(1) quantile. A side
    that does not cross within +-``limit`` of the estimate is infinite."""
    cut = float(stats.chi2.ppf(level, 1))

    def excess(b: float) -> float:
        return penalised_lr(data, fit, j, b) - cut

    centre = float(fit.coef[j])
    width = float(fit.se[j]) if np.isfinite(fit.se[j]) and fit.se[j] > 0 else 1.0
    ends = []
    for direction in (-1.0, 1.0):
        inner, step = centre, width
        outer = centre + direction * step
        while excess(outer) < 0:
            inner = outer
            step *= 2.0
            if step > limit:
                outer = np.nan
                break
            outer = centre + direction * step
        if np.isnan(outer):
            ends.append(direction * np.inf)
        else:
            ends.append(optimize.brentq(excess, inner, outer, xtol=1e-12, rtol=1e-12))
    return ends[0], ends[1]


def monotone_likelihood(data: CoxData) -> np.ndarray | None:
    """The direction in which the partial likelihood rises for ever, or None.

    The ordinary maximum-likelihood estimate fails to exist exactly when some direction v
    puts, at every event time, the event's linear predictor at or above everyone still at
    risk: (x_event - x_at_risk) . v >= 0 for all comparisons, and > 0 for one. Found by a
    linear programme (maximise the sum over the box |v| <= 1)."""
    d = data.comparisons
    if d.size == 0 or not np.abs(d).max() > 0:
        return None
    p = d.shape[1]
    res = optimize.linprog(
        -d.sum(axis=0), A_ub=-d, b_ub=np.zeros(len(d)), bounds=[(-1, 1)] * p, method="highs"
    )
    if res.status == 0 and -res.fun > 1e-9 * max(1.0, np.abs(d).max()):
        return res.x
    return None


@dataclass(frozen=True)
class FirthResult:
    """One coefficient of a Firth-penalised Cox fit: estimate, profile penalised-likelihood
    interval and penalised likelihood-ratio test of zero (all on the log-hazard scale)."""

    coef: float
    ci_low: float
    ci_high: float
    lr_statistic: float
    p_value: float
    converged: bool


def firth_coefficient(data: CoxData, j: int = 0) -> FirthResult:
    """Firth's estimate of coefficient ``j`` with its profile interval and penalised LR test."""
    fit = fit_cox_firth(data)
    lr = penalised_lr(data, fit, j)
    low, high = profile_interval(data, fit, j)
    return FirthResult(
        float(fit.coef[j]), low, high, lr, float(stats.chi2.sf(lr, 1)), fit.converged
    )


def supremum_lr(data: CoxData, direction: np.ndarray) -> float:
    """Ordinary likelihood-ratio statistic against b = 0 when the likelihood is monotone: the
    log-likelihood's supremum is its limit along ``direction`` (reached to within 1e-12 once
    the linear predictors differ by a few dozen)."""
    null = _quantities(np.zeros(data.x.shape[1]), data, False).loglik
    scale = np.abs(data.x).max() or 1.0
    far = _quantities(direction * 60.0 / scale, data, False).loglik
    return max(0.0, 2.0 * (far - null))
