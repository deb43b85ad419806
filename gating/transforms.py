"""Display transforms that gates are placed in: logicle for markers, linear for scatter.

The logicle (Parks 2006; GatingML 2.0 scaling to [0, 1]) has no closed form in the forward
direction: flowutils solves it per value (~170 ns each). For placing gates and drawing we read
it from a table indexed by the top bits of the float32 value (piecewise linear in between,
error below 1e-6 of the scale), at ~10 ns a value. Gate membership is never decided on those
approximate values: a threshold on a logicle scale is compared in the channel's linear units
through the exact closed-form inverse, and the few 2-D gates on logicle scales use flowutils'
exact forward transform (see ``gating.space.GatingSpace``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from flowutils import transforms

# Largest difference between ``Logicle.fast`` and ``Logicle.exact`` on the [0, 1] scale
# (measured: 2.5e-7, float32 rounding included; tested in tests/test_fast_paths.py).
FAST_ERROR = 1e-6

# Table index: the top 17 bits of a float32 (sign, exponent, 8 mantissa bits).
_SHIFT = 15
_NODES = 1 << (32 - _SHIFT)


@dataclass(frozen=True)
class Logicle:
    """Logicle with top of scale ``t``, width ``w``, decades ``m`` and extra negative ``a``."""

    t: float
    w: float
    m: float
    a: float

    def exact(self, values: np.ndarray) -> np.ndarray:
        """flowutils' logicle, float64 (the values flowkit gates on)."""
        column = np.ascontiguousarray(values, dtype=np.float64).reshape(-1, 1)
        return transforms.logicle(column, [0], t=self.t, m=self.m, w=self.w, a=self.a).ravel()

    def inverse(self, scaled: np.ndarray | float) -> np.ndarray:
        """Linear-unit values of logicle-scale values (closed form, float64)."""
        column = np.atleast_1d(np.asarray(scaled, dtype=np.float64)).reshape(-1, 1)
        out = transforms.logicle_inverse(column, [0], t=self.t, m=self.m, w=self.w, a=self.a)
        return out.ravel()

    def fast(self, values: np.ndarray) -> np.ndarray:
        """Table-interpolated logicle as float32, for placing gates and drawing."""
        table = _logicle_table(self.t, self.w, self.m, self.a)
        v = np.ascontiguousarray(values, dtype=np.float32)
        index = v.view(np.uint32) >> np.uint32(_SHIFT)
        entry = np.take(table, index)  # one gather fetches a node's value and slope
        # base + slope * (value - node), in place; the node is the value's own top bits.
        out = (index << np.uint32(_SHIFT)).view(np.float32)
        np.subtract(v, out, out=out)
        out *= entry.imag
        out += entry.real
        return out


@dataclass(frozen=True)
class LinearUnit:
    """Scatter as a fraction of its range ``t`` (GatingML 'flin' with A=0); exact and cheap."""

    t: float

    def exact(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values, dtype=np.float64) / self.t

    def inverse(self, scaled: np.ndarray | float) -> np.ndarray:
        return np.atleast_1d(np.asarray(scaled, dtype=np.float64)) * self.t

    def fast(self, values: np.ndarray) -> np.ndarray:
        return self.exact(values)


@lru_cache(maxsize=32)
def _logicle_table(t: float, w: float, m: float, a: float) -> np.ndarray:
    """For every float32 top-17-bit pattern (its node: that pattern with the low bits zero),
    the logicle value at the node (real part) and the slope to the next node (imaginary part),
    as complex64: two float32 side by side, fetched together."""
    logicle = Logicle(t, w, m, a)
    patterns = np.arange(_NODES, dtype=np.uint64) << np.uint64(_SHIFT)
    with np.errstate(invalid="ignore", over="ignore"):
        node = patterns.astype(np.uint32).view(np.float32).astype(np.float64)
        following = (patterns + (1 << _SHIFT)).astype(np.uint32).view(np.float32).astype(float)
    # Far beyond any instrument's range (and inf/NaN patterns) the table holds the clipped
    # value with slope 0; such events are removed by the margin gate before anything is placed.
    limit = t * 1e6
    usable = np.isfinite(node) & np.isfinite(following) & (np.abs(node) < limit)
    node = np.where(usable, node, np.clip(np.nan_to_num(node), -limit, limit))
    following = np.where(usable, following, node)
    y_node = logicle.exact(node)
    y_next = logicle.exact(following)
    width = following - node
    slope = np.divide(y_next - y_node, width, out=np.zeros_like(width), where=width != 0)
    table = np.empty(_NODES, dtype=np.complex64)
    table.real = y_node
    table.imag = slope
    return table
