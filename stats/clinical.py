"""The trial's clinical analyses, from per-patient windows (see cohort.clinical).

Each function takes the windows frame and returns rows of the statistics table; survival
models come from lifelines, exact tests from scipy.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from lifelines import CoxPHFitter, KaplanMeierFitter
from scipy import stats

from stats.immuno import GROUPS
from stats.tests import STATISTICS_COLUMNS, paired_wilcoxon

COX_ANALYSES = ("relapse_free_cox_unmatched", "relapse_free_cox_stratified")


def _groups(windows: pd.DataFrame):
    for group in GROUPS:
        yield group, windows if group == "all" else windows[windows.group == group]


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
        }
    )
    row.update(values)
    return row


def paired_before_after(
    windows: pd.DataFrame, leave_out: frozenset[str] = frozenset()
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
    for analysis, measure, before, after, what in specs:
        if analysis in leave_out:
            continue
        for group, block in _groups(windows):
            res = paired_wilcoxon(block[before].to_numpy(float), block[after].to_numpy(float))
            rows.append(
                _row(
                    analysis,
                    group,
                    measure,
                    n=res.n,
                    statistic=res.statistic,
                    p_value=res.p_value,
                    p_adjusted=res.p_value,
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
) -> pd.DataFrame:
    """lifelines Cox proportional-hazards fit (Efron ties); its summary frame."""
    model = CoxPHFitter()
    columns = [duration, event, *covariates, *(strata or [])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(frame[columns], duration_col=duration, event_col=event, strata=strata)
    return model.summary


def relapse_free_cox(windows: pd.DataFrame) -> pd.DataFrame:
    """Hazard of first relapse after vs before infusion: unmatched, and stratified by patient
    (each patient's two windows a matched pair)."""
    rows = []
    for group, block in _groups(windows):
        data = stacked_windows(block)
        for analysis, strata in (
            (COX_ANALYSES[0], None),
            (COX_ANALYSES[1], ["patient_id"]),
        ):
            base = (
                "Cox proportional hazards (lifelines CoxPHFitter, Efron ties), time to first "
                "relapse in each 12-month window, censored at window end or last follow-up"
                + ("; stratified by patient" if strata else "; windows unmatched")
            )
            try:
                s = fit_cox(data, "duration", "event", ["after"], strata).loc["after"]
            except Exception as exc:  # e.g. no events in a group: say so in the row
                rows.append(
                    _row(
                        analysis,
                        group,
                        "hazard_ratio_after_vs_before",
                        n=len(block),
                        method=f"{base}; not estimable ({exc})",
                    )
                )
                continue
            rows.append(
                _row(
                    analysis,
                    group,
                    "hazard_ratio_after_vs_before",
                    n=len(block),
                    statistic=float(s["z"]),
                    p_value=float(s["p"]),
                    p_adjusted=float(s["p"]),
                    effect=float(s["exp(coef)"]),
                    ci_low=float(s["exp(coef) lower 95%"]),
                    ci_high=float(s["exp(coef) upper 95%"]),
                    method=f"{base}; Wald test; effect = hazard ratio" + _shortened_note(block),
                )
            )
    return pd.DataFrame(rows, columns=STATISTICS_COLUMNS)


def drug_use_fisher(windows: pd.DataFrame) -> pd.DataFrame:
    """Per drug: patients on it at baseline vs at +12 months, Fisher's exact test (two-sided)."""
    rows = []
    followed = windows[windows.drugs_12m.notna()]
    drugs = sorted(
        {d for text in windows.drugs_baseline for d in text.split(";") if d}
        | {d for text in followed.drugs_12m for d in text.split(";") if d}
    )
    for group, block in _groups(followed):
        for drug in drugs:
            on_bl = int(block.drugs_baseline.str.split(";").apply(lambda s, d=drug: d in s).sum())
            on_12 = int(block.drugs_12m.str.split(";").apply(lambda s, d=drug: d in s).sum())
            n = len(block)
            table = [[on_bl, n - on_bl], [on_12, n - on_12]]
            odds, p = stats.fisher_exact(table)
            rows.append(
                _row(
                    "drug_use_fisher",
                    group,
                    drug,
                    n=n,
                    statistic=float(odds),
                    p_value=float(p),
                    p_adjusted=float(p),
                    effect=(on_12 - on_bl) / n if n else np.nan,
                    method=f"Fisher's exact test, two-sided (scipy), table [[on, off] at baseline, "
                    f"[on, off] at +12 months] = {table}; statistic = sample odds ratio; effect = "
                    "change in the share of patients on the drug; patients followed to +12 months",
                )
            )
    return pd.DataFrame(rows, columns=STATISTICS_COLUMNS)


def kaplan_meier_curves(windows: pd.DataFrame) -> dict[tuple[str, str], KaplanMeierFitter]:
    """Relapse-free survival per group and window ('before', 'after')."""
    curves = {}
    for group, block in _groups(windows):
        if block.empty:
            continue
        data = stacked_windows(block)
        for label, flag in (("before", 0), ("after", 1)):
            part = data[data.after == flag]
            curves[(group, label)] = KaplanMeierFitter().fit(
                part.duration, part.event, label=f"12 months {label}"
            )
    return curves


def clinical_statistics(
    windows: pd.DataFrame, leave_out: frozenset[str] = frozenset()
) -> pd.DataFrame:
    """All clinical analyses of the trial's report, as statistics rows; the analyses named in
    ``leave_out`` (their input is unusable) are not run."""
    parts = [paired_before_after(windows, leave_out)]
    if not leave_out.issuperset(COX_ANALYSES):
        parts.append(relapse_free_cox(windows))
    if "drug_use_fisher" not in leave_out:
        parts.append(drug_use_fisher(windows))
    return pd.concat(parts, ignore_index=True)
