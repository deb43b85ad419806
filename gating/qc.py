"""Quality control before gating: each step keeps a mask and says how many events it removed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gating.adaptive import Placement, place_threshold_at_density_valley


@dataclass(frozen=True)
class QcStep:
    """One QC step on one sample: events in, events removed, and what was decided."""

    name: str
    events_in: int
    removed: int
    detail: str

    @property
    def removed_share(self) -> float:
        return self.removed / self.events_in if self.events_in else 0.0


def stable_time_ranges(
    time: np.ndarray, signals: Sequence[np.ndarray], within: np.ndarray, bins: int, max_z: float
) -> tuple[list[list[float | None]], str]:
    """Time ranges of stable acquisition (in the manner of flowAI/PeacoQC).

    Events (those in ``within``) are binned by acquisition time; per bin we take the event
    count and each channel's mean (a median flips between modes on a channel split half
    positive, half negative), and flag bins whose robust z-score (median/MAD across bins)
    exceeds ``max_z``. Returns the kept ranges as ``[low, high)`` pairs, the last one open
    (``None``), and a description.
    """
    t = time[within]
    if t.size < bins * 20 or not np.isfinite(t).all() or np.ptp(t) <= 0:
        return [
            [float(np.min(time, initial=0.0)), None]
        ], "skipped: too few events or no usable Time"
    edges = np.linspace(t.min(), t.max(), bins + 1)
    if not np.all(time[1:] >= time[:-1]):  # files are written in acquisition order, almost
        order = np.argsort(time, kind="stable")
        time, within, signals = time[order], within[order], [s[order] for s in signals]
    # In time order each bin [edges[b], edges[b + 1]) is a slice of the events: sum slices.
    starts = np.searchsorted(time, edges[:-1], side="left")
    empty = np.diff(np.append(starts, time.size)) == 0  # reduceat repeats a value there

    def bin_sums(values: np.ndarray) -> np.ndarray:
        sums = np.add.reduceat(values, starts, dtype=np.float64)
        sums[empty] = 0.0
        return sums

    counts = bin_sums(within)
    sums = np.column_stack([bin_sums(np.where(within, s, 0)) for s in signals])
    means = np.where(counts[:, None] >= 10, sums / np.maximum(counts[:, None], 1), np.nan)

    def robust_z(values: np.ndarray, floor: float) -> np.ndarray:
        centre = np.nanmedian(values, axis=0)
        mad = np.maximum(1.4826 * np.nanmedian(np.abs(values - centre), axis=0), floor)
        return np.abs(values - centre) / mad

    # Floors keep perfectly stable acquisitions from flagging on sampling noise.
    rate_z = robust_z(counts, floor=max(np.sqrt(np.median(counts)), 1.0))
    signal_z = np.nan_to_num(robust_z(means, floor=0.01))
    bad = (rate_z > max_z) | np.any(signal_z > max_z, axis=1) | (counts < 10)
    bad &= counts > 0  # empty bins hold nothing to remove
    ranges: list[list[float | None]] = []
    for b in range(bins):
        if bad[b]:
            continue
        lo = float(edges[b]) if b else float(np.min(time))  # first range from the first event
        hi = None if b == bins - 1 else float(edges[b + 1])
        if ranges and ranges[-1][1] == lo:
            ranges[-1][1] = hi
        else:
            ranges.append([lo, hi])
    if not ranges:
        ranges = [[float(np.min(time)), None]]
        return ranges, "every time bin was flagged: nothing removed, sample flagged for review"
    return ranges, f"{int(bad.sum())} of {bins} time bins removed (robust z > {max_z:g})"


def place_debris_threshold(fsc_a_unit: np.ndarray, bounds, default) -> Placement:
    """The FSC-A level (fraction of range) at the valley between debris and cells."""
    return place_threshold_at_density_valley(
        fsc_a_unit, bounds, default, bandwidth=0.01, min_side_share=0.001
    )
