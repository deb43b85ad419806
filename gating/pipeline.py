"""One sample from events to populations: compensate, transform, QC, place gates, count.

Knows nothing of studies, stores or Prefect: it takes an ``FcsData`` and a ``ResolvedPanel``
and returns a ``SampleGating``, so it can be run and tested on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gating import qc
from gating.adaptive import place_ellipse_by_mixture, place_threshold_at_density_valley
from gating.compensate import compensate, linear_unit, logicle
from gating.strategy import QC_ROOT, GateSpec, Strategy
from panels.fcs import FcsData
from panels.resolve import ResolvedPanel

PIPELINE_VERSION = "1"  # bump when a change alters counts for an unchanged strategy and file


@dataclass(frozen=True)
class PopulationCount:
    population: str
    parent: str
    count: int
    parent_count: int

    @property
    def pct_parent(self) -> float:
        return 100.0 * self.count / self.parent_count if self.parent_count else float("nan")


@dataclass(frozen=True)
class AppliedGate:
    """A gate as applied to one sample, in the strategy's units, with its provenance."""

    name: str
    parent: str
    kind: str
    dimensions: tuple[str, ...]
    parameters: dict
    from_data: bool
    note: str


@dataclass
class SampleGating:
    """Everything one sample's gating produced."""

    n_events: int
    populations: list[PopulationCount]
    qc_steps: list[qc.QcStep]
    gates: list[AppliedGate]
    flags: list[str]
    masks: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    dimensions: dict[str, np.ndarray] = field(repr=False, default_factory=dict)

    def count(self, population: str) -> int:
        return next(p.count for p in self.populations if p.population == population)


def transformed_dimensions(data: FcsData, resolved: ResolvedPanel) -> dict[str, np.ndarray]:
    """Compensated, logicle-transformed markers and range-scaled scatter, by panel name."""
    h = data.header
    events = data.events
    spill = h.spillover()
    if spill is not None:
        events = compensate(events, h.pnn, spill[0], spill[1])
    p = resolved.panel
    dims: dict[str, np.ndarray] = {}
    for marker, channel in resolved.marker_channels.items():
        j = h.pnn.index(channel)
        t = h.pnr[j] if h.pnr[j] > 0 else 262144.0
        dims[marker] = logicle(events[:, j], t, p.logicle_w, p.logicle_m, p.logicle_a)
    for role, channel in resolved.scatter_channels.items():
        j = h.pnn.index(channel)
        dims[role] = linear_unit(events[:, j], h.pnr[j] if h.pnr[j] > 0 else 262144.0)
    return dims


def gate_sample(data: FcsData, resolved: ResolvedPanel, strategy: Strategy) -> SampleGating:
    """Run QC and the strategy's gate tree on one sample."""
    h = data.header
    n = h.n_events
    flags: list[str] = []
    if h.spillover() is None:
        flags.append("no_spillover_keyword:uncompensated")
    dims = transformed_dimensions(data, resolved)
    settings = strategy.qc

    steps: list[qc.QcStep] = []
    gates: list[AppliedGate] = []
    keep = np.ones(n, dtype=bool)

    def record(name: str, step_keep: np.ndarray, detail: str) -> None:
        nonlocal keep
        before = int(keep.sum())
        keep = keep & step_keep
        steps.append(qc.QcStep(name, before, before - int(keep.sum()), detail))

    used = [resolved.channel(d) for d in (*resolved.marker_channels, *resolved.scatter_channels)]
    cols = [h.pnn.index(c) for c in used]
    ranges = np.array([h.pnr[j] if h.pnr[j] > 0 else np.inf for j in cols])
    record("margin_events", qc.margin_events(data.events[:, cols], ranges), "saturated events")
    if resolved.time_channel:
        markers = np.column_stack([dims[m] for m in resolved.marker_channels])
        time_keep, detail = qc.time_anomalies(
            data.channel(resolved.time_channel), markers, settings.time_bins, settings.time_max_z
        )
        record("time_anomalies", time_keep, detail)
    else:
        flags.append("no_time_channel:time_qc_skipped")
    singlet_keep, singlet_place = qc.singlets(
        dims["FSC-A"][keep],
        dims["FSC-H"][keep],
        settings.singlet_ratio_bounds,
        settings.singlet_ratio_default,
    )
    full = np.zeros(n, dtype=bool)
    full[np.flatnonzero(keep)[singlet_keep]] = True
    record("doublets", full, f"FSC-A/FSC-H <= {singlet_place.value:.3f} ({singlet_place.note})")
    gates.append(
        AppliedGate(
            "singlets",
            "time_ok",
            "ratio_max",
            ("FSC-A", "FSC-H"),
            {"max_ratio": singlet_place.value},
            singlet_place.from_data,
            singlet_place.note,
        )
    )
    # Placed on the events still kept, applied to all.
    debris_place = qc.place_debris_threshold(
        dims["FSC-A"][keep], settings.debris_fsc_bounds, settings.debris_fsc_default
    )
    record("debris", dims["FSC-A"] > debris_place.value, f"FSC-A > {debris_place.value:.3f}")
    gates.append(
        AppliedGate(
            "non_debris",
            "singlets",
            "rectangle",
            ("FSC-A",),
            {"FSC-A": [debris_place.value, None]},
            debris_place.from_data,
            debris_place.note,
        )
    )
    for place, label in ((singlet_place, "singlets"), (debris_place, "non_debris")):
        if not place.from_data:
            flags.append(f"default_gate:{label}")
    removed = n - int(keep.sum())
    if n and removed / n > settings.max_removed_share:
        flags.append(f"qc_removed:{removed / n:.0%}>{settings.max_removed_share:.0%}")

    masks: dict[str, np.ndarray] = {QC_ROOT: keep}
    thresholds: dict[str, float] = {}

    def threshold(ref) -> float | None:
        if ref is None or isinstance(ref, (int, float)):
            return None if ref is None else float(ref)
        if ref not in thresholds:
            spec = strategy.thresholds[ref]
            if spec.within not in masks:
                raise RuntimeError(f"threshold {ref} needs gate {spec.within} first")
            values = dims[spec.dimension][masks[spec.within]]
            place = place_threshold_at_density_valley(values, spec.bounds, spec.default)
            thresholds[ref] = place.value
            if not place.from_data:
                flags.append(f"default_threshold:{ref}")
            gates.append(
                AppliedGate(
                    ref,
                    spec.within,
                    "threshold",
                    (spec.dimension,),
                    {"value": place.value, "bounds": list(spec.bounds)},
                    place.from_data,
                    place.note,
                )
            )
        return thresholds[ref]

    for gate in strategy.gates:
        masks[gate.name] = _apply_gate(gate, masks, dims, threshold, gates, flags)

    populations = []
    for gate in strategy.reported:
        parent_count = int(masks[gate.parent].sum())
        count = int(masks[gate.name].sum())
        populations.append(PopulationCount(gate.name, gate.parent, count, parent_count))
        if count < settings.min_population_events:
            flags.append(f"low_count:{gate.name}<{settings.min_population_events}")
    return SampleGating(n, populations, steps, gates, flags, masks, dims)


def _apply_gate(gate: GateSpec, masks, dims, threshold, gates, flags) -> np.ndarray:
    parent = masks[gate.parent]
    if gate.kind == "rectangle":
        mask = parent.copy()
        applied = {}
        for dim, (lo_ref, hi_ref) in gate.limits.items():
            lo, hi = threshold(lo_ref), threshold(hi_ref)
            if lo is not None:
                mask &= dims[dim] > lo
            if hi is not None:
                mask &= dims[dim] <= hi
            applied[dim] = [lo, hi]
        gates.append(
            AppliedGate(
                gate.name,
                gate.parent,
                "rectangle",
                tuple(gate.limits),
                applied,
                True,
                "limits from thresholds",
            )
        )
        return mask
    if gate.kind == "boolean":
        parts = [~masks[name] if negated else masks[name] for name, negated in gate.refs]
        combined = np.logical_and.reduce(parts) if gate.op == "and" else np.logical_or.reduce(parts)
        refs = [("not " if neg else "") + name for name, neg in gate.refs]
        gates.append(
            AppliedGate(
                gate.name, gate.parent, "boolean", (), {"op": gate.op, "refs": refs}, True, ""
            )
        )
        return parent & combined
    if gate.kind == "scatter_cluster":
        o = gate.options
        xy = np.column_stack([dims[d] for d in gate.dimensions])
        place = place_ellipse_by_mixture(
            xy[parent],
            tuple(tuple(b) for b in o["pick"]),
            tuple(o["default_mean"]),
            tuple(tuple(r) for r in o["default_covariance"]),
            components=int(o.get("components", 3)),
            distance_square=float(o.get("distance_square", 9.21)),
        )
        if not place.from_data:
            flags.append(f"default_gate:{gate.name}")
        gates.append(
            AppliedGate(
                gate.name,
                gate.parent,
                "ellipse",
                gate.dimensions,
                {
                    "mean": place.mean.tolist(),
                    "covariance": place.covariance.tolist(),
                    "distance_square": place.distance_square,
                },
                place.from_data,
                place.note,
            )
        )
        return parent & place.contains(xy)
    raise ValueError(f"unknown gate kind {gate.kind}")
