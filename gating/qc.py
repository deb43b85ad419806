"""Quality control before gating, as a tree of recorded gates: saturated events, unstable flow,
doublets, debris. Each step is an ``AppliedGate`` (so replay and export reproduce it) and a
``QcStep`` saying how many events it removed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from gating.adaptive import Placement, place_threshold_at_density_valley
from gating.gates import RawRangeGate, RectangleGate, TimeRangesGate, singlet_polygon
from gating.records import ALL_EVENTS, AppliedGate, QcStep, evaluate_gates
from gating.space import GatingSpace, channel_range
from gating.strategy import QC_ROOT, QcSettings
from panels.resolve import ResolvedPanel

# QC gates, in order, and the QC step each one's removals are reported as.
QC_STEPS = {
    "in_range": "margin_events",
    "stable_flow": "time_anomalies",
    "singlets": "doublets",
    QC_ROOT: "debris",
}


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


@dataclass
class QcResult:
    """The QC gates of one sample, their masks, the steps and flags they raised."""

    gates: list[AppliedGate] = field(default_factory=list)
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    steps: list[QcStep] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)

    def apply(self, gate: AppliedGate, space: GatingSpace) -> np.ndarray:
        self.gates.append(gate)
        return evaluate_gates([gate], space, self.masks)[gate.name]


def passed_through(
    name: str, parent: str, resolved: ResolvedPanel, why: str, from_data: bool = True
) -> AppliedGate:
    """A step not run on this file, recorded as a gate every event passes (so the tree, the
    replay and the GatingML export keep their shape; a limitless range on a channel the file
    has, which flowkit can find)."""
    channel = next(iter(resolved.marker_channels.values()), "")
    gate = RawRangeGate({}, (channel,) if channel else ())
    return AppliedGate(name, parent, gate, from_data, f"skipped: {why}")


def run_qc(
    space: GatingSpace, resolved: ResolvedPanel, settings: QcSettings, *, entry: str = ""
) -> QcResult:
    """Margin events, time anomalies, doublets and debris, in that order (``QC_STEPS``).

    With ``entry`` (the files are exports of the gate of that name: already gated, without
    scatter), doublets and debris are not looked for on scatter that is not there: the steps
    are recorded as passed through and flagged ``skipped:singlets,debris``; margin events and
    unstable flow (where the export kept Time) are still removed."""
    data = space.data
    h = data.header
    n = h.n_events
    result = QcResult(masks={ALL_EVENTS: np.ones(n, dtype=bool)})
    used = [*resolved.marker_channels.values(), *resolved.scatter_channels.values()]
    limits = {c: (None, channel_range(h.pnr[h.pnn.index(c)]) - 1) for c in used}
    margin = RawRangeGate(limits, tuple(used))
    result.apply(
        AppliedGate("in_range", ALL_EVENTS, margin, True, "saturated events removed"), space
    )
    result.apply(_stable_flow_gate(space, resolved, settings, result), space)
    if entry:
        why = f"the file is an export of {entry} (already gated)"
        result.apply(passed_through("singlets", "stable_flow", resolved, why), space)
        result.apply(passed_through(QC_ROOT, "singlets", resolved, why), space)
        result.flags.append("skipped:singlets,debris")
    else:
        _singlets_and_debris(space, settings, result)
    parent_count = n
    notes = {g.name: g.note for g in result.gates}
    for name, step in QC_STEPS.items():
        count = int(np.count_nonzero(result.masks[name]))
        result.steps.append(QcStep(step, parent_count, parent_count - count, notes[name]))
        parent_count = count
    removed = n - parent_count
    if n and removed / n > settings.max_removed_share:
        result.flags.append(f"qc_removed:{removed / n:.0%}>{settings.max_removed_share:.0%}")
    return result


def _singlets_and_debris(space: GatingSpace, settings: QcSettings, result: QcResult) -> None:
    result.apply(_singlet_gate(space, settings, result), space)
    debris = place_debris_threshold(
        space["FSC-A"][result.masks["singlets"]],
        settings.debris_fsc.bounds,
        settings.debris_fsc.default,
    )
    result.apply(
        AppliedGate(
            QC_ROOT,
            "singlets",
            RectangleGate({"FSC-A": (debris.value, None)}),
            debris.from_data,
            f"FSC-A >= {debris.value:.3f} ({debris.note})",
        ),
        space,
    )
    if not debris.from_data:
        result.flags.append("default_gate:debris")


def _stable_flow_gate(
    space: GatingSpace, resolved: ResolvedPanel, settings: QcSettings, result: QcResult
) -> AppliedGate:
    if not resolved.time_channel:
        result.flags.append("no_time_channel:time_qc_skipped")
        return passed_through(
            "stable_flow", "in_range", resolved, "no Time channel, nothing removed", False
        )
    keep_ranges, detail = stable_time_ranges(
        space.data.channel(resolved.time_channel),
        [space[m] for m in resolved.marker_channels],
        result.masks["in_range"],
        settings.time_bins,
        settings.time_max_z,
    )
    gate = TimeRangesGate(resolved.time_channel, tuple((lo, hi) for lo, hi in keep_ranges))
    return AppliedGate("stable_flow", "in_range", gate, True, detail)


# Doublet discrimination, in order of preference: a pulse's area against its height (the
# ratio grows for two cells in one pulse), or its width (which grows too).
PULSE_PAIRS = (
    ("FSC-A", "FSC-H", "height"),
    ("FSC-A", "FSC-W", "width"),
    ("SSC-A", "SSC-H", "height"),
    ("SSC-A", "SSC-W", "width"),
)


def _singlet_gate(space: GatingSpace, settings: QcSettings, result: QcResult) -> AppliedGate:
    """Singlets by the pulse's shape, relative to the singlets' own median.

    Instruments scale area, height and width differently (area scaling factors, window
    extension), so the limit is placed on the ratio to the median of the events (mostly
    singlets): doublets lie about 1.3-2x above it. Without any pulse channel nothing is
    removed and the sample is flagged.
    """
    pair = next(((a, p, k) for a, p, k in PULSE_PAIRS if a in space and p in space), None)
    if pair is None:
        result.flags.append("no_pulse_height_or_width:doublets_not_removed")
        return AppliedGate(
            "singlets", "stable_flow", RawRangeGate({}), False, "no pulse height or width"
        )
    area, pulse, shape = pair
    kept = result.masks["stable_flow"]
    if shape == "height":
        measure = space[area][kept] / np.maximum(space[pulse][kept], 1e-9)
    else:
        measure = space[pulse][kept].astype(np.float64)
    centre = float(np.median(measure)) if measure.size else 1.0
    place = place_threshold_at_density_valley(
        measure / (centre or 1.0),
        settings.singlet_pulse.bounds,
        settings.singlet_pulse.default,
        bandwidth=0.02,
        min_side_share=0.001,
    )
    if not place.from_data:
        result.flags.append("default_gate:singlets")
    limit = place.value * centre
    if shape == "height":
        gate = singlet_polygon(limit, area, pulse)
        note = f"{area}/{pulse} <= {limit:.3f} ({place.value:.3f} x median; {place.note})"
    else:
        gate = RectangleGate({pulse: (None, limit)})
        note = f"{pulse} < {limit:.4f} ({place.value:.3f} x median; {place.note})"
    return AppliedGate("singlets", "stable_flow", gate, place.from_data, note)
