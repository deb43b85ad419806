"""One rule for the numbers the report prints: p-values and estimates to 2 significant digits,
p below 0.001 as '< 0.001', intervals as 'low to high'. Every page formats through these."""

from __future__ import annotations

import math


def format_p(p: float) -> str:
    """A p-value: 2 significant digits ('0.048', '0.50', '1.0'), '< 0.001' below 0.001,
    'NA' when there is none."""
    if p is None or not math.isfinite(p):
        return "NA"
    if p < 0.001:
        return "< 0.001"
    return f"{p:#.2g}".rstrip(".")


def format_number(x: float) -> str:
    """An estimate to 2 significant digits ('0.048', '0.37', '21', '2700'); 'inf' and 'NA'
    spelled out."""
    if x is None or math.isnan(x):
        return "NA"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(x)))
    if magnitude >= 1:
        return f"{round(x, 1 - magnitude):.0f}"
    return f"{x:#.2g}".rstrip(".")


def format_interval(low: float, high: float) -> str:
    """A confidence interval as 'low to high' (no dash that reads as a minus sign)."""
    return f"{format_number(low)} to {format_number(high)}"
