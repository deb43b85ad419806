"""Small statistical building blocks shared by the analyses, each named as scipy runs it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

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
    "effect",
    "ci_low",
    "ci_high",
    "method",
]


@dataclass(frozen=True)
class PairedResult:
    n: int
    statistic: float
    p_value: float
    effect: float  # median of (after - before)
    method: str


def paired_wilcoxon(before: np.ndarray, after: np.ndarray) -> PairedResult:
    """Two-sided Wilcoxon signed-rank test with scipy's defaults (zero_method='wilcox',
    no continuity correction, method='auto'), naming the method scipy actually used."""
    before, after = np.asarray(before, float), np.asarray(after, float)
    ok = np.isfinite(before) & np.isfinite(after)
    before, after = before[ok], after[ok]
    diff = after - before
    n = int(diff.size)
    effect = float(np.median(diff)) if n else float("nan")
    nonzero = diff[diff != 0]
    if nonzero.size < 1:
        return PairedResult(n, float("nan"), float("nan"), effect, "not tested: no non-zero pairs")
    # scipy's 'auto': exact distribution for n <= 50 without ties or zeros, else normal approx.
    has_ties = np.unique(np.abs(nonzero)).size < nonzero.size
    has_zeros = nonzero.size < n
    exact = n <= 50 and not has_ties and not has_zeros
    res = stats.wilcoxon(after, before, zero_method="wilcox", correction=False, method="auto")
    kind = "exact" if exact else "normal approximation"
    notes = []
    if has_zeros:
        notes.append(f"{n - nonzero.size} zero differences dropped")
    if has_ties:
        notes.append("ties")
    detail = f" ({', '.join(notes)})" if notes else ""
    method = f"Wilcoxon signed-rank, two-sided, {kind}{detail}; scipy.stats.wilcoxon defaults"
    return PairedResult(n, float(res.statistic), float(res.pvalue), effect, method)


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (as R's p.adjust(method='BH')); NaN stays NaN."""
    p = np.asarray(p_values, float)
    out = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = stats.false_discovery_control(p[ok], method="bh")
    return out
