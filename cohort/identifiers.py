"""Identifiers a person reads (patient ids, visits, file names) must look like what they are.

A zero-width space makes 'P01\u200b' look exactly like 'P01' and a right-to-left override
reverses what is shown; a newline ends a file name early for a regex's ``$``. Such characters
are refused where an identifier enters the study (clinical CSVs, inbox file names).
"""

from __future__ import annotations

import unicodedata

# Cc control, Cf format (zero-width, bidirectional marks and overrides, BOM), Zl/Zp line and
# paragraph separators, Co private use, Cn unassigned.
_HIDDEN_CATEGORIES = {"Cc", "Cf", "Zl", "Zp", "Co", "Cn"}


def hidden_character(text: str) -> str:
    """'' if every character of ``text`` shows as itself; else names the first that does not,
    e.g. "U+200B ZERO WIDTH SPACE at position 4"."""
    for position, char in enumerate(text, start=1):
        category = unicodedata.category(char)
        if category in _HIDDEN_CATEGORIES or (category == "Zs" and char != " "):
            name = unicodedata.name(char, "control character" if category == "Cc" else "")
            return f"U+{ord(char):04X} {name or 'unassigned'} at position {position}"
    return ""
