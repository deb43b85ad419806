"""The trial's clinical analyses, from per-patient windows (see cohort.clinical).

Each function takes the windows frame and returns rows of the statistics table; survival
models come from lifelines, exact tests from scipy.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
from lifelines import CoxPHFitter, KaplanMeierFitter
from scipy import optimize, stats

from stats.firth import (
    CoxData,
    cox_data,
    firth_coefficient,
    fit_cox_firth,
    monotone_likelihood,
    profile_interval,
    supremum_lr,
)
from stats.plan import AnalysisPlan
from stats.tests import (
    STATISTICS_COLUMNS,
    OddsEstimate,
    binomial_odds_estimate,
    mcnemar_exact,
    paired_difference_interval,
    paired_wilcoxon,
)

COX_ANALYSES = ("relapse_free_cox_unmatched", "relapse_free_cox_stratified")


def _groups(windows: pd.DataFrame, plan: AnalysisPlan):
    """(group name, its patients' windows) for each group of the plan."""
    for group in plan.groups:
        yield group.name, windows[windows.group.isin(group.patients)]


def _shortened_note(block: pd.DataFrame) -> str:
    short = block[block.after_days < block.before_days]
    if short.empty:
        return ""
    listed = ", ".join(f"{r.patient_id} ({r.after_days} d)" for r in short.itertuples())
    return f"; after-window shortened by loss to follow-up: {listed}"


def _not_followed_note(block: pd.DataFrame) -> str:
    lost = block[block.drugs_12m.isna()]
    if lost.empty:
        return ""
    listed = ", ".join(f"{r.patient_id} (followed {r.after_days} d)" for r in lost.itertuples())
    return f": {listed}"


def _events_note(block: pd.DataFrame) -> str:
    """The events a survival model of ``block`` rests on: first relapses per window."""
    n = len(block)
    return (
        f"; first relapses: {int(block.relapse_before.sum())} of {n} windows before, "
        f"{int(block.relapse_after.sum())} of {n} after"
    )


def _events_note_km(km: KaplanMeierFitter) -> str:
    table = km.event_table
    return (
        f"; {int(table.observed.sum())} first relapses among {int(table.at_risk.iloc[0])} "
        f"windows, {int(table.censored.sum())} censored"
    )


def _row(analysis, group, measure, **values) -> dict:
    row = dict.fromkeys(STATISTICS_COLUMNS, np.nan)
    row.update(
        {
            "analysis": analysis,
            "group": group,
            "panel": "",
            "population": "",
            "measure": measure,
            "visit": "",
            "family": "unadjusted",
            "flag": "",
            "primary": False,
        }
    )
    row.update(values)
    if "estimate_exists" not in values:
        row["estimate_exists"] = bool(np.isfinite(row["effect"]))
    if "p_value" in values and "p_adjusted" not in values:
        row["p_adjusted"] = values["p_value"]  # clinical analyses are not adjusted
    return row


def paired_before_after(
    windows: pd.DataFrame, plan: AnalysisPlan, leave_out: frozenset[str] = frozenset()
) -> pd.DataFrame:
    """Relapse rate, number of drugs and prednisone dose, before vs after, paired Wilcoxon
    (analyses named in ``leave_out`` skipped)."""
    specs = [
        (
            "relapses_before_after",
            "relapses_per_year",
            "relapse_rate_before",
            "relapse_rate_after",
            "relapses per 365 days of observation in each window",
        ),
        (
            "drugs_baseline_12m",
            "n_immunosuppressive_drugs",
            "n_drugs_baseline",
            "n_drugs_12m",
            "drugs on the infusion day vs +12 months; patients not followed to +12 months left out",
        ),
        (
            "prednisone_before_after",
            "prednisone_mg_per_year",
            "prednisone_mg_per_year_before",
            "prednisone_mg_per_year_after",
            "cumulative prednisone per 365 days of observation",
        ),
    ]
    rows = []
    rule = plan.signed_rank.rule()
    for analysis, measure, before, after, what in specs:
        # Drugs are counted on two days, so a shortened window is not the point: who is out.
        at_12m = analysis == "drugs_baseline_12m"
        if analysis in leave_out or analysis not in plan.clinical:
            continue
        for group, block in _groups(windows, plan):
            res = paired_wilcoxon(block[before].to_numpy(float), block[after].to_numpy(float), rule)
            rows.append(
                _row(
                    analysis,
                    group,
                    measure,
                    n=res.n,
                    statistic=res.statistic,
                    p_value=res.p_value,
                    test=res.test,
                    effect=res.effect,
                    ci_low=res.ci_low,
                    ci_high=res.ci_high,
                    flag=res.flag,
                    primary=np.isfinite(res.p_value),
                    method=f"{res.method}; {what}"
                    + (_not_followed_note(block) if at_12m else _shortened_note(block))
                    + "; differences = after - before",
                )
            )
            if analysis == "relapses_before_after":
                rows.append(_rate_ratio_row(group, block))
    return pd.DataFrame(rows, columns=STATISTICS_COLUMNS)


@dataclass(frozen=True)
class RateRatio:
    """All relapses, after vs before, in the patient-stratified (conditional) Poisson model:
    given a patient's n relapses, those after infusion are binomial(n, rho w / (1 + rho w)),
    w = days after / days before, rho the rate ratio (the recurrent-event analysis of the
    paired windows; a shortened window enters by its days)."""

    mle: float  # conditional MLE: 0 or infinite when every relapse is on one side
    ci_low: float  # exact: inverts the two one-sided exact tests at (1 - level) / 2
    ci_high: float
    p_value: float  # exact conditional, two-sided: 2 x the smaller tail of S at rho = 1
    after: int  # S: relapses after infusion among informative patients
    total: int  # relapses of informative patients
    informative: int  # patients with a relapse and both windows observed


def conditional_poisson(
    after: np.ndarray,
    before: np.ndarray,
    days_after: np.ndarray,
    days_before: np.ndarray,
    level: float = 0.95,
) -> RateRatio:
    """The conditional Poisson rate ratio of paired counts with exposures: conditional MLE,
    exact interval and exact two-sided p from the convolution of the patients' binomials."""
    a, b = np.asarray(after, int), np.asarray(before, int)
    t_a, t_b = np.asarray(days_after, float), np.asarray(days_before, float)
    keep = (a + b > 0) & (t_a > 0) & (t_b > 0)
    a, n, w = a[keep], (a + b)[keep], (t_a / np.where(t_b > 0, t_b, 1.0))[keep]
    big_s, big_n = int(a.sum()), int(n.sum())
    if big_n == 0:
        return RateRatio(*[float("nan")] * 4, 0, 0, 0)

    def law(log_rho: float) -> np.ndarray:
        share = 1.0 / (1.0 + np.exp(-(log_rho + np.log(w))))
        dist = np.ones(1)
        for n_i, p_i in zip(n, share, strict=True):
            dist = np.convolve(dist, stats.binom.pmf(np.arange(n_i + 1), n_i, p_i))
        return dist

    null = law(0.0)
    p = float(min(1.0, 2.0 * min(null[: big_s + 1].sum(), null[big_s:].sum())))

    def score(log_rho: float) -> float:
        return float(big_s - (n / (1.0 + np.exp(-(log_rho + np.log(w))))).sum())

    if big_s == 0:
        mle = 0.0
    elif big_s == big_n:
        mle = float("inf")
    else:
        mle = float(np.exp(optimize.brentq(score, -40, 40, xtol=1e-12)))
    alpha = (1.0 - level) / 2.0
    low = (
        0.0
        if big_s == 0
        else float(np.exp(optimize.brentq(lambda r: law(r)[big_s:].sum() - alpha, -40, 40)))
    )
    high = (
        float("inf")
        if big_s == big_n
        else float(np.exp(optimize.brentq(lambda r: law(r)[: big_s + 1].sum() - alpha, -40, 40)))
    )
    return RateRatio(mle, low, high, p, big_s, big_n, int(keep.sum()))


def _rate_ratio_row(group: str, block: pd.DataFrame) -> dict:
    """The conditional Poisson row of one group: every relapse, each window's days."""
    res = conditional_poisson(
        block.relapses_after.to_numpy(int),
        block.relapses_before.to_numpy(int),
        block.after_days.to_numpy(float),
        block.before_days.to_numpy(float),
    )
    one_side = res.total > 0 and res.after in (0, res.total)
    return _row(
        "relapses_before_after",
        group,
        "relapse_rate_ratio_after_vs_before",
        n=len(block),
        statistic=float(res.after),
        p_value=res.p_value,
        test="conditional_poisson_exact",
        effect=res.mle,
        ci_low=res.ci_low,
        ci_high=res.ci_high,
        estimate_exists=bool(res.total > 0 and not one_side),
        flag="monotone_likelihood" if one_side else "",
        primary=False,
        method="patient-stratified (conditional) Poisson model of every relapse, the window's "
        "days as exposure (the paired recurrent-event analysis): given a patient's n relapses, "
        "those after infusion are binomial(n, rho w/(1 + rho w)), w = days after / days "
        f"before; of {res.total} relapses of {res.informative} patients with any, {res.after} "
        "after infusion; effect = conditional maximum-likelihood rate ratio after vs before, "
        "exact 95% CI (inverting the one-sided exact tests), p = exact conditional test at "
        "rho = 1 (two-sided, 2 x the smaller tail); statistic = relapses after"
        + ("; every relapse on one side: the MLE is 0 or infinite" if one_side else "")
        + _shortened_note(block),
    )


def stacked_windows(windows: pd.DataFrame) -> pd.DataFrame:
    """Two rows per patient (before, after) with duration, event and the 'after' indicator."""
    before = pd.DataFrame(
        {
            "patient_id": windows.patient_id,
            "group": windows.group,
            "duration": windows.time_to_relapse_before,
            "event": windows.relapse_before.astype(int),
            "after": 0,
        }
    )
    after = pd.DataFrame(
        {
            "patient_id": windows.patient_id,
            "group": windows.group,
            "duration": windows.time_to_relapse_after,
            "event": windows.relapse_after.astype(int),
            "after": 1,
        }
    )
    return pd.concat([before, after], ignore_index=True)


def fit_cox(
    frame: pd.DataFrame,
    duration: str,
    event: str,
    covariates: list[str],
    strata: list[str] | None = None,
) -> CoxPHFitter:
    """lifelines Cox proportional-hazards fit (Efron ties), started at beta = 0 so its
    likelihood-ratio test compares with the null model of the same strata."""
    model = CoxPHFitter()
    columns = [duration, event, *covariates, *(strata or [])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Converged to 1e-12 (lifelines: 1e-7), so the p-values agree with other
        # implementations to 1e-6 rather than to the optimiser's stopping point.
        model.fit(
            frame[columns],
            duration_col=duration,
            event_col=event,
            strata=strata,
            fit_options={"precision": 1e-12},
        )
    return model


@dataclass(frozen=True)
class PairOrder:
    """Which window of each patient relapsed first, where the other was still at risk: the
    pairs that carry information in a patient-stratified Cox model."""

    after_first: int
    before_first: int
    tied: int  # both windows relapsed on the same day

    @property
    def informative(self) -> int:
        return self.after_first + self.before_first


def pair_order(windows: pd.DataFrame) -> PairOrder:
    after = before = tied = 0
    for r in windows.itertuples():
        t_b, e_b = r.time_to_relapse_before, bool(r.relapse_before)
        t_a, e_a = r.time_to_relapse_after, bool(r.relapse_after)
        if e_b and e_a and t_b == t_a:
            tied += 1
        elif e_a and (t_a < t_b or (t_a == t_b and not e_b)):
            after += 1
        elif e_b and (t_b < t_a or (t_b == t_a and not e_a)):
            before += 1
    return PairOrder(after, before, tied)


def exact_conditional_pairs(order: PairOrder) -> float:
    """Exact conditional p of the patient-stratified Cox model for 1:1 pairs: under no effect,
    each informative pair is equally likely to relapse first in either window, so the count
    of 'after first' is binomial(informative, 1/2); two-sided, 2 x the smaller tail."""
    m, k = order.informative, order.after_first
    if m == 0:
        return float("nan")
    return float(min(1.0, 2.0 * stats.binom.cdf(min(k, m - k), m, 0.5)))


def exact_conditional_estimate(order: PairOrder, level: float = 0.95) -> OddsEstimate:
    """The hazard ratio from the informative pairs: with one relapse first per pair, the
    chance that it falls in the after-window is HR / (1 + HR), so the binomial proportion of
    'after first' pairs maps to the hazard ratio as p / (1 - p) (``binomial_odds_estimate``:
    median-unbiased, Clopper-Pearson interval, conditional MLE a / b)."""
    return binomial_odds_estimate(order.after_first, order.informative, level)


def _stacked_cox_data(data: pd.DataFrame, strata: list[str] | None) -> CoxData:
    return cox_data(
        data[["after"]].to_numpy(float),
        data.duration.to_numpy(float),
        data.event.to_numpy(int),
        data[strata[0]].to_numpy() if strata else None,
        ties="efron",
    )


PRIMARY_TEST = {
    "wald": "cox_wald",
    "likelihood_ratio": "cox_likelihood_ratio",
    "firth": "cox_firth",
    "exact_conditional": "cox_exact_conditional",
}
MLE_MISSING = (
    "monotone likelihood: the partial likelihood rises for ever as the hazard ratio goes to "
    "{side}, so the maximum-likelihood estimate does not exist; no estimate, interval or Wald "
    "p is given for it (an optimiser would stop at an arbitrary huge or tiny number, and a "
    "Wald p there is near 1 whatever the data: Hauck-Donner)"
)


def _model_rows(
    analysis: str, group: str, block: pd.DataFrame, strata: list[str] | None, plan: AnalysisPlan
) -> list[dict]:
    """The rows of one Cox model of one group: ordinary fit (Wald, likelihood ratio), Firth,
    and for the stratified model the exact conditional analysis of the pairs."""
    measure = "hazard_ratio_after_vs_before"
    data = stacked_windows(block)
    base = (
        "Cox proportional hazards, Efron ties, time to first relapse in each 12-month "
        "window, censored at window end or last follow-up"
        + (
            "; stratified by patient (the conditional model of each patient's two windows)"
            if strata
            else "; windows unmatched (a patient's two windows taken as independent)"
        )
        + _events_note(block)
        + _shortened_note(block)
    )
    row = partial(_row, analysis, group, measure, n=len(block))
    if not data.event.any():  # no patient or no relapse in the group: nothing to estimate
        return [
            row(test="cox_wald", estimate_exists=False, method=f"{base}; not estimable: no relapse")
        ]
    design = _stacked_cox_data(data, strata)
    direction = monotone_likelihood(design)
    separated = direction is not None
    flag = "monotone_likelihood" if separated else ""
    rows = []
    if separated:
        note = MLE_MISSING.format(side="0" if direction[0] < 0 else "infinity")
        sup = supremum_lr(design, direction)
        rows += [
            row(test="cox_wald", estimate_exists=False, flag=flag, method=f"{base}; {note}"),
            row(
                test="cox_likelihood_ratio",
                statistic=sup,
                p_value=float(stats.chi2.sf(sup, 1)),
                estimate_exists=False,
                flag=flag,
                method=f"{base}; likelihood-ratio test against beta = 0 with the likelihood "
                f"at its supremum (its limit as the estimate diverges); {note}",
            ),
        ]
    else:
        model = fit_cox(data, "duration", "event", ["after"], strata)
        s = model.summary.loc["after"]
        hr = {
            "effect": float(s["exp(coef)"]),
            "ci_low": float(s["exp(coef) lower 95%"]),
            "ci_high": float(s["exp(coef) upper 95%"]),
            "estimate_exists": True,
        }
        lr = model.log_likelihood_ratio_test()
        # The likelihood-ratio row's interval is the one its test inverts: the profile
        # likelihood limits (excludes 1 exactly when the LR p < 0.05; Wald's need not).
        low, high = profile_interval(design, fit_cox_firth(design, firth=False), 0)
        rows += [
            row(
                statistic=float(s["z"]),
                p_value=float(s["p"]),
                test="cox_wald",
                method=f"{base} (lifelines CoxPHFitter); Wald test (z); effect = hazard "
                "ratio, Wald 95% CI",
                **hr,
            ),
            row(
                statistic=float(lr.test_statistic),
                p_value=float(lr.p_value),
                test="cox_likelihood_ratio",
                method=f"{base} (lifelines CoxPHFitter); likelihood-ratio test (chi-squared, "
                "1 df, against beta = 0); effect = hazard ratio, profile-likelihood 95% CI "
                "(where twice the drop of the log partial likelihood is 3.84)",
                **{**hr, "ci_low": float(np.exp(low)), "ci_high": float(np.exp(high))},
            ),
        ]
    firth = firth_coefficient(design)
    rows.append(
        row(
            test="cox_firth",
            effect=float(np.exp(firth.coef)),
            ci_low=float(np.exp(firth.ci_low)),
            ci_high=float(np.exp(firth.ci_high)),
            statistic=firth.lr_statistic,
            p_value=firth.p_value,
            estimate_exists=firth.converged,
            flag=flag,
            method=f"{base}; Firth's penalised partial likelihood (Heinze & Schemper 2001, "
            "as R's coxphf); effect = penalised estimate of the hazard ratio, profile "
            "penalised-likelihood 95% CI; p = penalised likelihood-ratio test (chi-squared, "
            "1 df); statistic = its chi-squared"
            + ("" if firth.converged else "; WARNING: the penalised fit did not converge"),
        )
    )
    if strata:
        order = pair_order(block)
        est = exact_conditional_estimate(order)
        mle = "infinite" if np.isinf(est.conditional_mle) else f"{est.conditional_mle:.4g}"
        rows.append(
            row(
                test="cox_exact_conditional",
                statistic=float(order.after_first),
                p_value=exact_conditional_pairs(order),
                effect=est.median_unbiased,
                ci_low=est.ci_low,
                ci_high=est.ci_high,
                estimate_exists=bool(np.isfinite(est.median_unbiased)),
                flag=flag,
                method=f"{base}; exact conditional analysis: of {order.informative} "
                f"informative pairs, {order.after_first} relapsed first after infusion, "
                f"{order.before_first} before (binomial, 1/2, two-sided); {order.tied} "
                "pair(s) tied on the day left out; statistic = pairs relapsing first after; "
                "effect = median-unbiased hazard ratio p/(1-p) of the binomial proportion, "
                f"Clopper-Pearson 95% CI; conditional MLE a/b = {mle}",
            )
        )
    choice = plan.primary_p.cox_stratified if strata else plan.primary_p.cox_unmatched
    primary = PRIMARY_TEST[choice]
    if separated and choice in ("wald", "likelihood_ratio"):
        primary = "cox_firth"
    for r in rows:
        r["primary"] = r["test"] == primary
        if r["primary"] and primary != PRIMARY_TEST[choice]:
            r["method"] += (
                f"; primary p: the plan's {choice} falls to Firth's penalised likelihood-"
                "ratio test because the ordinary estimate does not exist"
            )
    return rows


def relapse_free_cox(windows: pd.DataFrame, plan: AnalysisPlan) -> pd.DataFrame:
    """Hazard of first relapse after vs before infusion, unmatched and stratified by patient
    (each patient's two windows a matched pair). Per model: the ordinary fit (Wald and
    likelihood-ratio rows; no numbers where its estimate does not exist), Firth's penalised
    fit, and for the stratified model the exact conditional analysis of the pairs. One row
    per test, told apart by ``test``; ``primary`` marks the plan's primary p."""
    rows = []
    for group, block in _groups(windows, plan):
        for analysis, strata in ((COX_ANALYSES[0], None), (COX_ANALYSES[1], ["patient_id"])):
            rows += _model_rows(analysis, group, block, strata, plan)
    return pd.DataFrame(rows, columns=STATISTICS_COLUMNS)


def _on_drug(text_column: pd.Series, drug: str) -> np.ndarray:
    return text_column.fillna("").str.split(";").apply(lambda s: drug in s).to_numpy(bool)


def _fisher_row(
    group: str, drug: str, on_bl: np.ndarray, on_12: np.ndarray, change: float, plan: AnalysisPlan
) -> dict:
    """Fisher's exact test of one drug, with the conditional maximum-likelihood odds ratio
    and its exact conditional 95% interval (as R's fisher.test reports them)."""
    n = len(on_bl)
    table = [
        [int(on_bl.sum()), n - int(on_bl.sum())],
        [int(on_12.sum()), n - int(on_12.sum())],
    ]
    sample_or, p = stats.fisher_exact(table)
    zero_cell = min(min(r) for r in table) == 0
    estimable = all(sum(r) > 0 for r in table) and all(sum(c) > 0 for c in zip(*table, strict=True))
    if estimable:
        conditional = stats.contingency.odds_ratio(table, kind="conditional")
        odds = float(conditional.statistic)
        low, high = (float(v) for v in conditional.confidence_interval(0.95))
    else:  # a whole row or column empty: no odds ratio at all
        odds = low = high = float("nan")
    if not estimable:
        note = (
            "; a whole row or column of the table is empty (every patient on, or every "
            "patient off, the drug at both dates): no odds ratio is defined"
        )
    elif zero_cell:
        note = (
            "; a zero cell: the odds ratio's maximum-likelihood estimate is 0 or infinite (it "
            "does not exist as a finite number); the exact conditional interval still bounds it"
        )
    else:
        note = ""
    return _row(
        "drug_use_fisher",
        group,
        drug,
        n=n,
        statistic=float(sample_or),
        p_value=float(p),
        test="fisher_exact",
        effect=odds,
        ci_low=low,
        ci_high=high,
        estimate_exists=bool(np.isfinite(odds) and 0 < odds),
        flag="zero_cell" if zero_cell else "",
        primary=plan.primary_p.drug_use == "fisher",
        method="Fisher's exact test, two-sided (scipy; the tables no more probable than the "
        "observed, not mid-p), table [[on, off] at baseline, [on, "
        f"off] at +12 months] = {table}, the two dates taken as independent groups; effect = "
        "conditional maximum-likelihood odds ratio (on the drug, baseline vs +12 months) "
        "with its exact conditional 95% CI (as R's fisher.test); statistic = sample odds "
        f"ratio; change in the share of patients on the drug {change:+.3g}; patients followed "
        "to +12 months" + note,
    )


def _mcnemar_rows(
    group: str, drug: str, on_bl: np.ndarray, on_12: np.ndarray, change: float, plan: AnalysisPlan
) -> list[dict]:
    """The exact McNemar test of one drug (effect: the change in the share on it, with
    Newcombe's paired score interval) and the paired odds ratio it tests, b / c (stopped / started),
    with its exact conditional estimate and Clopper-Pearson interval: given the b + c
    discordant patients, b is binomial with p = OR / (1 + OR) (Breslow & Day 1980, 5.2)."""
    n = len(on_bl)
    stopped, started, p = mcnemar_exact(on_bl, on_12)
    on_both = int((on_bl & on_12).sum())
    # The change, +12 months - baseline, is first - second with +12 months first.
    low, high = paired_difference_interval(
        on_both, started, stopped, n - on_both - stopped - started
    )
    counts = (
        f"{stopped} stopped, {started} started between baseline and +12 months "
        f"(discordant pairs b = {stopped}, c = {started}); patients followed to +12 months"
    )
    test_row = _row(
        "drug_use_mcnemar",
        group,
        drug,
        n=n,
        statistic=float(min(stopped, started)),
        p_value=p,
        test="mcnemar_exact",
        effect=change,
        ci_low=low,
        ci_high=high,
        primary=plan.primary_p.drug_use == "mcnemar",
        method="exact McNemar test, two-sided (binomial on the discordant pairs, 1/2; 2 x the "
        f"smaller tail; not mid-p): {counts}; statistic = the smaller count; effect = change "
        "in the share of patients on the drug (+12 months - baseline), 95% CI Newcombe's "
        "hybrid score interval for paired proportions (Newcombe 1998, method 10; "
        "approximate, so at the edge it need not agree with the exact p)",
    )
    est = binomial_odds_estimate(stopped, stopped + started)
    if stopped + started == 0:
        note = "; no patient started or stopped the drug: no odds ratio is defined"
    elif stopped == 0 or started == 0:
        note = (
            "; every discordant patient changed one way: the conditional MLE b/c is "
            f"{'0' if stopped == 0 else 'infinite'} (it does not exist as a finite number), "
            "the median-unbiased estimate and the exact interval still exist"
        )
    else:
        note = ""
    mle = "infinite" if np.isinf(est.conditional_mle) else f"{est.conditional_mle:.4g}"
    odds_row = _row(
        "drug_use_mcnemar",
        group,
        drug,
        n=n,
        statistic=float(stopped),
        p_value=p,
        test="mcnemar_conditional_or",
        effect=est.median_unbiased,
        ci_low=est.ci_low,
        ci_high=est.ci_high,
        estimate_exists=bool(np.isfinite(est.median_unbiased)),
        flag="zero_cell" if (stopped == 0) != (started == 0) else "",
        primary=False,
        method="paired odds ratio of being on the drug, baseline vs +12 months (b/c), exact "
        "conditional on the discordant pairs: b binomial(b + c, OR/(1 + OR)); effect = "
        "median-unbiased estimate (Hirji, Tsiatis & Mehta 1989), Clopper-Pearson 95% CI "
        "mapped to the odds (excludes 1 exactly when the McNemar p < 0.05); p = the exact "
        f"McNemar p; statistic = b; conditional MLE b/c = {mle}; {counts}" + note,
    )
    return [test_row, odds_row]


def drug_use(windows: pd.DataFrame, plan: AnalysisPlan) -> pd.DataFrame:
    """Per drug: patients on it at baseline vs at +12 months, among patients followed to +12
    months. Fisher's exact test (the trial's report; treats the two dates as independent
    groups; effect = the conditional odds ratio) and the exact McNemar test (the paired test:
    the same patients at both dates), as the plan lists them."""
    rows = []
    followed = windows[windows.drugs_12m.notna()]
    drugs = sorted(
        {d for text in windows.drugs_baseline for d in str(text).split(";") if d}
        | {d for text in followed.drugs_12m for d in str(text).split(";") if d}
    )
    for group, block in _groups(followed, plan):
        n = len(block)
        for drug in drugs:
            on_bl, on_12 = _on_drug(block.drugs_baseline, drug), _on_drug(block.drugs_12m, drug)
            change = (on_12.sum() - on_bl.sum()) / n if n else np.nan
            if "drug_use_fisher" in plan.clinical:
                rows.append(_fisher_row(group, drug, on_bl, on_12, change, plan))
            if "drug_use_mcnemar" in plan.clinical:
                rows += _mcnemar_rows(group, drug, on_bl, on_12, change, plan)
    return pd.DataFrame(rows, columns=STATISTICS_COLUMNS)


def kaplan_meier_curves(
    windows: pd.DataFrame, plan: AnalysisPlan
) -> dict[tuple[str, str], KaplanMeierFitter]:
    """Relapse-free survival per group and window ('before', 'after')."""
    curves = {}
    for group, block in _groups(windows, plan):
        if block.empty:
            continue
        data = stacked_windows(block)
        for label, flag in (("before", 0), ("after", 1)):
            part = data[data.after == flag]
            curves[(group, label)] = KaplanMeierFitter().fit(
                part.duration, part.event, label=f"12 months {label}"
            )
    return curves


KM_COLUMNS = [
    "group",
    "window",
    "time",
    "at_risk",
    "events",
    "censored",
    "survival",
    "ci_low",
    "ci_high",
]


def kaplan_meier_table(curves: dict[tuple[str, str], KaplanMeierFitter]) -> pd.DataFrame:
    """Every step of every Kaplan-Meier curve: time (days), numbers at risk, events and
    censored at that time, survival and its 95% CI (lifelines' exponential Greenwood)."""
    frames = []
    for (group, window), km in curves.items():
        table = km.event_table
        ci = km.confidence_interval_survival_function_
        frames.append(
            pd.DataFrame(
                {
                    "group": group,
                    "window": window,
                    "time": table.index.to_numpy(float),
                    "at_risk": table["at_risk"].to_numpy(int),
                    "events": table["observed"].to_numpy(int),
                    "censored": table["censored"].to_numpy(int),
                    "survival": km.survival_function_.iloc[:, 0].reindex(table.index).to_numpy(),
                    "ci_low": ci.iloc[:, 0].reindex(table.index).to_numpy(),
                    "ci_high": ci.iloc[:, 1].reindex(table.index).to_numpy(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=KM_COLUMNS)


def kaplan_meier_medians(curves: dict[tuple[str, str], KaplanMeierFitter]) -> pd.DataFrame:
    """Median relapse-free time per group and window as statistics rows (inf: not reached),
    with its 95% CI: the times at which the pointwise log(-log) limits of the curve cross 1/2
    (Brookmeyer & Crowley 1982; R survfit's and SAS LIFETEST's with conf.type log-log)."""
    from lifelines.utils import median_survival_times

    rows = []
    for (group, window), km in curves.items():
        limits = median_survival_times(km.confidence_interval_survival_function_)
        low, high = sorted(float(v) for v in limits.to_numpy().ravel())
        if not np.isfinite(low):  # even the lower limit stays above 1/2 (few or no events)
            low = high = float("nan")
        rows.append(
            _row(
                "kaplan_meier_median",
                group,
                f"median_days_{window}",
                n=int(km.event_table.at_risk.iloc[0]),
                statistic=float(km.event_table.observed.sum()),  # the events it rests on
                effect=float(km.median_survival_time_),
                ci_low=low,
                ci_high=high,
                test="kaplan_meier",
                family="not tested",
                estimate_exists=True,  # inf is an answer here: fewer than half relapsed
                method="Kaplan-Meier median time to first relapse in each patient's 12-month "
                "window before or after infusion, as the row's measure says (days: the first time "
                "the curve is at or below 1/2; R prints the midpoint where it sits at exactly "
                "1/2; not reached "
                "when fewer than half relapsed: 'inf' in statistics.csv); 95% CI: where the "
                "pointwise 95% limits of the curve (exponential Greenwood, log(-log)) cross "
                "1/2 (Brookmeyer-Crowley; an upper limit 'inf': the upper curve stays above "
                "1/2; none where even the lower limit stays above 1/2); statistic = first "
                "relapses (events) in the window" + _events_note_km(km),
            )
        )
    return pd.DataFrame(rows, columns=STATISTICS_COLUMNS)


def clinical_statistics(
    windows: pd.DataFrame, plan: AnalysisPlan, leave_out: frozenset[str] = frozenset()
) -> pd.DataFrame:
    """The clinical analyses the plan lists, as statistics rows; those named in ``leave_out``
    (their input is unusable) are not run."""
    parts = [paired_before_after(windows, plan, leave_out)]
    if "relapse_free_cox" in plan.clinical and not leave_out.issuperset(COX_ANALYSES):
        parts.append(relapse_free_cox(windows, plan))
        parts.append(kaplan_meier_medians(kaplan_meier_curves(windows, plan)))
    if not leave_out.issuperset({"drug_use_fisher", "drug_use_mcnemar"}):
        parts.append(drug_use(windows, plan))
    parts = [part for part in parts if not part.empty] or parts
    return pd.concat(parts, ignore_index=True)
