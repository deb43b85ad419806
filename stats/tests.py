"""Small statistical building blocks shared by the analyses, each named as scipy runs it."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# scipy.stats (~2 s of imports) is imported where a test runs, not by everything that only
# reads an analysis plan (every command checks study.yaml before anything heavy).

STATISTICS_COLUMNS = [
    "analysis",
    "group",
    "panel",
    "population",
    "measure",
    "visit",
    "n",
    "statistic",
    "p_value",
    "p_adjusted",
    "family",  # the Benjamini-Hochberg family of p_adjusted; 'unadjusted' for clinical rows
    "test",  # the test that ran, e.g. signed_rank_exact, fisher_exact, mcnemar_exact, cox_wald
    "effect",
    "ci_low",
    "ci_high",
    # Whether ``effect`` is an estimate that exists: False where the model's maximum-likelihood
    # estimate does not (monotone likelihood, a zero cell) and no finite number is given.
    "estimate_exists",
    "flag",  # what in the data limits the model: monotone_likelihood, zero_cell, all_one_sign
    "primary",  # the row whose p the analysis plan names primary for its analysis and group
    "method",
]


@dataclass(frozen=True)
class PairedResult:
    n: int
    statistic: float
    p_value: float
    # Hodges-Lehmann estimate of the shift after - before: the median of the Walsh averages
    # (pairwise means, each difference with itself included) of the n paired differences.
    effect: float
    method: str
    test: str = ""  # which test ran: signed_rank_exact, signed_rank_permutation, ...
    # all_one_sign: every non-zero difference has one sign, so p is the smallest the test
    # can give with this many pairs (the effect still exists).
    flag: str = ""
    # The 95% interval of the shift that inverts this signed-rank test (``shift_interval``).
    ci_low: float = float("nan")
    ci_high: float = float("nan")


@dataclass(frozen=True)
class SignedRankRule:
    """How the signed-rank test is computed, chosen explicitly (never a library's 'auto').

    Below ``exact_below`` non-zero pairs without ties, the exact signed-rank distribution
    (as R's wilcox.test); with tied absolute differences or zeros and at most
    ``enumerate_up_to`` non-zero pairs, an exact permutation test of the same statistic over
    all 2^n sign patterns (mid-ranks); otherwise the normal approximation with continuity and
    tie correction. ``zero_method`` 'wilcox' drops zero differences before ranking; 'pratt'
    ranks them and then drops them."""

    exact_below: int = 50
    enumerate_up_to: int = 20
    zero_method: str = "wilcox"

    def __post_init__(self) -> None:
        if self.zero_method not in ("wilcox", "pratt"):
            raise ValueError(f"zero_method must be 'wilcox' or 'pratt', not {self.zero_method!r}")
        if not 1 <= self.enumerate_up_to <= 24:  # 2^24 sign patterns is the memory limit
            raise ValueError("enumerate_up_to must be between 1 and 24")

    def test(self, m: int, has_ties: bool, zeros: int) -> str:
        """The test this rule runs on ``m`` non-zero pairs (ties among them or not, ``zeros``
        zero differences)."""
        if not has_ties and not zeros and m < self.exact_below:
            return "signed_rank_exact"
        if m <= self.enumerate_up_to:
            return "signed_rank_permutation"
        return "signed_rank_normal_cc"


TEST_WORDS = {
    "signed_rank_exact": "exact signed-rank distribution",
    "signed_rank_permutation": "exact permutation test (all 2^{m} sign patterns)",
    "signed_rank_normal_cc": "normal approximation, continuity and tie corrected",
}


def _midranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties given the mean of the ranks they share (as scipy's rankdata, which
    costs a millisecond a call: too slow for inverting a test at every Walsh average)."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], ordered.size]
    ranks = np.empty(values.size)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def _signed_ranks(diff: np.ndarray, zero_method: str) -> tuple[np.ndarray, np.ndarray]:
    """(ranks of the non-zero |differences|, their signs): mid-ranks for ties; 'wilcox' drops
    the zeros before ranking, 'pratt' ranks them and then drops them."""
    keep = diff != 0
    if zero_method == "wilcox":
        ranks = _midranks(np.abs(diff[keep]))
    else:
        ranks = _midranks(np.abs(diff))[keep]
    return ranks, np.sign(diff[keep])


def _signed_rank_p(ranks: np.ndarray, signs: np.ndarray, test: str) -> float:
    """Two-sided p of V+ (the sum of the positive differences' ranks) under random signs."""
    v_plus = float(ranks[signs > 0].sum())
    if test == "signed_rank_normal_cc":
        return _normal_p(ranks, v_plus)
    return _exact_p(ranks, v_plus)


def paired_wilcoxon(
    before: np.ndarray, after: np.ndarray, rule: SignedRankRule = SignedRankRule()
) -> PairedResult:
    """Two-sided Wilcoxon signed-rank test of after - before, computed as ``rule`` says and
    labelled with what ran. ``statistic`` is min(V+, V-), V+ being R's V. The effect is the
    Hodges-Lehmann shift with the 95% interval that inverts the same test
    (``shift_interval``), so the interval excludes 0 when p < 0.05 and not otherwise (up to
    the zeros the test drops: see ``shift_interval``)."""
    before, after = np.asarray(before, float), np.asarray(after, float)
    ok = np.isfinite(before) & np.isfinite(after)
    diff = after[ok] - before[ok]
    n = int(diff.size)
    effect = hodges_lehmann(diff)
    zeros = int((diff == 0).sum())
    if n - zeros < 1:
        return PairedResult(
            n, float("nan"), float("nan"), effect, "not tested: no non-zero pairs", "not_tested"
        )
    ranks, signs = _signed_ranks(diff, rule.zero_method)
    m = ranks.size
    has_ties = np.unique(ranks).size < m
    v_plus = float(ranks[signs > 0].sum())
    statistic = min(v_plus, float(ranks.sum()) - v_plus)
    dropped = "dropped" if rule.zero_method == "wilcox" else "ranked, then dropped (Pratt)"
    notes = [f"{zeros} zero difference(s) {dropped}"] if zeros else []
    if has_ties:
        notes.append("tied |differences| given mid-ranks")
    test = rule.test(m, has_ties, zeros)
    p = _signed_rank_p(ranks, signs, test)
    one_sign = bool(np.all(signs > 0) or np.all(signs < 0))
    if one_sign:
        notes.append(f"all {m} non-zero differences of one sign: p is the smallest possible")
    detail = f" ({'; '.join(notes)})" if notes else ""
    low, high = shift_interval(diff, rule)
    interval = (
        "; effect = Hodges-Lehmann shift (median of the Walsh averages of the differences), "
        "95% CI inverting this signed-rank test (Walsh averages as its ends)"
        if np.isfinite(low)
        else "; effect = Hodges-Lehmann shift (median of the Walsh averages of the differences); "
        f"no 95% CI: with {n} pairs no shift is rejected at 5% (at least 6 needed)"
    )
    method = f"Wilcoxon signed-rank, two-sided, {TEST_WORDS[test].format(m=m)}{detail}{interval}"
    flag = "all_one_sign" if one_sign else ""
    return PairedResult(n, statistic, p, effect, method, test, flag, low, high)


def walsh_averages(values: np.ndarray) -> np.ndarray:
    """The n(n+1)/2 pairwise means (x_i + x_j)/2, i <= j, sorted (Hollander & Wolfe 3.2)."""
    x = np.asarray(values, float)
    i, j = np.triu_indices(x.size)
    return np.sort((x[i] + x[j]) / 2.0)


def hodges_lehmann(diff: np.ndarray) -> float:
    """The Hodges-Lehmann estimate of the centre of the paired differences: the median of
    their Walsh averages (R's wilcox.test(conf.int = TRUE) '(pseudo)median'); NaN if none."""
    diff = np.asarray(diff, float)
    return float(np.median(walsh_averages(diff))) if diff.size else float("nan")


def shift_interval(
    diff: np.ndarray, rule: SignedRankRule = SignedRankRule(), level: float = 0.95
) -> tuple[float, float]:
    """The confidence interval of the shift d that inverts the signed-rank test: every d at
    which the test of (diff - d), run as ``rule`` says, has two-sided p >= 1 - level.

    V+(d) changes only where d is a Walsh average, so the test is run once inside each gap
    between neighbouring Walsh averages (there no difference is 0 and two |diff - d| tie only
    if two differences are equal) and the interval runs from the lower end of the first gap
    not rejected to the upper end of the last one. Without tied differences this is the
    exact interval of R's wilcox.test(conf.int = TRUE): the k-th smallest and largest Walsh
    averages, k from the signed-rank distribution (Hollander & Wolfe 3.3); with ties it is
    the exact permutation test's (mid-ranks) inverted the same way (as R's asht::wsrTest).
    It excludes 0 exactly when the test's p < 1 - level, except where zero differences
    (dropped by the test at d = 0, counted as tiny shifts beside it) or a Walsh average at 0
    sit on the boundary. NaN when no shift is rejected (n < 6 at 95%)."""
    diff = np.asarray(diff, float)
    diff = diff[np.isfinite(diff)]
    if diff.size == 0:
        return float("nan"), float("nan")
    walsh = np.unique(walsh_averages(diff))
    # One point inside each gap, and one beyond either end (every difference of one sign).
    span = max(1.0, float(np.abs(walsh).max()))
    points = np.concatenate([[walsh[0] - span], (walsh[:-1] + walsh[1:]) / 2.0, [walsh[-1] + span]])
    alpha = 1.0 - level
    if np.unique(diff).size == diff.size:
        # No tied differences: every gap ranks 1..n, and V+ there is the number of Walsh
        # averages above it (Tukey), so all gaps are tested at once.
        ranks = np.arange(1.0, diff.size + 1)
        test = rule.test(diff.size, False, 0)
        every = walsh_averages(diff)
        v_plus = every.size - np.searchsorted(every, points, side="right")
        p = _normal_p(ranks, v_plus) if test == "signed_rank_normal_cc" else _exact_p(ranks, v_plus)
    else:
        p = np.empty(points.size)
        for gap, d in enumerate(points):
            ranks, signs = _signed_ranks(diff - d, rule.zero_method)
            test = rule.test(ranks.size, np.unique(ranks).size < ranks.size, 0)
            p[gap] = _signed_rank_p(ranks, signs, test)
    kept = np.flatnonzero(p >= alpha * (1 - 1e-9))
    if kept.size == 0 or kept[0] == 0 or kept[-1] == points.size - 1:
        return float("nan"), float("nan")  # a shift beyond every difference is not rejected
    return float(walsh[kept[0] - 1]), float(walsh[kept[-1]])


@lru_cache(maxsize=256)
def _null_counts(doubled_ranks: tuple[int, ...]) -> np.ndarray:
    """How many of the 2^m sign patterns give each value of 2 V+ (ranks doubled so that
    mid-ranks are integers): the exact null distribution, by convolution."""
    counts = np.ones(1)
    for r in doubled_ranks:
        counts = np.concatenate([counts, np.zeros(r)]) + np.concatenate([np.zeros(r), counts])
    return counts


def _exact_p(ranks: np.ndarray, v_plus):
    """Two-sided exact p of V+ (a number or an array of them) under random signs: 2 x the
    smaller tail, at most 1. Without ties this is the exact signed-rank distribution; with
    mid-ranks, the permutation test over all 2^m sign patterns (the same counts, by
    convolution rather than listing)."""
    doubled = np.rint(2 * ranks).astype(int)
    counts = _null_counts(tuple(sorted(doubled.tolist())))
    below = np.concatenate([[0.0], np.cumsum(counts)]) / counts.sum()  # P(2V+ < index)
    v = np.rint(2 * np.asarray(v_plus, float)).astype(int)
    low, high = below[v + 1], 1.0 - below[v]
    p = np.minimum(1.0, 2.0 * np.minimum(low, high))
    return float(p) if p.ndim == 0 else p


def _normal_p(ranks: np.ndarray, v_plus):
    """Normal approximation of V+ with continuity correction (R's), its mean and variance
    those of V+ under random signs given the ranks: sum(r)/2 and sum(r^2)/4. With ranks 1..m
    that is m(m+1)/4 and R's tie-corrected m(m+1)(2m+1)/24 - sum(t^3 - t)/48; with Pratt's
    ranks (zeros ranked, then dropped) it is what the shifted ranks give, as SciPy's."""
    from scipy import stats

    mean = float(ranks.sum()) / 2.0
    var = float((ranks**2).sum()) / 4.0
    z = np.asarray(v_plus, float) - mean
    z = (z - np.sign(z) * 0.5) / np.sqrt(var)
    p = np.minimum(1.0, 2.0 * stats.norm.sf(np.abs(z)))
    return float(p) if p.ndim == 0 else p


def mcnemar_exact(before: np.ndarray, after: np.ndarray) -> tuple[int, int, float]:
    """Exact McNemar test of paired yes/no: the discordant pairs (yes->no, no->yes) and the
    two-sided binomial p of the smaller count out of both at 1/2 (1 when none is discordant)."""
    from scipy import stats

    before, after = np.asarray(before, bool), np.asarray(after, bool)
    stopped = int((before & ~after).sum())
    started = int((~before & after).sum())
    total = stopped + started
    p = (
        1.0
        if total == 0
        else min(1.0, 2.0 * float(stats.binom.cdf(min(stopped, started), total, 0.5)))
    )
    return stopped, started, p


@dataclass(frozen=True)
class OddsEstimate:
    """The odds p / (1 - p) of a binomial proportion of ``k`` out of ``m``: the conditional
    form both of a 1:1 matched Cox model (pairs relapsing first after vs before) and of
    McNemar's paired odds ratio (patients starting vs stopping a drug)."""

    median_unbiased: float
    ci_low: float
    ci_high: float
    conditional_mle: float  # k / (m - k): 0 or infinite when every count goes one way


def binomial_odds_estimate(k: int, m: int, level: float = 0.95) -> OddsEstimate:
    """Median-unbiased odds (Hirji, Tsiatis & Mehta 1989: the p at which both one-sided
    exact p-values are equal; at k = 0 or m, the p at which the observed extreme has
    probability 1/2), the Clopper-Pearson interval of p mapped to the odds, and the
    conditional maximum-likelihood odds k / (m - k). All NaN when m = 0.

    The Clopper-Pearson interval inverts two one-sided exact tests at (1 - level) / 2, so it
    excludes odds 1 exactly when the two-sided exact binomial p (2 x the smaller tail) is
    below 1 - level."""
    from scipy import optimize, stats

    if m == 0:
        return OddsEstimate(*[float("nan")] * 4)
    if k == 0:
        p_mue = 1.0 - 0.5 ** (1.0 / m)
    elif k == m:
        p_mue = 0.5 ** (1.0 / m)
    else:
        p_mue = optimize.brentq(
            lambda p: stats.binom.sf(k - 1, m, p) - stats.binom.cdf(k, m, p), 1e-12, 1 - 1e-12
        )
    alpha = 1.0 - level
    low = 0.0 if k == 0 else float(stats.beta.ppf(alpha / 2, k, m - k + 1))
    high = 1.0 if k == m else float(stats.beta.ppf(1 - alpha / 2, k + 1, m - k))
    mle = float("inf") if k == m else k / (m - k)
    return OddsEstimate(_odds(p_mue), _odds(low), _odds(high), mle)


def _odds(p: float) -> float:
    return float("inf") if p >= 1.0 else p / (1.0 - p)


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (as R's p.adjust(method='BH')); NaN stays NaN."""
    from scipy import stats

    p = np.asarray(p_values, float)
    out = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = stats.false_discovery_control(p[ok], method="bh")
    return out


def paired_difference_interval(
    both: int, first_only: int, second_only: int, neither: int, level: float = 0.95
) -> tuple[float, float]:
    """The 95% interval of the difference of two paired proportions, first - second =
    (first_only - second_only) / n: Newcombe's hybrid score interval (Newcombe 1998, Stat Med
    17:2635, method 10: the Wilson intervals of the two marginal proportions, squared and
    added, corrected for their correlation phi). Approximate, never outside [-1, 1]; NaN
    when n = 0."""
    from scipy import stats

    n = both + first_only + second_only + neither
    if n == 0:
        return float("nan"), float("nan")
    z = float(stats.norm.isf((1.0 - level) / 2.0))

    def wilson(k: int) -> tuple[float, float, float]:
        p = k / n
        centre, half = p + z * z / (2 * n), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        return p, (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)

    p1, l1, u1 = wilson(both + first_only)
    p2, l2, u2 = wilson(both + second_only)
    margins = (
        (both + first_only)
        * (second_only + neither)
        * (both + second_only)
        * (first_only + neither)
    )
    cross = both * neither - first_only * second_only
    # Newcombe's continuity-corrected correlation: 0 for 0 <= cross <= n/2.
    corrected = cross - n / 2 if cross > n / 2 else (cross if cross < 0 else 0.0)
    phi = corrected / np.sqrt(margins) if margins > 0 else 0.0
    diff = p1 - p2
    low = diff - np.sqrt(
        max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2)
    )
    high = diff + np.sqrt(
        max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2)
    )
    return float(max(-1.0, low)), float(min(1.0, high))
