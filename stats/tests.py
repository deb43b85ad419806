"""Small statistical building blocks shared by the analyses, each named as scipy runs it."""

from __future__ import annotations

from dataclasses import dataclass

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
    effect: float  # median of (after - before)
    method: str
    test: str = ""  # which test ran: signed_rank_exact, signed_rank_permutation, ...
    # all_one_sign: every non-zero difference has one sign, so p is the smallest the test
    # can give with this many pairs (the effect still exists: a median difference).
    flag: str = ""
    # The distribution-free 95% interval of the median difference (``median_interval``).
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


def paired_wilcoxon(
    before: np.ndarray, after: np.ndarray, rule: SignedRankRule = SignedRankRule()
) -> PairedResult:
    """Two-sided Wilcoxon signed-rank test of after - before, computed as ``rule`` says and
    labelled with what ran. ``statistic`` is min(V+, V-), V+ being R's V."""
    from scipy import stats

    before, after = np.asarray(before, float), np.asarray(after, float)
    ok = np.isfinite(before) & np.isfinite(after)
    diff = after[ok] - before[ok]
    n = int(diff.size)
    effect = float(np.median(diff)) if n else float("nan")
    zeros = int((diff == 0).sum())
    if n - zeros < 1:
        return PairedResult(
            n, float("nan"), float("nan"), effect, "not tested: no non-zero pairs", "not_tested"
        )
    if rule.zero_method == "wilcox":
        ranks = stats.rankdata(np.abs(diff[diff != 0]))
    else:
        ranks = stats.rankdata(np.abs(diff))[diff != 0]
    signs = np.sign(diff[diff != 0])
    m = ranks.size
    has_ties = np.unique(ranks).size < m
    v_plus = float(ranks[signs > 0].sum())
    statistic = min(v_plus, float(ranks.sum()) - v_plus)
    dropped = "dropped" if rule.zero_method == "wilcox" else "ranked, then dropped (Pratt)"
    notes = [f"{zeros} zero difference(s) {dropped}"] if zeros else []
    if has_ties:
        notes.append("tied |differences| given mid-ranks")
    if not has_ties and not zeros and m < rule.exact_below:
        p = float(stats.wilcoxon(diff, method="exact").pvalue)
        test, kind = "signed_rank_exact", "exact signed-rank distribution"
    elif m <= rule.enumerate_up_to:
        p = _permutation_p(ranks, v_plus)
        test, kind = "signed_rank_permutation", f"exact permutation test (all 2^{m} sign patterns)"
    else:
        p = _normal_p(ranks, v_plus)
        test, kind = "signed_rank_normal_cc", "normal approximation, continuity and tie corrected"
    one_sign = bool(np.all(signs > 0) or np.all(signs < 0))
    if one_sign:
        notes.append(f"all {m} non-zero differences of one sign: p is the smallest possible")
    detail = f" ({'; '.join(notes)})" if notes else ""
    low, high = median_interval(diff)
    interval = (
        "; 95% CI of the median difference from its order statistics (binomial, distribution-free)"
        if np.isfinite(low)
        else f"; no 95% CI of the median difference with {n} pairs (at least 6 needed)"
    )
    method = f"Wilcoxon signed-rank, two-sided, {kind}{detail}{interval}"
    flag = "all_one_sign" if one_sign else ""
    return PairedResult(n, statistic, p, effect, method, test, flag, low, high)


def median_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The distribution-free confidence interval of a median from order statistics: the
    k-th smallest and k-th largest value, k the largest rank with P(Binomial(n, 1/2) < k) <=
    (1 - level) / 2, so the coverage is at least ``level`` (Conover, Practical Nonparametric
    Statistics, 3rd ed., section 3.2; n = 10 gives the 2nd and 9th values). NaN when n is
    too small for any interval to reach ``level`` (n < 6 at 95%)."""
    from scipy import stats

    x = np.sort(np.asarray(values, float)[np.isfinite(values)])
    n = x.size
    if n == 0:
        return float("nan"), float("nan")
    # P(B <= k - 1) <= alpha/2  <=>  k - 1 <= ppf; binom.ppf gives the smallest q with cdf >= p.
    alpha = (1.0 - level) / 2.0
    k = int(stats.binom.ppf(alpha, n, 0.5))
    if stats.binom.cdf(k, n, 0.5) > alpha:
        k -= 1
    k += 1  # 1-based rank of the lower end
    if k < 1:
        return float("nan"), float("nan")
    return float(x[k - 1]), float(x[n - k])


def _permutation_p(ranks: np.ndarray, v_plus: float) -> float:
    """Two-sided exact p of V+ under random signs: 2 x the smaller tail, at most 1."""
    m = ranks.size
    patterns = (np.arange(2**m)[:, None] >> np.arange(m)) & 1
    null = patterns @ ranks
    eps = 1e-9 * max(1.0, float(ranks.sum()))  # mid-ranks are halves: compare with a margin
    low = np.mean(null <= v_plus + eps)
    high = np.mean(null >= v_plus - eps)
    return float(min(1.0, 2.0 * min(low, high)))


def _normal_p(ranks: np.ndarray, v_plus: float) -> float:
    """Normal approximation of V+ with continuity correction (R's), its mean and variance
    those of V+ under random signs given the ranks: sum(r)/2 and sum(r^2)/4. With ranks 1..m
    that is m(m+1)/4 and R's tie-corrected m(m+1)(2m+1)/24 - sum(t^3 - t)/48; with Pratt's
    ranks (zeros ranked, then dropped) it is what the shifted ranks give, as SciPy's."""
    from scipy import stats

    mean = float(ranks.sum()) / 2.0
    var = float((ranks**2).sum()) / 4.0
    z = v_plus - mean
    z = (z - np.sign(z) * 0.5) / np.sqrt(var)
    return float(min(1.0, 2.0 * stats.norm.sf(abs(z))))


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
