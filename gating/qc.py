"""Quality control before gating: each step keeps a mask and says how many events it removed."""

from __future__ import annotations

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


def margin_events(raw: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """Keep events below the top of every channel's range (saturated events are not data)."""
    return np.all(raw < (ranges - 1)[None, :], axis=1)


def time_anomalies(
    time: np.ndarray, signals: np.ndarray, bins: int, max_z: float
) -> tuple[np.ndarray, str]:
    """Drop time bins whose flow rate or channel signal jumps (in the manner of flowAI/PeacoQC).

    Events are binned by acquisition time; per bin we take the event count and each channel's
    mean (a median flips between modes on a channel split half positive, half negative), and
    flag bins whose robust z-score (median/MAD across bins) exceeds ``max_z``.
    """
    n = time.size
    keep = np.ones(n, dtype=bool)
    if n < bins * 20 or not np.isfinite(time).all() or np.ptp(time) <= 0:
        return keep, "skipped: too few events or no usable Time channel"
    edges = np.linspace(time.min(), time.max(), bins + 1)
    which = np.clip(np.searchsorted(edges, time, side="right") - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins).astype(float)
    order = np.argsort(which, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts).astype(int)])
    means = np.full((bins, signals.shape[1]), np.nan)
    sorted_signals = signals[order]
    for b in range(bins):
        if counts[b] >= 10:
            means[b] = sorted_signals[starts[b] : starts[b + 1]].mean(axis=0)

    def robust_z(x: np.ndarray, floor: float) -> np.ndarray:
        centre = np.nanmedian(x, axis=0)
        mad = np.maximum(1.4826 * np.nanmedian(np.abs(x - centre), axis=0), floor)
        return np.abs(x - centre) / mad

    # Floors keep perfectly stable acquisitions from flagging on sampling noise.
    rate_z = robust_z(counts, floor=max(np.sqrt(np.median(counts)), 1.0))
    signal_z = robust_z(means, floor=0.01)
    bad = (rate_z > max_z) | np.any(np.nan_to_num(signal_z) > max_z, axis=1) | (counts < 10)
    bad &= counts > 0  # empty bins remove nothing
    keep = ~bad[which]
    return keep, f"{int(bad.sum())} of {bins} time bins flagged (robust z > {max_z:g})"


def singlets(fsc_a: np.ndarray, fsc_h: np.ndarray, bounds, default) -> tuple[np.ndarray, Placement]:
    """Keep events whose FSC-A/FSC-H ratio is below the valley between singlets and doublets."""
    ratio = fsc_a / np.maximum(fsc_h, 1e-9)
    placement = place_threshold_at_density_valley(
        ratio, bounds, default, bandwidth=0.02, min_side_share=0.001
    )
    return ratio <= placement.value, placement


def place_debris_threshold(fsc_a_unit: np.ndarray, bounds, default) -> Placement:
    """The FSC-A level (fraction of range) at the valley between debris and cells."""
    return place_threshold_at_density_valley(
        fsc_a_unit, bounds, default, bandwidth=0.01, min_side_share=0.001
    )
