"""Clinical analyses against published references and hand-derived results."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, stats

from cohort.clinical import ClinicalData, cumulative_dose_mg, load_clinical, patient_windows
from stats.clinical import (
    drug_use,
    fit_cox,
    kaplan_meier_curves,
    paired_before_after,
    relapse_free_cox,
    stacked_windows,
)
from stats.plan import AnalysisPlan

PLAN = AnalysisPlan()


def drug_use_fisher(windows: pd.DataFrame) -> pd.DataFrame:
    rows = drug_use(windows, PLAN)
    return rows[rows.analysis == "drug_use_fisher"]


def test_fisher_tea_tasting_reference():
    # R ?fisher.test, Agresti (1990) tea tasting, table [[3, 1], [1, 3]]: two-sided
    # p = 0.4857 (= 17/35). Here: 3 of 4 patients on a drug at baseline, 1 of 4 at +12 months.
    windows = pd.DataFrame(
        {
            "patient_id": list("ABCD"),
            "group": ["child"] * 4,
            "drugs_baseline": ["mmf", "mmf", "mmf", ""],
            "drugs_12m": ["mmf", "", "", ""],
        }
    )
    row = drug_use_fisher(windows).set_index(["group", "measure"]).loc[("all", "mmf")]
    assert abs(row.p_value - 17 / 35) < 1e-12
    assert row.statistic == 9.0 and row.n == 4
    assert "[[3, 1], [1, 3]]" in row.method


def test_cox_rossi_matches_published_coefficients():
    # Fox (2002), "Cox proportional-hazards regression for survival data", appendix to
    # An R and S-PLUS Companion to Applied Regression: coxph on the Rossi recidivism data.
    from lifelines.datasets import load_rossi

    published = {
        "fin": -0.37942,
        "age": -0.05744,
        "race": 0.31390,
        "wexp": -0.14979,
        "mar": -0.43370,
        "paro": -0.08487,
        "prio": 0.09150,
    }
    summary = fit_cox(load_rossi(), "week", "arrest", list(published)).summary
    for name, coef in published.items():
        assert abs(summary.loc[name, "coef"] - coef) < 1e-4, name
    assert abs(summary.loc["fin", "exp(coef)"] - 0.684) < 1e-3  # published exp(coef)


def _pairs(after_first: int, before_first: int) -> pd.DataFrame:
    """Matched pairs where exactly one window relapses, the other is censored at 365 days."""
    rows = []
    for i in range(after_first + before_first):
        after_relapses = i < after_first
        rows.append(
            {
                "patient_id": f"P{i:02d}",
                "group": "child",
                "before_days": 365,
                "after_days": 365,
                "time_to_relapse_before": 365 if after_relapses else 50 + i,
                "relapse_before": not after_relapses,
                "time_to_relapse_after": 40 + i if after_relapses else 365,
                "relapse_after": after_relapses,
            }
        )
    return pd.DataFrame(rows)


def test_stratified_cox_on_discordant_pairs_is_the_ratio_of_pair_counts():
    # With one event per stratum of two, the conditional likelihood is a product of
    # e^b/(1+e^b) and 1/(1+e^b) terms, maximised at e^b = a/b (a: after-first pairs).
    windows = _pairs(after_first=3, before_first=9)
    row = relapse_free_cox(windows, PLAN)
    strat = row[
        (row.analysis == "relapse_free_cox_stratified")
        & (row.group == "all")
        & (row.test == "cox_wald")
    ].iloc[0]
    assert abs(strat.effect - 3 / 9) < 1e-4
    assert strat.ci_low < strat.effect < strat.ci_high


def test_kaplan_meier_product_limit_by_hand():
    windows = _pairs(after_first=0, before_first=4)
    curve = kaplan_meier_curves(windows, PLAN)[("all", "before")]
    # Before-window relapses at days 50, 51, 52, 53 of 4 patients: S = 3/4, 2/4, 1/4, 0.
    values = curve.survival_function_.iloc[:, 0]
    np.testing.assert_allclose(values.loc[[50, 51, 52, 53]].to_numpy(), [0.75, 0.5, 0.25, 0.0])


def _tiny_clinical() -> ClinicalData:
    d = pd.Timestamp
    patients = pd.DataFrame(
        {
            "patient_id": ["A", "B"],
            "group": ["child", "adult"],
            "sex": ["F", "M"],
            "birth_date": [d("2015-01-01"), d("1999-01-01")],
            "first_infusion_date": [d("2024-01-01"), d("2024-01-01")],
            "last_follow_up_date": [d("2025-01-10"), d("2024-09-01")],
            "weight_kg": ["20", "70"],
            "height_cm": ["", "180"],
        }
    )
    relapses = pd.DataFrame(
        {
            "patient_id": ["A", "A", "B", "B"],
            "relapse_date": [d("2023-03-01"), d("2024-02-01"), d("2023-06-01"), d("2024-10-01")],
        }
    )
    meds = pd.DataFrame(
        {
            "patient_id": ["A", "A", "A", "B"],
            "drug": ["prednisone", "prednisone", "tacrolimus", "mmf"],
            "start_date": [d("2023-12-22"), d("2024-01-01"), d("2023-01-01"), d("2022-01-01")],
            "end_date": [d("2023-12-31"), d("2024-01-10"), d("2024-06-01"), pd.NaT],
            "daily_dose_mg": [10.0, 20.0, 4.0, 1000.0],
        }
    )
    visits = pd.DataFrame(columns=["patient_id", "visit", "visit_date", "lymphocytes_per_ul"])
    return ClinicalData(patients, visits, relapses, meds)


def test_windows_count_dose_and_censor_loss_to_follow_up():
    w = patient_windows(_tiny_clinical()).set_index("patient_id")
    a, b = w.loc["A"], w.loc["B"]
    assert (a.relapses_before, a.relapses_after) == (1, 1)
    assert a.time_to_relapse_after == 31 and a.relapse_after
    assert a.prednisone_mg_before == 10 * 10  # 22-31 Dec inclusive
    assert a.prednisone_mg_after == 20 * 10  # 1-10 Jan inclusive
    assert a.prednisone_mg_per_kg_after == 200 / 20
    assert a.drugs_baseline == "cni;prednisone" and a.drugs_12m == ""
    # B is lost at +8 months: the relapse at +9 months is outside the observed window, the
    # window is censored at follow-up (its last day observed: 1 Jan to 1 Sep inclusive), and
    # rates are per 365 days of observation.
    assert b.after_days == 245 and b.relapses_after == 0 and not b.relapse_after
    assert b.time_to_relapse_after == 245
    assert np.isnan(b.n_drugs_12m) and b.drugs_12m is None
    assert b.prednisone_mg_per_m2_after == 0


def test_a_relapse_on_the_last_follow_up_day_is_counted():
    clinical = _tiny_clinical()
    lost_day = clinical.patients.set_index("patient_id").last_follow_up_date["B"]
    relapses = pd.concat(
        [clinical.relapses, pd.DataFrame({"patient_id": ["B"], "relapse_date": [lost_day]})],
        ignore_index=True,
    )
    clinical = ClinicalData(clinical.patients, clinical.visits, relapses, clinical.medications)
    b = patient_windows(clinical).set_index("patient_id").loc["B"]
    # Seen on that day and relapsed: an event at day 244 of a 245-day window, not censored.
    assert b.relapses_after == 1 and b.relapse_after
    assert b.time_to_relapse_after == 244 and b.after_days == 245


def test_cumulative_dose_clips_to_the_window():
    meds = _tiny_clinical().medications
    total = cumulative_dose_mg(meds, "A", pd.Timestamp("2023-12-30"), pd.Timestamp("2024-01-03"))
    assert total == 2 * 10 + 2 * 20


def test_fisher_rows_leave_out_patients_not_followed_to_12_months():
    rows = drug_use_fisher(patient_windows(_tiny_clinical()))
    everyone = rows[rows.group == "all"].set_index("measure")
    assert (everyone.n == 1).all()  # only A reaches +12 months


def _signed_rank_p(after, before) -> float:
    """The declared method, by SciPy's own routes: the exact signed-rank distribution without
    ties or zeros, else SciPy's exact permutation test (all sign patterns) up to 20 pairs."""
    d = np.asarray(after, float) - np.asarray(before, float)
    d = d[d != 0]
    if np.unique(np.abs(d)).size == d.size and d.size == len(after):
        return stats.wilcoxon(d, method="exact").pvalue
    return stats.wilcoxon(d, method=stats.PermutationMethod(n_resamples=np.inf)).pvalue


def test_demo_clinical_p_values_reproduced_independently(demo_run):
    """Windows recomputed here from the CSVs with plain pandas, tests run with scipy and
    lifelines directly, compared with statistics.csv."""
    from lifelines import CoxPHFitter

    root, _, _ = demo_run
    clinical_dir = root / "clinical"
    patients = pd.read_csv(
        clinical_dir / "patients.csv", parse_dates=["first_infusion_date", "last_follow_up_date"]
    )
    relapses = pd.read_csv(clinical_dir / "relapses.csv", parse_dates=["relapse_date"])
    table = pd.read_csv(root / "results" / "statistics.csv")
    rows = []
    for p in patients.itertuples():
        start, inf = p.first_infusion_date - pd.Timedelta(days=365), p.first_infusion_date
        end = min(inf + pd.Timedelta(days=365), p.last_follow_up_date)
        mine = relapses.relapse_date[relapses.patient_id == p.patient_id]
        b = mine[(mine >= start) & (mine < inf)].sort_values()
        a = mine[(mine >= inf) & (mine < end)].sort_values()
        days_after = (end - inf).days
        rows.append(
            {
                "id": p.patient_id,
                "group": p.group,
                "rate_b": len(b),
                "rate_a": len(a) * 365 / days_after,
                "t_b": (b.iloc[0] - start).days if len(b) else 365,
                "e_b": int(len(b) > 0),
                "t_a": (a.iloc[0] - inf).days if len(a) else days_after,
                "e_a": int(len(a) > 0),
            }
        )
    mine = pd.DataFrame(rows)
    for group in ("all", "child", "adult"):
        sel = mine if group == "all" else mine[mine.group == group]
        expected = _signed_rank_p(sel.rate_a, sel.rate_b)
        got = table[(table.analysis == "relapses_before_after") & (table.group == group)]
        assert abs(got.p_value.iloc[0] - expected) < 1e-9
        long = pd.DataFrame(
            {
                "id": list(sel.id) * 2,
                "t": list(sel.t_b) + list(sel.t_a),
                "e": list(sel.e_b) + list(sel.e_a),
                "after": [0] * len(sel) + [1] * len(sel),
            }
        )
        for analysis, strata in (
            ("relapse_free_cox_unmatched", None),
            ("relapse_free_cox_stratified", ["id"]),
        ):
            cols = ["t", "e", "after"] + (strata or [])
            # Converged as far as the pipeline does: lifelines' default stops 3e-6 short in p.
            fit = CoxPHFitter().fit(
                long[cols], "t", "e", strata=strata, fit_options={"precision": 1e-12}
            )
            got = table[
                (table.analysis == analysis) & (table.group == group) & (table.test == "cox_wald")
            ].iloc[0]
            assert abs(got.p_value - fit.summary.loc["after", "p"]) < 1e-6
            assert abs(got.effect - fit.summary.loc["after", "exp(coef)"]) < 1e-6
    # Prednisone per 365 days, summed day by day; drug classes on the two dates; Fisher.
    meds = pd.read_csv(clinical_dir / "medications.csv", parse_dates=["start_date", "end_date"])
    classes = {"prednisone": "prednisone", "mmf": "mmf", "tacrolimus": "cni"}
    pred, drugs = [], []
    for p in patients.itertuples():
        inf = p.first_infusion_date
        end = min(inf + pd.Timedelta(days=365), p.last_follow_up_date)
        days = pd.date_range(inf - pd.Timedelta(days=365), end - pd.Timedelta(days=1))
        dose = pd.Series(0.0, index=days)
        mine = meds[meds.patient_id == p.patient_id]
        for m in mine[mine.drug == "prednisone"].itertuples():
            dose[(dose.index >= m.start_date) & (dose.index <= m.end_date)] += m.daily_dose_mg
        before, after = dose[dose.index < inf].sum(), dose[dose.index >= inf].sum()
        pred.append({"group": p.group, "b": before, "a": after * 365 / (end - inf).days})
        at12 = inf + pd.Timedelta(days=365)
        on = {
            day: {classes[m.drug] for m in mine.itertuples() if m.start_date <= day <= m.end_date}
            for day in (inf, at12)
        }
        drugs.append(
            {
                "group": p.group,
                "bl": on[inf],
                "m12": on[at12],
                "followed": p.last_follow_up_date >= at12,
            }
        )
    pred, drugs = pd.DataFrame(pred), pd.DataFrame(drugs)
    for group in ("all", "child", "adult"):
        sel = pred if group == "all" else pred[pred.group == group]
        got = table[(table.analysis == "prednisone_before_after") & (table.group == group)]
        assert abs(got.p_value.iloc[0] - _signed_rank_p(sel.a, sel.b)) < 1e-9
        d = (
            drugs[drugs.followed]
            if group == "all"
            else drugs[drugs.followed & (drugs.group == group)]
        )
        got = table[(table.analysis == "drugs_baseline_12m") & (table.group == group)]
        n_bl, n_12 = d.bl.apply(len), d.m12.apply(len)
        if (n_bl != n_12).any():
            assert abs(got.p_value.iloc[0] - _signed_rank_p(n_12, n_bl)) < 1e-9
        for drug in ("cni", "mmf", "prednisone"):
            on_bl, on_12 = (
                d.bl.apply(lambda s, x=drug: x in s).sum(),
                d.m12.apply(lambda s, x=drug: x in s).sum(),
            )
            expected = stats.fisher_exact([[on_bl, len(d) - on_bl], [on_12, len(d) - on_12]])
            got = table[
                (table.analysis == "drug_use_fisher")
                & (table.group == group)
                & (table.measure == drug)
            ]
            assert abs(got.p_value.iloc[0] - expected.pvalue) < 1e-9, (group, drug)
    # The loss to follow-up is stated, not hidden.
    cox_rows = table[
        table.analysis.str.startswith("relapse_free_cox") & table.group.isin(["all", "adult"])
    ]
    assert cox_rows.method.str.contains("P14").all()


def test_stacked_windows_two_rows_per_patient():
    w = patient_windows(_tiny_clinical())
    s = stacked_windows(w)
    assert len(s) == 4 and set(s.after) == {0, 1}


def test_demo_clinical_csvs_validate(study_copy):
    data = load_clinical(study_copy / "clinical", ["BL", "M1", "M3", "M6", "M9", "M12"])
    w = patient_windows(data)
    assert (w.after_days < 365).sum() == 1  # the adult lost at +8 months


def _conditional_odds_ratio(table, alpha: float = 0.05) -> tuple[float, float, float]:
    """The conditional MLE of a 2x2 table's odds ratio and its exact interval, from the
    definition (Cornfield 1956): given the margins, the top-left count x has the
    noncentral hypergeometric law P(x) ~ C(r1, x) C(r2, c1 - x) psi^x; the MLE solves
    E[x; psi] = x, the limits P(X >= x; low) = alpha/2 and P(X <= x; high) = alpha/2."""
    import math

    (a, b), (c, d) = table
    r1, r2, c1 = a + b, c + d, a + c
    support = range(max(0, c1 - r2), min(r1, c1) + 1)
    log_w = np.array([math.log(math.comb(r1, x) * math.comb(r2, c1 - x)) for x in support])
    xs = np.array(list(support), float)

    def law(log_psi: float) -> np.ndarray:
        w = log_w + xs * log_psi
        w = np.exp(w - w.max())
        return w / w.sum()

    mle = np.exp(optimize.brentq(lambda t: law(t) @ xs - a, -30, 30))
    low = np.exp(optimize.brentq(lambda t: law(t)[xs >= a].sum() - alpha / 2, -30, 30))
    high = np.exp(optimize.brentq(lambda t: law(t)[xs <= a].sum() - alpha / 2, -30, 30))
    return float(mle), float(low), float(high)


def test_fisher_conditional_odds_ratio_and_interval_from_the_definition():
    # R ?fisher.test, tea tasting, printed: conditional MLE 6.408309 and the one-sided
    # (alternative = "greater") 95% lower limit 0.3135693 (R's uniroot: about 4 digits).
    mle, one_sided_low, _ = _conditional_odds_ratio([[3, 1], [1, 3]], alpha=0.10)
    assert abs(mle / 6.408309 - 1) < 1e-5 and abs(one_sided_low / 0.3135693 - 1) < 1e-4
    rows = []
    for on_bl, on_12, n in ((3, 1, 4), (9, 4, 12), (5, 7, 11), (10, 3, 16)):
        windows = pd.DataFrame(
            {
                "patient_id": [f"P{i}" for i in range(n)],
                "group": ["child"] * n,
                "drugs_baseline": ["mmf" if i < on_bl else "" for i in range(n)],
                # independent of the baseline order, so the Fisher table is not degenerate
                "drugs_12m": ["mmf" if i >= n - on_12 else "" for i in range(n)],
            }
        )
        row = drug_use_fisher(windows).set_index(["group", "measure"]).loc[("all", "mmf")]
        table = [[on_bl, n - on_bl], [on_12, n - on_12]]
        expected = _conditional_odds_ratio(table)
        np.testing.assert_allclose([row.effect, row.ci_low, row.ci_high], expected, rtol=1e-6)
        assert abs(row.p_value - stats.fisher_exact(table).pvalue) < 1e-12
        rows.append(row)
    assert all(bool(r.estimate_exists) for r in rows)


def test_mcnemar_rows_give_the_paired_odds_ratio_with_its_exact_interval():
    # 7 of 15 stopped the drug, none started: McNemar p = 2/2^7; the paired odds ratio b/c is
    # infinite (no finite MLE), its median-unbiased estimate and Clopper-Pearson limits exist:
    # p_mue = 0.5^(1/7), lower limit of p = 0.025^(1/7) (beta(7, 1) quantile).
    n = 15
    windows = pd.DataFrame(
        {
            "patient_id": [f"P{i}" for i in range(n)],
            "group": ["child"] * n,
            "drugs_baseline": ["cni;mmf" if i < 10 else "mmf" for i in range(n)],
            "drugs_12m": ["cni;mmf" if 7 <= i < 10 else "mmf" for i in range(n)],
        }
    )
    rows = drug_use(windows, PLAN)
    rows = rows[(rows.analysis == "drug_use_mcnemar") & (rows.group == "all")]
    cni = rows[rows.measure == "cni"].set_index("test")
    assert list(cni.index) == ["mcnemar_exact", "mcnemar_conditional_or"]
    test, odds = cni.loc["mcnemar_exact"], cni.loc["mcnemar_conditional_or"]
    assert test.p_value == 2 / 2**7 and abs(test.effect - (-7 / 15)) < 1e-12 and test.primary
    # The change, +12 months - baseline, with Newcombe's paired interval (3 on cni at both
    # dates, 0 started, 7 stopped, 5 never): below 0, as the exact McNemar p < 0.05 says.
    from stats.tests import paired_difference_interval

    assert (test.ci_low, test.ci_high) == paired_difference_interval(3, 0, 7, 5)
    assert test.ci_low < test.effect < test.ci_high < 0 and "Newcombe" in test.method
    assert odds.p_value == test.p_value and not odds.primary and odds.statistic == 7
    p_mue, p_low = 0.5 ** (1 / 7), 0.025 ** (1 / 7)
    assert abs(odds.effect - p_mue / (1 - p_mue)) < 1e-9
    assert abs(odds.ci_low - p_low / (1 - p_low)) < 1e-9 and np.isinf(odds.ci_high)
    assert odds.flag == "zero_cell" and "conditional MLE b/c = infinite" in odds.method
    assert "Clopper-Pearson" in odds.method and "b = 7, c = 0" in odds.method
    # Nobody changed mmf: no odds ratio, and the row says why.
    mmf = rows[rows.measure == "mmf"].set_index("test").loc["mcnemar_conditional_or"]
    assert not mmf.estimate_exists and np.isnan(mmf.effect) and "no odds ratio" in mmf.method
    assert mmf.p_value == 1.0


def test_kaplan_meier_table_matches_statsmodels_with_log_log_greenwood_limits():
    # Windows with relapses, ties and censoring (one after-window shortened at 244 days):
    # steps, numbers at risk and survival as statsmodels' SurvfuncRight, and the limits
    # lifelines prints, exp(-exp(log(-log S) +- z se)), se from Greenwood's variance.
    from statsmodels.duration.survfunc import SurvfuncRight

    from stats.clinical import kaplan_meier_table

    windows, t_b, t_a = _censored_windows()
    km = kaplan_meier_table(kaplan_meier_curves(windows, PLAN))
    z = stats.norm.ppf(0.975)
    for window, time, event in (
        ("before", t_b, windows.relapse_before),
        ("after", t_a, windows.relapse_after),
    ):
        ref = SurvfuncRight(time, event.astype(int))
        mine = km[(km.group == "all") & (km.window == window)].set_index("time")
        steps = mine[mine.events > 0]
        np.testing.assert_allclose(steps.index, ref.surv_times)
        np.testing.assert_allclose(steps.survival, ref.surv_prob, rtol=1e-12)
        np.testing.assert_array_equal(steps.at_risk, ref.n_risk)
        ok = (ref.surv_prob < 1) & (ref.surv_prob > 0)
        s, se = ref.surv_prob[ok], ref.surv_prob_se[ok]
        log_se = se / (s * np.abs(np.log(s)))
        low = np.exp(-np.exp(np.log(-np.log(s)) + z * log_se))
        high = np.exp(-np.exp(np.log(-np.log(s)) - z * log_se))
        np.testing.assert_allclose(steps.ci_low[ok], low, rtol=1e-6)
        np.testing.assert_allclose(steps.ci_high[ok], high, rtol=1e-6)


def _censored_windows(seed: int = 11, n: int = 16):
    """Windows with relapses, ties and censoring (one after-window shortened at 244 days)."""
    rng = np.random.default_rng(seed)
    t_b = rng.integers(10, 400, n).clip(max=365)
    t_a = rng.integers(10, 500, n).clip(max=365)
    t_a[3], t_b[5] = 244, t_b[6]  # a loss to follow-up; a tie
    windows = pd.DataFrame(
        {
            "patient_id": [f"P{i}" for i in range(n)],
            "group": ["child"] * n,
            "time_to_relapse_before": t_b,
            "relapse_before": t_b < 365,
            "time_to_relapse_after": t_a,
            "relapse_after": (t_a < 365) & (np.arange(n) != 3),
        }
    )
    return windows, t_b, t_a


@pytest.mark.parametrize(("seed", "n"), [(11, 16), (12, 15), (13, 15)])
def test_kaplan_meier_median_and_its_interval_match_statsmodels(seed, n):
    # statsmodels inverts z-tests of log(-log S(t)) = log(-log 1/2) (SAS LIFETEST's method):
    # the same interval as where lifelines' pointwise limits cross 1/2. The row's statistic
    # is the number of first relapses the median rests on.
    from statsmodels.duration.survfunc import SurvfuncRight

    from stats.clinical import kaplan_meier_medians

    windows, t_b, t_a = _censored_windows(seed, n)
    rows = kaplan_meier_medians(kaplan_meier_curves(windows, PLAN))
    rows = rows[rows.group == "all"].set_index("measure")
    compared = []
    for window, time, event in (
        ("before", t_b, windows.relapse_before),
        ("after", t_a, windows.relapse_after),
    ):
        row = rows.loc[f"median_days_{window}"]
        ref = SurvfuncRight(time, event.astype(int))
        # The median is the first time with S <= 1/2 (Klein & Moeschberger 4.5); statsmodels
        # takes S < 1/2 and R the midpoint when S sits at exactly 1/2 (n even, no censoring).
        reached = np.flatnonzero(ref.surv_prob <= 0.5)
        assert row.effect == (ref.surv_times[reached[0]] if reached.size else np.inf)
        if reached.size and not np.isclose(ref.surv_prob, 0.5).any():
            assert row.effect == ref.quantile(0.5)
            compared.append(window)
        assert (row.ci_low, row.ci_high) == tuple(float(v) for v in ref.quantile_ci(0.5))
        assert row.statistic == event.sum() and row.n == len(windows)
        assert f"{int(event.sum())} first relapses among {len(windows)} windows" in row.method
    assert compared or n % 2 == 0  # with n odd and no early censoring, S never equals 1/2


def test_cox_rows_name_the_events_per_window_and_the_model():
    windows, _, _ = _censored_windows()
    windows = windows.assign(before_days=365, after_days=365)
    rows = relapse_free_cox(windows, PLAN)
    rows = rows[rows.group != "adult"]  # no adult in these windows
    events = (
        f"first relapses: {int(windows.relapse_before.sum())} of 16 windows before, "
        f"{int(windows.relapse_after.sum())} of 16 after"
    )
    assert rows.method.str.contains(events, regex=False).all()
    strat = rows[rows.analysis == "relapse_free_cox_stratified"]
    assert strat.method.str.contains("conditional model of each patient's two windows").all()
    unmatched = rows[rows.analysis == "relapse_free_cox_unmatched"]
    assert unmatched.method.str.contains("taken as independent").all()


def test_cox_rows_match_lifelines_and_statsmodels_with_ties_and_censoring():
    # Both models on windows with censoring, a shortened window and a tied day: hazard
    # ratio, Wald interval and p, likelihood-ratio p, against lifelines called directly and
    # statsmodels' PHReg (Efron), the stratified one with a stratum per patient.
    from lifelines import CoxPHFitter
    from statsmodels.duration.hazard_regression import PHReg

    windows, t_b, t_a = _censored_windows(seed=21)
    windows = windows.assign(before_days=365, after_days=365)
    rows = relapse_free_cox(windows, PLAN)
    long = pd.DataFrame(
        {
            "t": np.r_[t_b, t_a],
            "e": np.r_[windows.relapse_before, windows.relapse_after].astype(int),
            "after": np.r_[np.zeros(16), np.ones(16)],
            "id": np.r_[windows.patient_id, windows.patient_id],
        }
    )
    for analysis, strata in (
        ("relapse_free_cox_unmatched", None),
        ("relapse_free_cox_stratified", ["id"]),
    ):
        mine = rows[(rows.analysis == analysis) & (rows.group == "all")].set_index("test")
        assert not mine.flag.astype(bool).any()  # a finite estimate exists here
        cols = ["t", "e", "after"] + (strata or [])
        fit = CoxPHFitter().fit(
            long[cols], "t", "e", strata=strata, fit_options={"precision": 1e-12}
        )
        s = fit.summary.loc["after"]
        wald = mine.loc["cox_wald"]
        assert abs(wald.effect - s["exp(coef)"]) < 1e-6 and abs(wald.p_value - s["p"]) < 1e-6
        assert abs(wald.ci_low - s["exp(coef) lower 95%"]) < 1e-6
        assert abs(wald.ci_high - s["exp(coef) upper 95%"]) < 1e-6
        model = PHReg(
            long.t,
            long[["after"]],
            status=long.e,
            ties="efron",
            strata=long.id if strata else None,
        )
        ref = model.fit()
        lr = 2 * (ref.llf - model.loglike(np.zeros(1)))
        assert abs(mine.loc["cox_likelihood_ratio", "p_value"] - stats.chi2.sf(lr, 1)) < 1e-6
        assert abs(wald.effect - np.exp(ref.params[0])) < 1e-5
        z = stats.norm.ppf(0.975)
        limits = np.exp(ref.params[0] + np.array([-z, z]) * ref.bse[0])
        np.testing.assert_allclose([wald.ci_low, wald.ci_high], limits, rtol=1e-5)
        # The LR row's limits: where PHReg's log partial likelihood is 3.84/2 below its top.
        lr_row = mine.loc["cox_likelihood_ratio"]
        for limit in (lr_row.ci_low, lr_row.ci_high):
            drop = 2 * (ref.llf - model.loglike(np.array([np.log(limit)])))
            assert abs(drop - stats.chi2.ppf(0.95, 1)) < 1e-6
        assert lr_row.ci_low < lr_row.effect < lr_row.ci_high


def test_kaplan_meier_median_without_relapses_has_no_interval():
    windows = pd.DataFrame(
        {
            "patient_id": ["A", "B", "C"],
            "group": ["child"] * 3,
            "time_to_relapse_before": [365, 365, 200],
            "relapse_before": [False, False, False],
            "time_to_relapse_after": [100, 365, 365],
            "relapse_after": [True, False, False],
        }
    )
    from stats.clinical import kaplan_meier_medians

    rows = kaplan_meier_medians(kaplan_meier_curves(windows, PLAN))
    before = rows[(rows.group == "all") & (rows.measure == "median_days_before")].iloc[0]
    assert np.isinf(before.effect) and before.statistic == 0
    assert np.isnan(before.ci_low) and np.isnan(before.ci_high)


def test_conditional_poisson_rate_ratio_against_statsmodels_and_enumeration():
    # Every relapse of paired windows, one after-window shortened: the conditional MLE as
    # statsmodels' ConditionalPoisson (patient groups, log-days offset); the exact p and the
    # exact limits from enumerating every split of each patient's relapses.
    import itertools
    import warnings

    from statsmodels.discrete.conditional_models import ConditionalPoisson

    from stats.clinical import conditional_poisson

    before = np.array([3, 2, 1, 0, 2, 1, 0])
    after = np.array([1, 1, 0, 1, 0, 2, 0])
    days_b = np.full(7, 365.0)
    days_a = np.array([365, 365, 365, 200, 365, 365, 365.0])
    res = conditional_poisson(after, before, days_a, days_b)
    assert (res.after, res.total, res.informative) == (5, 14, 6)

    counts = np.r_[before, after]
    groups = np.r_[np.arange(7), np.arange(7)]
    exog = np.r_[np.zeros(7), np.ones(7)][:, None]
    with warnings.catch_warnings():  # the patient without relapses carries no information
        warnings.simplefilter("ignore")
        ref = ConditionalPoisson(
            counts, exog, groups=groups, offset=np.log(np.r_[days_b, days_a])
        ).fit(disp=0)
    assert abs(res.mle - np.exp(ref.params[0])) < 1e-6

    keep = before + after > 0
    n, w = (before + after)[keep], (days_a / days_b)[keep]

    def tails(rho: float) -> tuple[float, float]:
        share = rho * w / (1 + rho * w)
        low = high = 0.0
        for split in itertools.product(*(range(k + 1) for k in n)):
            prob = np.prod(
                [stats.binom.pmf(x, k, q) for x, k, q in zip(split, n, share, strict=True)]
            )
            s = sum(split)
            low += prob * (s <= res.after)
            high += prob * (s >= res.after)
        return low, high

    low_tail, high_tail = tails(1.0)
    assert abs(res.p_value - min(1.0, 2 * min(low_tail, high_tail))) < 1e-12
    assert abs(tails(res.ci_low)[1] - 0.025) < 1e-9
    assert abs(tails(res.ci_high)[0] - 0.025) < 1e-9
    # Every relapse before infusion: no finite MLE, the upper limit still exists.
    none_after = conditional_poisson(np.zeros(7, int), before, days_a, days_b)
    assert none_after.mle == 0 and none_after.ci_low == 0 and np.isfinite(none_after.ci_high)
    # P(S = 0) at rho = 1: each patient's relapses all before, (1/(1 + w))^n; here w = 1 for
    # every patient with a relapse (the shortened window's patient has none), so 2 x 2^-9.
    assert none_after.total == 9 and abs(none_after.p_value - 2 / 2**9) < 1e-15


def test_relapse_rows_carry_the_rate_ratio_after_the_wilcoxon():
    w = patient_windows(_tiny_clinical())
    rows = paired_before_after(w, PLAN)
    relapse_rows = rows[rows.analysis == "relapses_before_after"]
    everyone = relapse_rows[relapse_rows.group == "all"]
    assert list(everyone.test) == ["signed_rank_permutation", "conditional_poisson_exact"]
    ratio = everyone.iloc[1]
    assert ratio.measure == "relapse_rate_ratio_after_vs_before" and not ratio.primary
    assert "B (245 d)" in ratio.method  # the shortened window enters by its days
