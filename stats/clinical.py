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
from scipy import stats

from stats.plan import AnalysisPlan
from stats.tests import STATISTICS_COLUMNS, mcnemar_exact, paired_wilcoxon

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
        }
    )
    row.update(values)
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
                    method=f"{res.method}; {what}; effect = median(after - before)"
                    + _shortened_note(block),
                )
            )
    return pd.DataFrame(rows, columns=STATISTICS_COLUMNS)


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


def relapse_free_cox(windows: pd.DataFrame, plan: AnalysisPlan) -> pd.DataFrame:
    """Hazard of first relapse after vs before infusion: unmatched (Wald and likelihood-ratio
    p), and stratified by patient, each patient's two windows a matched pair (Wald,
    likelihood-ratio and exact conditional p). One row per test, told apart by ``test``."""
    rows = []
    measure = "hazard_ratio_after_vs_before"
    for group, block in _groups(windows, plan):
        data = stacked_windows(block)
        for analysis, strata in ((COX_ANALYSES[0], None), (COX_ANALYSES[1], ["patient_id"])):
            base = (
                "Cox proportional hazards (lifelines CoxPHFitter, Efron ties), time to first "
                "relapse in each 12-month window, censored at window end or last follow-up"
                + ("; stratified by patient" if strata else "; windows unmatched")
                + _shortened_note(block)
            )
            try:
                model = fit_cox(data, "duration", "event", ["after"], strata)
            except Exception as exc:  # e.g. no events in a group: say so in the row
                rows.append(
                    _row(
                        analysis,
                        group,
                        measure,
                        n=len(block),
                        test="cox_wald",
                        method=f"{base}; not estimable ({exc})",
                    )
                )
                continue
            s = model.summary.loc["after"]
            hr = {
                "effect": float(s["exp(coef)"]),
                "ci_low": float(s["exp(coef) lower 95%"]),
                "ci_high": float(s["exp(coef) upper 95%"]),
            }
            lr = model.log_likelihood_ratio_test()
            # The tests of one fit share its hazard ratio: a row each, told apart by ``test``.
            cox_row = partial(_row, analysis, group, measure, n=len(block), **hr)
            rows += [
                cox_row(
                    statistic=float(s["z"]),
                    p_value=float(s["p"]),
                    test="cox_wald",
                    method=f"{base}; Wald test (z); effect = hazard ratio, Wald 95% CI",
                ),
                cox_row(
                    statistic=float(lr.test_statistic),
                    p_value=float(lr.p_value),
                    test="cox_likelihood_ratio",
                    method=f"{base}; likelihood-ratio test (chi-squared, 1 df, against beta = 0)",
                ),
            ]
            if strata:
                order = pair_order(block)
                rows.append(
                    cox_row(
                        statistic=float(order.after_first),
                        p_value=exact_conditional_pairs(order),
                        test="cox_exact_conditional",
                        method=f"{base}; exact conditional test: of {order.informative} "
                        f"informative pairs, {order.after_first} relapsed first after infusion, "
                        f"{order.before_first} before (binomial, 1/2, two-sided); "
                        f"{order.tied} pair(s) tied on the day left out; statistic = pairs "
                        "relapsing first after",
                    )
                )
    return pd.DataFrame(rows, columns=STATISTICS_COLUMNS)


def _on_drug(text_column: pd.Series, drug: str) -> np.ndarray:
    return text_column.fillna("").str.split(";").apply(lambda s: drug in s).to_numpy(bool)


def drug_use(windows: pd.DataFrame, plan: AnalysisPlan) -> pd.DataFrame:
    """Per drug: patients on it at baseline vs at +12 months, among patients followed to +12
    months. Fisher's exact test (the trial's report; treats the two dates as independent
    groups) and the exact McNemar test (the paired test: the same patients at both dates),
    as the plan lists them."""
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
                table = [
                    [int(on_bl.sum()), n - int(on_bl.sum())],
                    [int(on_12.sum()), n - int(on_12.sum())],
                ]
                odds, p = stats.fisher_exact(table)
                rows.append(
                    _row(
                        "drug_use_fisher",
                        group,
                        drug,
                        n=n,
                        statistic=float(odds),
                        p_value=float(p),
                        test="fisher_exact",
                        effect=change,
                        method="Fisher's exact test, two-sided (scipy), table [[on, off] at "
                        f"baseline, [on, off] at +12 months] = {table}, the two dates taken as "
                        "independent groups; statistic = sample odds ratio; effect = change "
                        "in the share of patients on the drug; patients followed to +12 months",
                    )
                )
            if "drug_use_mcnemar" in plan.clinical:
                stopped, started, p = mcnemar_exact(on_bl, on_12)
                rows.append(
                    _row(
                        "drug_use_mcnemar",
                        group,
                        drug,
                        n=n,
                        statistic=float(min(stopped, started)),
                        p_value=p,
                        test="mcnemar_exact",
                        effect=change,
                        method=f"exact McNemar test, two-sided (binomial on the discordant "
                        f"pairs): {stopped} stopped, {started} started between baseline and "
                        "+12 months; statistic = the smaller count; effect = change in the "
                        "share of patients on the drug; patients followed to +12 months",
                    )
                )
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
    """Median relapse-free time per group and window as statistics rows (inf: not reached)."""
    rows = []
    for (group, window), km in curves.items():
        rows.append(
            _row(
                "kaplan_meier_median",
                group,
                f"median_days_{window}",
                n=int(km.event_table.at_risk.iloc[0]),
                effect=float(km.median_survival_time_),
                test="kaplan_meier",
                family="not tested",
                method="Kaplan-Meier median time to first relapse in the 12-month window "
                f"{window} infusion (days; inf = not reached: fewer than half relapsed)",
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
