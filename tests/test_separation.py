"""Complete separation on constructed data: every row says when an estimate does not exist,
never prints a non-converged number for it, and gives the estimates that do exist, equal to
independently computed references (scipy.stats.binomtest, scipy's conditional odds ratio,
R's fisher.test, the penalised binomial)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from matplotlib.text import Text
from pydantic import ValidationError
from scipy import stats

from stats.clinical import drug_use, relapse_free_cox
from stats.plan import AnalysisPlan
from stats.tests import paired_wilcoxon
from tests.test_clinical_statistics import _pairs

# One group: each Cox model is fitted once per test (lifelines' stratified fit takes ~1 s).
CHILDREN = [{"name": "child", "title": "Children", "patients": ["child"]}]
PLAN = AnalysisPlan(groups=CHILDREN)


def _rows(windows: pd.DataFrame, plan: AnalysisPlan = PLAN) -> pd.DataFrame:
    table = relapse_free_cox(windows, plan)
    return table[table.group == "child"].set_index(["analysis", "test"])


@pytest.mark.parametrize(("after_first", "before_first"), [(0, 10), (10, 0)])
def test_separated_pairs_flag_the_missing_estimate_and_give_the_ones_that_exist(
    after_first, before_first
):
    rows = _rows(_pairs(after_first, before_first))
    for analysis in ("relapse_free_cox_unmatched", "relapse_free_cox_stratified"):
        block = rows.loc[analysis]
        assert (block.flag == "monotone_likelihood").all()
        # The ordinary fit: no finite hazard ratio, no interval, no Wald p.
        for test in ("cox_wald", "cox_likelihood_ratio"):
            assert not block.at[test, "estimate_exists"]
            assert np.isnan(block.loc[test, ["effect", "ci_low", "ci_high"]].astype(float)).all()
            assert "does not exist" in block.at[test, "method"]
        assert np.isnan(block.at["cox_wald", "p_value"])
        # Every finite hazard ratio printed is on a row whose estimate exists.
        finite = block[np.isfinite(block.effect.astype(float))]
        assert finite.estimate_exists.all() and len(finite) >= 1
    strat = rows.loc["relapse_free_cox_stratified"]
    # Stratified likelihood-ratio at the supremum: each pair contributes log 2.
    assert abs(strat.at["cox_likelihood_ratio", "statistic"] - 20 * np.log(2)) < 1e-8
    # Firth on the pairs: (a + 1/2) / (b + 1/2).
    firth = strat.loc["cox_firth"]
    assert abs(firth.effect - (after_first + 0.5) / (before_first + 0.5)) < 1e-8
    assert firth.ci_low < firth.effect < firth.ci_high and np.isfinite(firth.ci_high)
    # Exact conditional: binomtest for p and the Clopper-Pearson limits, mapped p/(1-p).
    exact = strat.loc["cox_exact_conditional"]
    reference = stats.binomtest(after_first, 10, 0.5)
    ci = reference.proportion_ci(confidence_level=0.95, method="exact")
    assert abs(exact.p_value - reference.pvalue) < 1e-12
    odds = [p / (1 - p) if p < 1 else np.inf for p in (ci.low, ci.high)]
    np.testing.assert_allclose([exact.ci_low, exact.ci_high], odds, rtol=1e-9)
    # Median-unbiased at the extreme: the proportion at which the observed count has
    # probability 1/2.
    p_mue = 0.5 ** (1 / 10) if after_first == 10 else 1 - 0.5 ** (1 / 10)
    assert abs(stats.binom.pmf(after_first, 10, p_mue) - 0.5) < 1e-12
    assert abs(exact.effect - p_mue / (1 - p_mue)) < 1e-10
    assert exact.estimate_exists and np.isfinite(exact.effect)
    # Primary p under the default plan: exact conditional (stratified), and the
    # likelihood-ratio falls to Firth's penalised test where the ordinary estimate is missing.
    assert strat.primary.sum() == 1 and strat.at["cox_exact_conditional", "primary"]
    unmatched = rows.loc["relapse_free_cox_unmatched"]
    assert unmatched.primary.sum() == 1 and unmatched.at["cox_firth", "primary"]
    assert "falls to Firth" in unmatched.at["cox_firth", "method"]


def test_not_separated_pairs_keep_the_ordinary_estimate_beside_firth():
    rows = _rows(_pairs(3, 9)).loc["relapse_free_cox_stratified"]
    assert (rows.flag == "").all() and rows.estimate_exists.all()
    assert abs(rows.at["cox_wald", "effect"] - 3 / 9) < 1e-4
    assert abs(rows.at["cox_firth", "effect"] - 3.5 / 9.5) < 1e-8
    exact = rows.loc["cox_exact_conditional"]
    # Median-unbiased: both one-sided exact p-values equal at the estimate's proportion.
    p = exact.effect / (1 + exact.effect)
    assert abs(stats.binom.sf(2, 12, p) - stats.binom.cdf(3, 12, p)) < 1e-9
    assert exact.ci_low < exact.effect < exact.ci_high


def test_the_plan_chooses_the_primary_p_and_wald_never_stays_primary_at_a_missing_estimate():
    plan = AnalysisPlan(
        groups=CHILDREN,
        primary_p={"cox_unmatched": "wald", "cox_stratified": "likelihood_ratio"},
    )
    fine = _rows(_pairs(3, 9), plan)
    assert fine.loc["relapse_free_cox_unmatched"].primary.idxmax() == "cox_wald"
    assert fine.loc["relapse_free_cox_stratified"].primary.idxmax() == "cox_likelihood_ratio"
    separated = _rows(_pairs(0, 10), plan)
    for analysis in ("relapse_free_cox_unmatched", "relapse_free_cox_stratified"):
        assert separated.loc[analysis].primary.idxmax() == "cox_firth"
    with pytest.raises(ValidationError, match="exact_conditional"):
        AnalysisPlan(primary_p={"cox_unmatched": "exact_conditional"})
    assert any("Primary p: unmatched Cox wald" in line for line in plan.describe())


def _drugs(on_baseline: list[bool], on_12m: list[bool]) -> pd.DataFrame:
    n = len(on_baseline)
    return pd.DataFrame(
        {
            "patient_id": [f"P{i}" for i in range(n)],
            "group": ["child"] * n,
            "drugs_baseline": ["mmf" if on else "" for on in on_baseline],
            "drugs_12m": ["mmf" if on else "" for on in on_12m],
        }
    )


def _fisher(windows: pd.DataFrame) -> pd.Series:
    rows = drug_use(windows, PLAN)
    return rows[(rows.analysis == "drug_use_fisher") & (rows.group == "child")].iloc[0]


def test_zero_cell_odds_ratio_is_flagged_with_the_conditional_estimate_and_exact_interval():
    # All 5 on the drug at baseline, 1 of 5 at +12 months: table [[5, 0], [1, 4]].
    row = _fisher(_drugs([True] * 5, [True, False, False, False, False]))
    reference = stats.contingency.odds_ratio([[5, 0], [1, 4]], kind="conditional")
    ci = reference.confidence_interval(0.95)
    assert row.flag == "zero_cell" and not row.estimate_exists
    assert np.isinf(row.effect) and np.isinf(reference.statistic)
    assert abs(row.ci_low - ci.low) < 1e-9 and np.isinf(row.ci_high)
    assert "does not exist as a finite number" in row.method
    assert abs(row.p_value - stats.fisher_exact([[5, 0], [1, 4]]).pvalue) < 1e-12


def test_odds_ratio_matches_r_fisher_test_tea_tasting():
    # R ?fisher.test, tea tasting [[3, 1], [1, 3]]: conditional MLE odds ratio 6.408309, and
    # (alternative = "greater") lower limit 0.3135693; R's root finder stops at ~1e-6.
    row = _fisher(_drugs([True, True, True, False], [True, False, False, False]))
    assert row.flag == "" and row.estimate_exists
    assert abs(row.effect / 6.408309 - 1) < 5e-6
    reference = stats.contingency.odds_ratio([[3, 1], [1, 3]], kind="conditional")
    ci = reference.confidence_interval(0.95)
    assert abs(row.ci_low - ci.low) < 1e-9 and abs(row.ci_high - ci.high) < 1e-6
    one_sided = reference.confidence_interval(0.95, alternative="greater")
    assert abs(one_sided.low / 0.3135693 - 1) < 5e-5


def test_signed_rank_with_all_differences_of_one_sign_is_flagged():
    res = paired_wilcoxon(np.arange(6.0), np.arange(6.0) + [1, 2, 3, 4, 5, 6])
    assert res.flag == "all_one_sign" and abs(res.p_value - 2 / 2**6) < 1e-12
    assert "smallest possible" in res.method
    assert paired_wilcoxon(np.zeros(6), np.array([1.0, -2, 3, 4, 5, 6])).flag == ""


class _Pages:
    """Stands in for PdfPages: keeps each page's texts and the figure checks' findings."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.problems: list[str] = []

    def savefig(self, fig) -> None:
        from reports.figure_checks import figure_problems

        self.problems += figure_problems(fig)
        self.texts += [t.get_text() for t in fig.findobj(Text)]
        # Notes are wrapped into lines: their words, one space apart.
        self.notes = [" ".join(t.split()) for t in self.texts]


def _children_separated() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every child relapses first before infusion (0 of 10 pairs after); adults mixed."""
    children = _pairs(0, 10)
    adults = _pairs(2, 2).assign(group="adult", patient_id=lambda f: "A" + f.patient_id)
    windows = pd.concat([children, adults], ignore_index=True)
    return windows, relapse_free_cox(windows, AnalysisPlan())


def _separated_context(plan: AnalysisPlan):
    """The report context of the separated study: the plan's groups, nothing else."""
    from reports.context import ReportContext

    return ReportContext(
        study="separated",
        visits=[],
        baseline="BL",
        panels={},
        strategy_hashes={},
        software="test",
        data_as_of="",
        clinical_cut="",
        groups=plan.group_titles,
        group_patients={g.name: g.patients for g in plan.groups},
    )


def test_figure_2a_states_the_separation_and_shows_the_estimates_that_exist():
    from reports.paper_figures import figure_2a
    from stats.clinical import kaplan_meier_curves

    windows, table = _children_separated()
    plan = AnalysisPlan()
    ctx = _separated_context(plan)
    pages = _Pages()
    figure_2a(pages, ctx, kaplan_meier_curves(windows, plan), table, windows)
    assert pages.problems == []
    children = next(t for t in pages.texts if t.startswith("Children"))
    lines = children.splitlines()
    assert "Unmatched: HR does not exist†" in lines[1]
    assert "Stratified: HR does not exist†" in children
    # Firth on the pairs: 0.5 / 10.5 = 0.0476; exact: median-unbiased 0.0718, Clopper-Pearson
    # 0 to 0.446 (binomtest above), p = 2 / 2^10 = 0.0020, the plan's primary.
    assert "Firth HR 0.0476 [0.00037, 0.369], p < 0.001" in children
    assert "exact HR 0.0718 [0, 0.446], p = 0.0020 (primary)" in children
    assert "Wald" not in children  # no Wald p computed at a diverging estimate
    adults = next(t for t in pages.texts if t.startswith("Adults"))
    assert "†" not in adults and "Wald p = " in adults and "(primary)" in adults
    footnote = next(t for t in pages.notes if "†" in t and "does not exist (monotone" in t)
    assert "no estimate, interval or Wald p" in footnote
    # Every number after 'HR' on the page is an estimate that exists: none from a
    # non-converged fit (lifelines would give ~1e-13 here).
    for value in re.findall(r"HR (\d[\d.e+-]*)", "\n".join(pages.texts)):
        assert 1e-3 < float(value) < 1e3, value


def test_clinical_statistics_page_marks_missing_estimates_and_the_primary_p():
    """The clinical page as a referee reads it: each analysis headed in words (its codes in
    brackets), groups, tests and flags in words, columns where their headers are."""
    from reports.cohort_report import _clinical_table
    from reports.figure_checks import raw_codes

    _, table = _children_separated()
    plan = AnalysisPlan()
    ctx = _separated_context(plan)
    pages = _Pages()
    _clinical_table(pages, table, ctx)
    assert pages.problems == []
    text = "\n".join(pages.texts)
    lines = text.splitlines()
    heading = lines.index(
        "Relapse-free survival: Cox, stratified by patient: hazard ratio of a first relapse, "
        "after vs before  [relapse_free_cox_stratified, hazard_ratio_after_vs_before]"
    )
    header = lines[heading + 1]
    block = lines[heading + 2 : lines.index("", heading)]
    child = [line for line in block if line.startswith("Children ")]
    wald = next(line for line in child if " Cox ML, Wald " in line)
    assert "†" in wald and wald.rstrip().endswith("no MLE (separation)")
    exact = next(line for line in child if "exact conditional (pairs)" in line)
    assert "[0, 0.446]" in exact and "0.0020*" in exact
    # Each value under its header: the p column's right edge, the interval's.
    assert exact.index("0.0020") + len("0.0020") == header.index(" p ") + 2
    assert exact.index("[0, 0.446]") + len("[0, 0.446]") == header.index("95% CI") + 6
    assert sum("*" in line for line in child) == 1  # one primary p per model and group
    assert "† the maximum-likelihood estimate does not exist" in text
    # No raw code in a table cell: no nan, no flag code outside the brackets of a heading.
    assert not raw_codes(text) and " nan " not in text
    assert not [line for line in block if "monotone_likelihood" in line]


def test_a_drug_everyone_takes_at_both_dates_has_no_odds_ratio():
    row = _fisher(_drugs([True] * 4, [True] * 4))
    assert np.isnan(row.effect) and not row.estimate_exists and row.p_value == 1.0
    assert "no odds ratio is defined" in row.method


def test_a_study_where_every_child_relapses_first_before_infusion(study_copy):
    """Through the pipeline's own writer: statistics.csv and Figure 2A of a study whose
    children all relapse before infusion and never after (the demo's adults unchanged)."""
    from cohort.store import Store
    from cohort.study import Study
    from reports.outputs import cohort_report_sections, write_results
    from reports.paper_figures import figure_2a

    clinical = study_copy / "clinical"
    patients = pd.read_csv(clinical / "patients.csv", parse_dates=["first_infusion_date"])
    relapses = pd.read_csv(clinical / "relapses.csv", parse_dates=["relapse_date"])
    infusion = relapses.patient_id.map(patients.set_index("patient_id").first_infusion_date)
    child = relapses.patient_id.isin(patients.patient_id[patients.group == "child"])
    relapses = relapses[~(child & (relapses.relapse_date >= infusion))]
    children = patients[patients.group == "child"]
    extra = pd.DataFrame(
        {
            "patient_id": children.patient_id,
            "relapse_date": children.first_infusion_date - pd.Timedelta(days=100),
        }
    )
    relapses = pd.concat([relapses, extra]).drop_duplicates().sort_values(["patient_id"])
    relapses.assign(relapse_date=relapses.relapse_date.dt.date.astype(str)).to_csv(
        clinical / "relapses.csv", index=False
    )
    study = Study(study_copy)
    store = Store(study.db_path)
    results, error = write_results(study, store)
    assert error == ""
    table = pd.read_csv(study_copy / "results" / "statistics.csv")
    rows = table[
        (table.group == "child") & (table.analysis == "relapse_free_cox_stratified")
    ].set_index("test")
    assert (rows.flag == "monotone_likelihood").all()
    assert not rows.at["cox_wald", "estimate_exists"] and np.isnan(rows.at["cox_wald", "effect"])
    assert np.isnan(rows.at["cox_wald", "p_value"])
    assert abs(rows.at["cox_firth", "effect"] - 0.5 / 10.5) < 1e-8
    exact = rows.loc["cox_exact_conditional"]
    assert exact.statistic == 0 and exact.primary
    assert abs(exact.p_value - stats.binomtest(0, 10).pvalue) < 1e-12
    limit = stats.binomtest(0, 10).proportion_ci(method="exact").high
    assert abs(exact.ci_high - limit / (1 - limit)) < 1e-9
    # Nothing flagged is printed as a finite ordinary estimate anywhere in the table.
    missing = table[table.estimate_exists == False]  # noqa: E712 (a CSV column)
    assert not np.isfinite(missing.effect[missing.test.str.startswith("cox_")]).any()
    _, sections = cohort_report_sections(study, store, results)
    store.close()
    pages = _Pages()
    for _, draw in sections:
        if getattr(draw, "func", None) is figure_2a:
            draw(pages)
    assert pages.problems == []
    children_title = next(t for t in pages.texts if t.startswith("Children"))
    assert "Stratified: HR does not exist†" in children_title
    assert "Firth HR 0.0476 [0.00037, 0.369]" in children_title
    assert "exact HR 0.0718 [0, 0.446], p = 0.0020 (primary)" in children_title
    assert any("does not exist (monotone likelihood" in t for t in pages.notes)
