"""One rule for every number the reports print: p-values, intervals, estimates.

p-values: two significant digits, ``< 0.001`` below a thousandth, ``NA`` when not
computed (never ``nan``/``inf``). Estimates: three significant digits, ``not reached`` for an
infinite median, ``NA`` when missing. Intervals: ``[low, high]`` with each end as an
estimate. Every page, figure and table calls these, so neighbouring pages agree.
"""

from __future__ import annotations

import math

P_FLOOR = 0.001


def _finite(value: float | None) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def format_p(p: float | None) -> str:
    """A p-value: ``0.17``, ``0.043``, ``0.0012``, ``< 0.001``, ``1``; ``NA`` when missing."""
    if not _finite(p):
        return "NA"
    p = float(p)
    if p < P_FLOOR:
        return f"< {P_FLOOR:g}"
    if p >= 0.995:
        return "1"
    text = f"{p:.2g}"
    # .2g keeps 2 significant digits; 0.1 stays 0.10 so that two digits are always shown.
    if "e" not in text and len(text.replace("0.", "", 1).lstrip("0")) == 1:
        text = f"{p:.{_decimals(p) + 1}f}"
    return text


def _decimals(p: float) -> int:
    """Decimals of ``p`` printed with one significant digit."""
    return max(0, -math.floor(math.log10(p)))


def format_estimate(value: float | None, *, infinite: str = "not reached") -> str:
    """An effect, median or hazard ratio to three significant digits (``1.23``, ``0.0456``,
    ``123``, ``1.23e+04`` never: large values are printed whole). ``infinite`` names +inf (a
    Kaplan-Meier median not reached); ``NA`` when missing."""
    if value is None:
        return "NA"
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "NA"
    if math.isinf(value):
        return infinite if value > 0 else f"-{infinite}"
    if not math.isfinite(value):
        return "NA"
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:.0f}"
    text = f"{value:.3g}"
    if "e" in text:  # below 0.001: three significant digits written out
        text = f"{value:.{_decimals(abs(value)) + 2}f}"
    return text


def format_interval(low: float | None, high: float | None, *, infinite: str = "not reached") -> str:
    """A confidence interval as ``[0.13, 2.00]``-style text, ends as ``format_estimate``
    (``infinite`` names an infinite end: 'inf' for a hazard or odds ratio's open upper
    limit); empty when neither end is known."""
    if not _finite(low) and not _finite(high):
        return ""
    return (
        f"[{format_estimate(low, infinite=infinite)}, {format_estimate(high, infinite=infinite)}]"
    )


def format_p_phrase(p: float | None, name: str = "p") -> str:
    """``p = 0.17``, ``p < 0.001``, ``p = NA``: a p-value in running text."""
    text = format_p(p)
    return f"{name} {text}" if text.startswith("<") else f"{name} = {text}"
