"""Cells a person opens in a spreadsheet: text that a spreadsheet would run as a formula is
written with a leading apostrophe (OWASP's CSV-injection rule), so ``=HYPERLINK(...)`` in a
patient id or an audit reason is shown, never evaluated."""

from __future__ import annotations

import re

import pandas as pd

# OWASP: a cell starting with =, +, -, @, tab or carriage return is read as a formula.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# A plain number ("-0.5", "+3e-2") is data, not a formula: left as it is.
PLAIN_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def safe_cell(value: object) -> object:
    """``value`` with an apostrophe before it when it is text a spreadsheet would evaluate."""
    if isinstance(value, str) and value.startswith(FORMULA_START) and not PLAIN_NUMBER.match(value):
        return "'" + value
    return value


def safe_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` whose text cells (and column names) are safe to open."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object or pd.api.types.is_string_dtype(out[column]):
            out[column] = out[column].map(safe_cell)
    out.columns = [safe_cell(c) for c in out.columns]
    return out
