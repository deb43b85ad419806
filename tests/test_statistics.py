"""Statistics against published references, not against our own code."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
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
    # R: wilcox.test(x, y, paired = TRUE, conf.int = TRUE): (pseudo)median 0.46, 95 percent
    # confidence interval 0.010 0.786 (x - y; here after - before = y - x, so negated).
    assert abs(res.effect - -0.46) < 1e-12
    assert abs(res.ci_low - -0.786) < 1e-12 and abs(res.ci_high - -0.01) < 1e-12


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


def test_shift_interval_is_the_walsh_average_order_statistics_of_rs_exact_interval():
    """Without ties, the interval that inverts the exact signed-rank test is R's
    wilcox.test(conf.int = TRUE) one (Hollander & Wolfe 3.3): the k-th smallest and k-th
    largest of the n(n+1)/2 Walsh averages, k = qsignrank(0.025, n) (R's own rule; n = 9
    gives 6, n = 16 gives 30, n = 6 gives 1: the extremes); n = 5 has none (2/32 > 0.05).
    The estimate is the Walsh averages' median, R's '(pseudo)median'."""
    from stats.tests import hodges_lehmann, shift_interval

    for n, k in ((6, 1), (9, 6), (10, 9), (16, 30), (20, 53)):
        # qsignrank(0.025, n): the smallest q with P(V <= q) >= 0.025, by SciPy's exact law.
        q = int(np.argmax(np.cumsum(np.bincount(_signed_rank_sums(n))) / 2**n >= 0.025))
        assert q == k, n
        diff = np.random.default_rng(n).normal(0.3, 1.0, n)
        i, j = np.triu_indices(n)
        walsh = np.sort((diff[i] + diff[j]) / 2)
        assert shift_interval(diff) == (walsh[k - 1], walsh[walsh.size - k]), n
        assert hodges_lehmann(diff) == np.median(walsh)
    assert all(np.isnan(shift_interval(np.arange(1.0, 6.0))))


def _signed_rank_sums(n: int) -> np.ndarray:
    """V+ of every one of the 2^n sign patterns of ranks 1..n, by listing them."""
    patterns = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
    return patterns @ np.arange(1, n + 1)


def test_shift_interval_with_ties_is_the_set_scipys_permutation_test_does_not_reject():
    """With tied and zero differences the interval is every shift d at which SciPy's exact
    permutation test of diff - d (mid-ranks) gives p >= 0.05: checked at shifts between the
    Walsh averages across the whole range, with SciPy's own test, not ours."""
    from stats.tests import shift_interval

    diff = np.array([2, 2, -1, 4, 2, -1, 0, 3, 1.0])
    low, high = shift_interval(diff)
    i, j = np.triu_indices(diff.size)
    walsh = np.unique((diff[i] + diff[j]) / 2)
    at_low, at_high = np.searchsorted(walsh, [low, high])
    # The gaps just outside and just inside either end, and the one holding 0.
    outside = [(walsh[at_low - 1] + low) / 2, (high + walsh[at_high + 1]) / 2]
    inside = [(low + walsh[at_low + 1]) / 2, (walsh[at_high - 1] + high) / 2, 0.01]
    for d in outside + inside:
        p = stats.wilcoxon(diff - d, method=stats.PermutationMethod(n_resamples=np.inf)).pvalue
        assert (p >= 0.05) == (d in inside), (d, p)
    assert (low, high) == (0.0, 3.0)


def test_wilcoxon_interval_agrees_with_its_p():
    """The interval is the test's own: it excludes 0 when p < 0.05 and holds it otherwise
    (the median of the differences with the sign test's order-statistic interval, printed
    before, disagreed: [-6.26, 0.152] beside p = 0.0076 on the demo)."""
    rng = np.random.default_rng(7)
    checked = 0
    for _ in range(300):
        n = int(rng.integers(6, 17))
        diff = rng.normal(rng.uniform(-1, 1), 1.0, n).round(2)  # ties and zeros happen
        res = paired_wilcoxon(np.zeros(n), diff)
        if 0 in diff or np.isclose(np.abs(np.add.outer(diff, diff)), 0).any():
            continue  # a zero or a Walsh average at 0 sits on the boundary (documented)
        assert (res.ci_low > 0 or res.ci_high < 0) == (res.p_value < 0.05), (diff, res)
        checked += 1
    assert checked > 100


def test_wilcoxon_pratt_with_ties_and_zeros_matches_scipys_permutation_test():
    # Pratt ranks the zeros with the others (so the non-zero ranks shift up) and then drops
    # them; the exact permutation over the 8 non-zero signs is SciPy's, statistic and p.
    # SciPy's method='exact' would use the untied distribution here (p 0.49, not 0.37).
    d = np.array([2, 2, -1, 4, 2, -1, 0, 3, 0, -5.0])
    res = paired_wilcoxon(np.zeros(10), d, SignedRankRule(zero_method="pratt"))
    ref = stats.wilcoxon(d, zero_method="pratt", method=stats.PermutationMethod(n_resamples=np.inf))
    assert res.n == 10 and "2 zero difference(s) ranked, then dropped (Pratt)" in res.method
    assert res.statistic == ref.statistic and abs(res.p_value - ref.pvalue) < 1e-12
    untied = stats.wilcoxon(d, zero_method="pratt", method="exact").pvalue
    assert abs(res.p_value - untied) > 0.04  # the tie-blind distribution is not what ran


def test_benjamini_hochberg_matches_statsmodels():
    from statsmodels.stats.multitest import multipletests

    p = np.random.default_rng(3).uniform(0, 0.2, 40) ** 2
    np.testing.assert_allclose(benjamini_hochberg(p), multipletests(p, method="fdr_bh")[1])


def test_mcnemar_exact_matches_statsmodels():
    from statsmodels.stats.contingency_tables import mcnemar

    rng = np.random.default_rng(5)
    for _ in range(30):
        before, after = rng.random(15) < 0.6, rng.random(15) < 0.4
        stopped, started, p = mcnemar_exact(before, after)
        table = [[int((before & after).sum()), stopped], [started, int((~before & ~after).sum())]]
        ref = mcnemar(table, exact=True)
        assert abs(p - ref.pvalue) < 1e-12 and ref.statistic == min(stopped, started)


def test_binomial_odds_interval_is_clopper_pearson_and_agrees_with_the_exact_p():
    from statsmodels.stats.proportion import proportion_confint

    from stats.tests import binomial_odds_estimate

    for m in range(1, 17):  # up to the trial's 16 patients
        for k in range(m + 1):
            est = binomial_odds_estimate(k, m)
            low, high = stats.binomtest(k, m).proportion_ci(0.95, method="exact")
            sm_low, sm_high = proportion_confint(k, m, method="beta")
            for mine, ref, ref2 in ((est.ci_low, low, sm_low), (est.ci_high, high, sm_high)):
                expected = np.inf if ref >= 1 else ref / (1 - ref)
                assert mine == pytest.approx(expected, rel=1e-9, abs=1e-12), (k, m)
                assert ref == pytest.approx(ref2, abs=1e-9)
            # Median-unbiased: the two one-sided exact p-values are equal at the estimate;
            # at an extreme count the observed extreme has probability 1/2.
            q = est.median_unbiased / (1 + est.median_unbiased)
            if 0 < k < m:
                assert stats.binom.sf(k - 1, m, q) == pytest.approx(stats.binom.cdf(k, m, q))
            else:
                assert stats.binom.pmf(k, m, q) == pytest.approx(0.5)
            assert est.ci_low <= est.median_unbiased <= est.ci_high
            # The interval excludes odds 1 exactly when McNemar's two-sided p is below 0.05.
            p = min(1.0, 2 * stats.binom.cdf(min(k, m - k), m, 0.5))
            assert (est.ci_low > 1 or est.ci_high < 1) == (p < 0.05), (k, m)
    assert all(np.isnan(v) for v in vars(binomial_odds_estimate(0, 0)).values())


@pytest.mark.parametrize("zero_method", ["wilcox", "pratt"])
def test_wilcoxon_normal_approximation_with_zeros_and_ties_matches_scipy(zero_method):
    # 40 pairs, 6 zero differences, |d| to one decimal (many ties): past the enumeration
    # limit, so the normal approximation runs. Pratt's ranks start above the zeros, so its
    # mean and variance are not m(m+1)/4 and m(m+1)(2m+1)/24 (the old formula gave p = 7e-8
    # here where SciPy gives 0.066).
    rule = SignedRankRule(zero_method=zero_method)
    for seed in range(4):
        d = np.round(np.random.default_rng(seed).normal(0.3, 1, 40), 1)
        d[:6] = 0
        res = paired_wilcoxon(np.zeros(40), d, rule)
        ref = stats.wilcoxon(d, zero_method=zero_method, method="approx", correction=True)
        assert res.test == "signed_rank_normal_cc" and res.n == 40
        assert res.statistic == ref.statistic
        assert abs(res.p_value - ref.pvalue) < 1e-12, seed


def test_paired_difference_interval_is_newcombes_as_r_contingencytables_prints_it():
    """Newcombe's hybrid score interval for paired proportions (method 10), as R's
    contingencytables::Newcombe_square_and_add_CI_paired_2x2 prints it for the paired table
    [[59, 6], [16, 80]] (its test suite): estimate -0.0621, 95% CI -0.1186 to -0.0046."""
    from stats.tests import paired_difference_interval

    low, high = paired_difference_interval(59, 6, 16, 80)
    assert abs(low - -0.1186) < 5e-5 and abs(high - -0.0046) < 5e-5
    # Swapping which date is first mirrors the interval; it stays inside [-1, 1] and holds
    # the estimate, even when every discordant patient changed one way.
    assert np.allclose(paired_difference_interval(59, 16, 6, 80), (-high, -low))
    for table in ((0, 0, 7, 8), (3, 0, 7, 5), (0, 10, 0, 0), (5, 0, 0, 5)):
        low, high = paired_difference_interval(*table)
        estimate = (table[1] - table[2]) / sum(table)
        assert -1 <= low <= estimate <= high <= 1, table
