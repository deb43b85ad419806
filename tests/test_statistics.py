"""Statistics against published references, not against our own code."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from stats.immuno import wilcoxon_vs_baseline
from stats.plan import AnalysisPlan
from stats.tests import SignedRankRule, benjamini_hochberg, mcnemar_exact, paired_wilcoxon

# Hollander & Wolfe (1973), p. 29: Hamilton depression scale factor IV, first (x) and second
# (y) visit; R's ?wilcox.test example. wilcox.test(x, y, paired = TRUE) gives V = 40 and
# two-sided exact p = 0.03906 (= 20/512: 10 of the 512 sign patterns are as extreme each side).
HW_X = [1.83, 0.50, 1.62, 2.48, 1.68, 1.88, 1.55, 3.06, 1.30]
HW_Y = [0.878, 0.647, 0.598, 2.05, 1.06, 1.29, 1.06, 3.14, 1.29]


def test_wilcoxon_hollander_wolfe_reference():
    res = paired_wilcoxon(before=np.array(HW_X), after=np.array(HW_Y))
    assert res.n == 9
    assert abs(res.p_value - 20 / 512) < 1e-12
    assert res.statistic == 45 - 40  # scipy reports min(V+, V-); R reports V+ = 40
    assert "exact" in res.method
    assert abs(res.effect - np.median(np.array(HW_Y) - np.array(HW_X))) < 1e-12


def test_wilcoxon_with_zero_differences_is_an_exact_permutation_test_and_says_so():
    # One zero difference dropped, five positive: V+ = 15 is the most extreme of the 2^5 sign
    # patterns, so two-sided p = 2/32. SciPy's 'auto' would not say which method it ran.
    res = paired_wilcoxon(np.array([1, 2, 3, 4, 5, 6.0]), np.array([1, 3, 5, 7, 9, 12.0]))
    assert res.test == "signed_rank_permutation"
    assert "1 zero difference(s) dropped" in res.method and "2^5 sign patterns" in res.method
    assert res.p_value == 2 / 32


def test_wilcoxon_with_ties_enumerates_mid_ranks_as_scipys_permutation_test():
    before = np.array([10, 12, 9, 14, 11, 13, 8, 15, 10, 12.0])
    after = np.array([12, 14, 8, 18, 13, 12, 10, 19, 10, 15.0])  # |d| tied, one zero
    res = paired_wilcoxon(before, after)
    d = (after - before)[after != before]
    expected = stats.wilcoxon(d, method=stats.PermutationMethod(n_resamples=np.inf)).pvalue
    assert res.test == "signed_rank_permutation" and "mid-ranks" in res.method
    assert abs(res.p_value - expected) < 1e-12


def test_wilcoxon_normal_approximation_is_rs_with_continuity_correction():
    # R: wilcox.test(x, y, paired = TRUE, exact = FALSE, correct = TRUE): V = 40,
    # z = (40 - 22.5 - 0.5) / sqrt(9 * 10 * 19 / 24), p = 0.04400.
    rule = SignedRankRule(exact_below=5, enumerate_up_to=5)
    res = paired_wilcoxon(np.array(HW_X), np.array(HW_Y), rule)
    z = (40 - 22.5 - 0.5) / np.sqrt(9 * 10 * 19 / 24)
    assert res.test == "signed_rank_normal_cc" and "continuity" in res.method
    assert abs(res.p_value - 2 * stats.norm.sf(z)) < 1e-12
    assert abs(res.p_value - 0.04400) < 5e-5


def test_mcnemar_exact_counts_discordant_pairs():
    # 7 patients stopped the drug, none started, 3 stayed on: p = 2 x (1/2)^7 = 0.015625.
    on_baseline = np.array([1] * 10 + [0] * 3, bool)
    on_12m = np.array([0] * 7 + [1] * 3 + [0] * 3, bool)
    assert mcnemar_exact(on_baseline, on_12m) == (7, 0, 2 / 128)
    assert mcnemar_exact(on_baseline, on_baseline)[2] == 1.0


def test_benjamini_hochberg_matches_hand_computation():
    # sorted p: 0.005, 0.01, 0.03, 0.04 -> x4/1, x4/2, x4/3, x4/4 -> 0.02, 0.02, 0.04, 0.04
    adjusted = benjamini_hochberg(np.array([0.01, 0.04, 0.03, 0.005, np.nan]))
    np.testing.assert_allclose(adjusted[:4], [0.02, 0.04, 0.04, 0.02])
    assert np.isnan(adjusted[4])


def test_wilcoxon_vs_baseline_pairs_only_patients_with_both_visits():
    rows = []
    for i, (bl, m1) in enumerate(zip(HW_X, HW_Y, strict=True)):
        for visit, value in (("BL", bl), ("M1", m1)):
            rows.append(
                {
                    "patient_id": f"P{i}",
                    "visit": visit,
                    "panel": "BCELL",
                    "population": "cd19_b",
                    "pct_parent": value,
                    "pct_lymphocytes": value,
                    "cells_per_ul": value,
                }
            )
    rows.append(
        {
            "patient_id": "P99",
            "visit": "M1",
            "panel": "BCELL",
            "population": "cd19_b",
            "pct_parent": 9.0,
            "pct_lymphocytes": 9.0,
            "cells_per_ul": 9.0,
        }
    )
    groups = {f"P{i}": ("child" if i < 5 else "adult") for i in range(9)} | {"P99": "child"}
    table = wilcoxon_vs_baseline(pd.DataFrame(rows), groups, "BL", ["BL", "M1"], AnalysisPlan())
    everyone = table[(table.group == "all") & (table.measure == "pct_parent")].iloc[0]
    assert everyone.n == 9
    assert abs(everyone.p_value - 20 / 512) < 1e-12
    children = table[(table.group == "child") & (table.measure == "pct_parent")].iloc[0]
    assert children.n == 5


def test_median_interval_is_the_order_statistics_of_the_published_tables():
    """The distribution-free 95% interval of a median (Conover, Practical Nonparametric
    Statistics, 3rd ed., 3.2; Nair 1940's table): n = 9 and 10 take the 2nd value from each
    end, n = 20 the 6th, n = 6 the extremes (coverage 96.9%); n = 5 has none (93.8% < 95%).
    The Wilcoxon rows carry it as the interval of their effect, the median difference."""
    from stats.tests import median_interval

    for n, rank in ((6, 1), (9, 2), (10, 2), (16, 4), (20, 6)):
        values = np.random.default_rng(n).permutation(np.arange(1.0, n + 1))
        assert median_interval(values) == (rank, n + 1 - rank), n
        # The coverage the rank gives is the table's: at least 95%, one rank inwards less.
        assert 1 - 2 * stats.binom.cdf(rank - 1, n, 0.5) >= 0.95
        assert 1 - 2 * stats.binom.cdf(rank, n, 0.5) < 0.95
    assert all(np.isnan(median_interval(np.arange(5.0))))
    diff = np.sort(np.array(HW_Y) - np.array(HW_X))
    res = paired_wilcoxon(before=np.array(HW_X), after=np.array(HW_Y))
    assert (res.ci_low, res.ci_high) == (diff[1], diff[7])
    assert "95% CI of the median difference" in res.method
