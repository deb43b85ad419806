"""Membership on raw channels: limits compared on the values as the file stores them."""

from __future__ import annotations

import math

import numpy as np

from panels.fcs import FcsData

_BLOCK_ROWS = 1 << 14


def stored_limit(limit: float, dtype: np.dtype):
    """The least value of ``dtype`` not below ``limit``: for any stored value x, ``x >= it`` and
    ``x < it`` hold exactly when ``x >= limit`` and ``x < limit`` do in real numbers."""
    if dtype.kind == "f":
        value = dtype.type(limit)
        if float(value) < limit:  # in float64: NumPy would round ``limit`` to ``dtype``
            value = np.nextafter(value, dtype.type(np.inf))
        return value
    return math.ceil(limit)  # unsigned integers; NumPy compares out-of-range ints correctly


def raw_within(data: FcsData, limits: dict[str, tuple[float | None, float | None]]) -> np.ndarray:
    """Events with ``low <= value < high`` on every channel of ``limits`` (``None``: open),
    in flowkit's scale.

    Channels stored unscaled are compared as stored, against the limit rounded up to the
    stored type, which decides exactly as a float64 comparison would, without a float64
    copy of the channel.
    """
    h = data.header
    checks = []
    for name, (lo, hi) in limits.items():
        j = h.pnn.index(name)
        identity = data.stored_as_scaled(name)
        if identity:
            dtype = data.stored.dtype
            lo, hi = (None if v is None else stored_limit(v, dtype) for v in (lo, hi))
        checks.append((name, j, identity, lo, hi))
    inside = np.ones(h.n_events, dtype=bool)
    # Row blocks that stay in cache while every channel of the block is compared: a channel
    # is a strided column of the event rows.
    for start in range(0, h.n_events, _BLOCK_ROWS):
        rows = slice(start, start + _BLOCK_ROWS)
        block, part = data.stored[rows], inside[rows]
        for name, j, identity, lo, hi in checks:
            values = block[:, j] if identity else data.channel(name, rows)
            if lo is not None:
                part &= values >= lo
            if hi is not None:
                part &= values < hi
    return inside
