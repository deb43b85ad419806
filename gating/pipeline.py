"""One sample from events to populations: compensate, transform, QC, place gates, count.

Knows nothing of studies, stores or Prefect: it takes an ``FcsData`` and a ``ResolvedPanel``
and returns a ``SampleGating``, so it can be run and tested on its own.

Every gate the sample went through, QC steps included, is recorded as an ``AppliedGate`` with
fixed parameters and evaluated by one function, ``evaluate_gate``. Replaying the recorded gates
(``replay_gates``) therefore gives exactly the counts of the original run, and the same records
export to a flowkit GatingStrategy / GatingML 2.0 (``gating.export``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from flowutils.gating import points_in_ellipsoid, points_in_polygon

from gating import qc
from gating.adaptive import place_ellipse_by_mixture, place_threshold_at_density_valley
from gating.space import GatingSpace, channel_range
from gating.strategy import QC_ROOT, GateSpec, Strategy
from gating.transforms import FAST_ERROR, Logicle
from panels.fcs import FcsData
from panels.resolve import ResolvedPanel

PIPELINE_VERSION = "3"  # bump when a change alters counts for an unchanged strategy and file
ALL_EVENTS = "all_events"
# QC gates, in order; their removals are the QC steps.
QC_STEPS = {
    "in_range": "margin_events",
    "stable_flow": "time_anomalies",
    "singlets": "doublets",
    QC_ROOT: "debris",
}


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
    """A gate as applied to one sample, with fixed parameters and its provenance.

    kind: ``raw_range`` (uncompensated, untransformed channel limits), ``time_ranges``,
    ``rectangle``, ``polygon``, ``ellipse`` (on transformed dimensions), ``boolean``, or
    ``threshold`` (a placement record used by rectangles, not a gate).
    Rectangle limits follow GatingML: ``min <= x < max``; ``None`` is open.
    """

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
    space: GatingSpace | None = field(repr=False, default=None)

    def count(self, population: str) -> int:
        return next(p.count for p in self.populations if p.population == population)


def evaluate_gate(
    gate: AppliedGate, masks: dict[str, np.ndarray], space: GatingSpace, data: FcsData
) -> np.ndarray:
    """Events of the parent population that fall in the gate (exact, as flowkit decides)."""
    parent = masks[gate.parent]
    p = gate.parameters
    if gate.kind == "raw_range":
        return parent & data.within(p["limits"])
    if gate.kind == "time_ranges":
        t = data.channel(p["channel"])
        inside = np.zeros_like(parent)
        for lo, hi in p["keep"]:
            inside |= (t >= lo) & (t < hi if hi is not None else True)
        return parent & inside
    if gate.kind == "rectangle":
        inside = parent.copy()
        for dim, (lo, hi) in p["limits"].items():
            if lo is not None:
                inside &= space.at_least(dim, lo)
            if hi is not None:
                inside &= space.below(dim, hi)
        return inside
    if gate.kind == "polygon":
        vertices = np.asarray(p["vertices"], float)
        inside = np.zeros_like(parent)
        for rows in _parent_rows_in_blocks(parent):
            xy = np.column_stack([space.exact(d, rows) for d in gate.dimensions])
            inside[rows] = points_in_polygon(vertices, xy).astype(bool)
        return inside
    if gate.kind == "ellipse":
        return _inside_ellipse(gate, space, parent)
    if gate.kind == "boolean":
        parts = [~masks[r[4:]] if r.startswith("not ") else masks[r] for r in p["refs"]]
        combined = np.logical_and.reduce(parts) if p["op"] == "and" else np.logical_or.reduce(parts)
        return parent & combined
    raise ValueError(f"gate {gate.name}: unknown kind {gate.kind!r}")


def _parent_rows_in_blocks(parent: np.ndarray, block: int = 1 << 16):
    """Indices of the parent's events, a block of events at a time (bounded temporaries)."""
    for start in range(0, parent.size, block):
        rows = np.flatnonzero(parent[start : start + block])
        if rows.size:
            yield rows + start


def _inside_ellipse(gate: AppliedGate, space: GatingSpace, parent: np.ndarray) -> np.ndarray:
    """Ellipse membership as flowutils decides it (flowkit's test), at a fraction of its cost.

    The squared Mahalanobis distance is computed on the space's values (exact for scatter,
    within ``FAST_ERROR`` for markers). Only events so near the boundary that the difference
    could change the answer are tested with flowutils' own function on exact values.
    """
    p = gate.parameters
    mean = np.asarray(p["mean"], float)
    covariance = np.asarray(p["covariance"], float)
    distance_square = float(p["distance_square"])
    precision = np.linalg.inv(covariance)
    # |q error| <= 2 sqrt(q * lmax) |value error| + lmax |value error|^2, plus rounding.
    value_error = np.sqrt(len(mean)) * max(
        FAST_ERROR if isinstance(space.transforms[d], Logicle) else 0.0 for d in gate.dimensions
    )
    eigen = np.linalg.eigvalsh((precision + precision.T) / 2)
    margin = (
        2
        * (2 * np.sqrt(distance_square * eigen.max()) * value_error + eigen.max() * value_error**2)
        + 1e-9 * distance_square * eigen.max() / eigen.min()
    )
    inside = np.zeros_like(parent)
    for rows in _parent_rows_in_blocks(parent):
        offsets = [
            space[d][rows].astype(np.float64) - m
            for d, m in zip(gate.dimensions, mean, strict=True)
        ]
        q = np.zeros(rows.size)
        for i, di in enumerate(offsets):
            for j, dj in enumerate(offsets[i:], start=i):
                q += (precision[i, j] if i == j else precision[i, j] + precision[j, i]) * di * dj
        inside[rows] = q <= distance_square
        near = rows[np.abs(q - distance_square) <= margin]
        if near.size:
            xy = np.column_stack([space.exact(d, near) for d in gate.dimensions])
            hit = points_in_ellipsoid(covariance, mean, distance_square, xy)
            inside[near] = hit.astype(bool)
    return inside


def replay_gates(
    data: FcsData,
    resolved: ResolvedPanel,
    gates: list[AppliedGate],
    space: GatingSpace | None = None,
) -> dict[str, np.ndarray]:
    """Masks of recorded gates on the sample's events, without placing anything anew."""
    space = space or GatingSpace.of_sample(data, resolved)
    masks = {ALL_EVENTS: np.ones(data.header.n_events, dtype=bool)}
    for gate in gates:
        if gate.kind != "threshold":
            masks[gate.name] = evaluate_gate(gate, masks, space, data)
    return masks


def singlet_polygon(max_ratio: float) -> list[list[float]]:
    """Region FSC-H >= FSC-A / max_ratio (range-scaled), as polygon vertices."""
    return [[-1.0, -1.0 / max_ratio], [2.0, 2.0 / max_ratio], [2.0, 2.0], [-1.0, 2.0]]


def gate_sample(data: FcsData, resolved: ResolvedPanel, strategy: Strategy) -> SampleGating:
    """Run QC and the strategy's gate tree on one sample."""
    h = data.header
    n = h.n_events
    flags: list[str] = []
    space = GatingSpace.of_sample(data, resolved)
    if space.spillover is None:
        flags.append("no_spillover_keyword:uncompensated")
    settings = strategy.qc
    gates: list[AppliedGate] = []
    masks: dict[str, np.ndarray] = {ALL_EVENTS: np.ones(n, dtype=bool)}

    def apply(gate: AppliedGate) -> np.ndarray:
        gates.append(gate)
        masks[gate.name] = evaluate_gate(gate, masks, space, data)
        return masks[gate.name]

    # QC: saturated events, unstable flow, doublets, debris.
    used = [*resolved.marker_channels.values(), *resolved.scatter_channels.values()]
    limits = {c: [None, channel_range(h.pnr[h.pnn.index(c)]) - 1] for c in used}
    apply(
        AppliedGate(
            "in_range",
            ALL_EVENTS,
            "raw_range",
            tuple(used),
            {"limits": limits},
            True,
            "saturated events removed",
        )
    )
    if resolved.time_channel:
        keep_ranges, detail = qc.stable_time_ranges(
            data.channel(resolved.time_channel),
            [space[m] for m in resolved.marker_channels],
            masks["in_range"],
            settings.time_bins,
            settings.time_max_z,
        )
        apply(
            AppliedGate(
                "stable_flow",
                "in_range",
                "time_ranges",
                (resolved.time_channel,),
                {"channel": resolved.time_channel, "keep": keep_ranges},
                True,
                detail,
            )
        )
    else:
        flags.append("no_time_channel:time_qc_skipped")
        apply(
            AppliedGate(
                "stable_flow",
                "in_range",
                "raw_range",
                (),
                {"limits": {}},
                False,
                "no Time channel: nothing removed",
            )
        )
    kept = masks["stable_flow"]
    ratio = space["FSC-A"][kept] / np.maximum(space["FSC-H"][kept], 1e-9)
    singlet = place_threshold_at_density_valley(
        ratio,
        settings.singlet_ratio_bounds,
        settings.singlet_ratio_default,
        bandwidth=0.02,
        min_side_share=0.001,
    )
    apply(
        AppliedGate(
            "singlets",
            "stable_flow",
            "polygon",
            ("FSC-A", "FSC-H"),
            {"vertices": singlet_polygon(singlet.value), "max_ratio": singlet.value},
            singlet.from_data,
            f"FSC-A/FSC-H <= {singlet.value:.3f} ({singlet.note})",
        )
    )
    debris = qc.place_debris_threshold(
        space["FSC-A"][masks["singlets"]], settings.debris_fsc_bounds, settings.debris_fsc_default
    )
    apply(
        AppliedGate(
            QC_ROOT,
            "singlets",
            "rectangle",
            ("FSC-A",),
            {"limits": {"FSC-A": [debris.value, None]}},
            debris.from_data,
            f"FSC-A >= {debris.value:.3f} ({debris.note})",
        )
    )
    for place, label in ((singlet, "singlets"), (debris, "debris")):
        if not place.from_data:
            flags.append(f"default_gate:{label}")
    steps = []
    parent_count = n
    for name, step in QC_STEPS.items():
        count = int(np.count_nonzero(masks[name]))
        detail = next(g.note for g in gates if g.name == name)
        steps.append(qc.QcStep(step, parent_count, parent_count - count, detail))
        parent_count = count
    removed = n - parent_count
    if n and removed / n > settings.max_removed_share:
        flags.append(f"qc_removed:{removed / n:.0%}>{settings.max_removed_share:.0%}")

    thresholds: dict[str, float] = {}

    def threshold(ref) -> float | None:
        if ref is None or isinstance(ref, (int, float)):
            return None if ref is None else float(ref)
        if ref not in thresholds:
            spec = strategy.thresholds[ref]
            values = space[spec.dimension][masks[spec.within]]
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

    for spec in strategy.gates:
        gate = _place_gate(spec, masks, space, threshold)
        if not gate.from_data:
            flags.append(f"default_gate:{gate.name}")
        apply(gate)

    populations = []
    for spec in strategy.reported:
        count = int(np.count_nonzero(masks[spec.name]))
        parent_count = int(np.count_nonzero(masks[spec.parent]))
        populations.append(PopulationCount(spec.name, spec.parent, count, parent_count))
        if count < settings.min_population_events:
            flags.append(f"low_count:{spec.name}<{settings.min_population_events}")
    return SampleGating(n, populations, steps, gates, flags, masks, space)


def _place_gate(spec: GateSpec, masks, space: GatingSpace, threshold) -> AppliedGate:
    """Fix a strategy gate's parameters for this sample."""
    if spec.kind == "rectangle":
        limits = {dim: [threshold(lo), threshold(hi)] for dim, (lo, hi) in spec.limits.items()}
        return AppliedGate(
            spec.name,
            spec.parent,
            "rectangle",
            tuple(spec.limits),
            {"limits": limits},
            True,
            "limits from thresholds",
        )
    if spec.kind == "boolean":
        refs = [("not " if negated else "") + name for name, negated in spec.refs]
        return AppliedGate(
            spec.name, spec.parent, "boolean", (), {"op": spec.op, "refs": refs}, True, ""
        )
    if spec.kind == "scatter_cluster":
        o = spec.options
        x_dim, y_dim = spec.dimensions
        place = place_ellipse_by_mixture(
            space[x_dim],
            space[y_dim],
            tuple(tuple(b) for b in o["pick"]),
            tuple(o["default_mean"]),
            tuple(tuple(r) for r in o["default_covariance"]),
            within=masks[spec.parent],
            components=int(o.get("components", 3)),
            distance_square=float(o.get("distance_square", 9.21)),
        )
        return AppliedGate(
            spec.name,
            spec.parent,
            "ellipse",
            spec.dimensions,
            {
                "mean": place.mean.tolist(),
                "covariance": place.covariance.tolist(),
                "distance_square": place.distance_square,
            },
            place.from_data,
            place.note,
        )
    raise ValueError(f"unknown gate kind {spec.kind}")
