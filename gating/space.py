"""The dimensions a sample is gated in: compensated channels under the panel's transforms.

Gates are placed and drawn on transformed values (logicle for markers, fraction of range for
scatter). Placing needs every event's value but not full precision, so markers are kept as
float32 compensated values and transformed through the table in ``gating.transforms``
(~10 ns a value). Deciding membership must match flowkit, which works in float64, so the
approximate values only settle events that are clearly on one side:

- a rectangle limit on a logicle dimension is compared in linear units against the exact
  inverse of the limit (the logicle is strictly increasing, so ``logicle(x) >= lo`` exactly when
  ``x >= logicle_inverse(lo)``); the few events whose float32 value lies within rounding
  distance of that limit are compensated again in float64 and decided on those values;
- a polygon or ellipse on a logicle dimension transforms its events exactly;
- scatter dimensions are kept as exact float64 fractions of range (a division).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from gating.compensate import compensated_channels
from gating.transforms import LinearUnit, Logicle
from panels.fcs import FcsData
from panels.resolve import ResolvedPanel

Transform = Logicle | LinearUnit


def channel_range(pnr: float) -> float:
    """$PnR, or the 18-bit range when a file leaves it out."""
    return pnr if pnr > 0 else 262144.0


# float32 keeps 24 bits: a stored value is within 6e-8 (relative) of its float64 original.
# Events within this relative distance of a limit are decided in float64.
FLOAT32_BAND = 1e-6


@dataclass(eq=False)
class GatingSpace(Mapping[str, np.ndarray]):
    """Per dimension (marker or scatter role): its transform and the values gates need.

    ``compensated`` holds the markers' compensated values in channel units (float32);
    scatter, whose transform is a division, is kept only transformed (float64). As a mapping,
    ``space[dim]`` gives the transformed values used to place and draw gates.
    """

    data: FcsData
    channels: dict[str, str]
    spillover: tuple[list[str], np.ndarray] | None
    transforms: dict[str, Transform] = field(default_factory=dict)
    compensated: dict[str, np.ndarray] = field(default_factory=dict)
    _scaled: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    # Thresholds recur across gates (t_cd27 bounds five of them): each comparison is made once.
    _compared: dict[tuple, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def of_sample(cls, data: FcsData, resolved: ResolvedPanel) -> GatingSpace:
        """Compensate the panel's channels (file spillover) and attach their transforms."""
        h = data.header
        p = resolved.panel
        channels = {**resolved.marker_channels, **resolved.scatter_channels}
        space = cls(data, channels, h.spillover())  # parsed once; re-checks reuse it
        markers = compensated_channels(
            data,
            list(dict.fromkeys(resolved.marker_channels.values())),
            space.spillover,
            None,
            np.float32,
        )
        for dim, channel in space.channels.items():
            t = channel_range(h.pnr[h.pnn.index(channel)])
            if dim in resolved.marker_channels:
                space.transforms[dim] = Logicle(t, p.logicle_w, p.logicle_m, p.logicle_a)
                space.compensated[dim] = markers[channel]
            else:
                space.transforms[dim] = LinearUnit(t)
                space._scaled[dim] = space.transforms[dim].exact(data.channel(channel))
        return space

    def __getitem__(self, dim: str) -> np.ndarray:
        if dim not in self._scaled:
            self._scaled[dim] = self.transforms[dim].fast(self.compensated[dim])
        return self._scaled[dim]

    def __contains__(self, dim: object) -> bool:
        return dim in self.transforms

    def __iter__(self) -> Iterator[str]:
        return iter(self.transforms)

    def __len__(self) -> int:
        return len(self.transforms)

    def linear(self, dim: str, rows: np.ndarray | None = None) -> np.ndarray:
        """Compensated float64 values of a marker, computed anew for the events in ``rows``."""
        channel = self.channels[dim]
        return compensated_channels(self.data, [channel], self.spillover, rows)[channel]

    def exact(self, dim: str, rows: np.ndarray | None = None) -> np.ndarray:
        """Exact transformed values (float64) of ``dim``, for the events in ``rows``."""
        if isinstance(self.transforms[dim], LinearUnit):
            return self[dim] if rows is None else self[dim][rows]
        return self.transforms[dim].exact(self.linear(dim, rows))

    def at_least(self, dim: str, limit: float) -> np.ndarray:
        """Events whose exact transformed value is ``>= limit``."""
        if isinstance(self.transforms[dim], LinearUnit):
            return self[dim] >= limit
        return self._compare_linear(dim, self.transforms[dim].inverse(limit)[0], np.greater_equal)

    def below(self, dim: str, limit: float) -> np.ndarray:
        """Events whose exact transformed value is ``< limit``."""
        if isinstance(self.transforms[dim], LinearUnit):
            return self[dim] < limit
        return self._compare_linear(dim, self.transforms[dim].inverse(limit)[0], np.less)

    def _compare_linear(self, dim: str, level: float, compare) -> np.ndarray:
        """``compare(float64 compensated value, level)`` for every event of a marker.

        Decided on the float32 values, natively; events within the rounding band around the
        level are compensated again in float64 and decided on those values.
        """
        key = (dim, level, compare.__name__)
        if key in self._compared:
            return self._compared[key]
        values = self.compensated[dim]
        decided = compare(values, np.float32(level))
        band = FLOAT32_BAND * abs(level) + 1e-30
        unsure = np.flatnonzero(
            (values >= np.float32(level - band)) & (values <= np.float32(level + band))
        )
        if unsure.size:
            decided[unsure] = compare(self.linear(dim, unsure), level)
        decided.flags.writeable = False  # shared by the gates that use this limit
        self._compared[key] = decided
        return decided
