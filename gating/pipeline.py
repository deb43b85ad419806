"""One sample from events to populations: compensate, transform, QC, place gates, count.

Knows nothing of studies, stores or Prefect: it takes an ``FcsData`` and a ``ResolvedPanel``
and returns a ``SampleGating``, so it can be run and tested on its own.

Every gate the sample went through, QC steps included, is recorded as an ``AppliedGate`` with
fixed parameters and evaluated by its own class (``gating.gates``). Replaying the recorded
gates (``replay_gates``) therefore gives exactly the counts of the original run, and the same
records export to a flowkit GatingStrategy / GatingML 2.0 (``gating.export``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from gating.adaptive import Placement, half_spread, place_threshold, refused_by_floor
from gating.dim_tail import place_dim_tailed_threshold
from gating.gates import ThresholdMark
from gating.qc import passed_through, run_qc
from gating.records import (
    NEEDS_REVIEW,
    REVIEW_FLAGS,
    WEAK_BOUNDARY_METHODS,
    AppliedGate,
    MarkerMedian,
    PopulationCount,
    SampleGating,
    evaluate_gates,
)
from gating.registration import landmark_peak
from gating.space import GatingSpace
from gating.strategy import QC_ROOT, Limit, PlacementContext, Strategy, StrategyError
from panels.fcs import FcsData
from panels.resolve import ResolvedPanel

PIPELINE_VERSION = "6"  # bump when a change alters counts for an unchanged strategy and file
HAND_DRAWN = "drawn by hand in review"  # the note of a gate placed as a person drew it


def replay_gates(
    data: FcsData,
    resolved: ResolvedPanel,
    gates: list[AppliedGate],
    space: GatingSpace | None = None,
) -> dict[str, np.ndarray]:
    """Masks of recorded gates on the sample's events, without placing anything anew."""
    return evaluate_gates(gates, space or GatingSpace.of_sample(data, resolved))


def _uncompensated_flag(resolved: ResolvedPanel) -> str:
    """Why no spillover is applied: FlowJo names the parameters it has compensated
    ``FJComp-<detector>`` in its exports (no $SPILLOVER is written with them), so such a file
    is compensated already; any other file without the keyword is not compensated."""
    channels = resolved.marker_channels.values()
    if channels and all(c.startswith("FJComp-") for c in channels):
        return "no_spillover_keyword:compensated_by_flowjo"
    return "no_spillover_keyword:uncompensated"


def gate_sample(data: FcsData, resolved: ResolvedPanel, strategy: Strategy) -> SampleGating:
    """Run QC and the strategy's gate tree on one sample."""
    space = GatingSpace.of_sample(data, resolved)
    flags = [] if space.spillover is not None else [_uncompensated_flag(resolved)]
    entry = resolved.panel.enters_at
    entered = entry_and_ancestors(strategy, entry, resolved.panel.source or resolved.panel.name)
    qc = run_qc(space, resolved, strategy.qc, entry=entry)
    flags += qc.flags
    if entry:
        flags += [f"entered_at:{entry}", "skipped:" + ",".join(entered)]
    gates, masks = qc.gates, qc.masks
    placed: dict[str, float] = {}

    def threshold(ref: Limit) -> float | None:
        """A limit's value: a number as written, a threshold placed once per sample."""
        if ref is None or isinstance(ref, (int, float)):
            return None if ref is None else float(ref)
        if ref not in placed:
            spec = strategy.thresholds[ref]
            within = masks[spec.within]
            place = None
            if ref in strategy.overrides:  # set by hand in review: as written
                value = float(strategy.overrides[ref])
                place = Placement(value, True, f"set by hand in review: {value:.3f}", "manual")
            elif ref in strategy.offsets:
                place = place_registered(
                    space[spec.dimension][masks[spec.registration.landmark_within]],
                    spec.registration.peak,
                    strategy.offsets[ref],
                    spec.bounds,
                )
            if place is None and spec.placement == "dim_tail_mixture":
                place = place_dim_tailed_threshold(
                    space[spec.dimension][within], spec.bounds, spec.default
                )
            place = place or place_threshold(
                space[spec.dimension][within],
                spec.bounds,
                spec.default,
                partner=space[spec.pair.dimension][within] if spec.pair else None,
                target=spec.pair.direction if spec.pair else (1, 1),
            )
            if spec.tail is not None and place.method not in ("manual", "registered"):
                tail = place_beyond_negatives(
                    space[spec.dimension][masks[spec.tail.within]], spec.tail.sds, spec.bounds
                )
                if tail is not None and (not place.from_data or place.value < tail.inside):
                    why = place.note if not place.from_data else f"{place.note}, in the negatives"
                    place = Placement(tail.value, True, f"{tail.note} ({why})", "tail")
            placed[ref] = place.value
            if not place.from_data:
                flags.append(f"default_threshold:{ref}")
            if refused_by_floor(place):  # a boundary was there, too weak to be measured
                flags.append(f"below_separation_floor:{ref}")
            mark = ThresholdMark(
                spec.dimension, place.value, spec.bounds, place.method, place.separation
            )
            gates.append(AppliedGate(ref, spec.within, mark, place.from_data, place.note))
        return placed[ref]

    context = PlacementContext(space, masks, threshold)
    not_measured = strategy.not_measurable(resolved.missing)
    placed_within = strategy.placed_within()
    for spec in strategy.gates:
        if spec.name in not_measured:
            continue
        if spec.name in entered:  # the file is this population already: nothing to place
            why = f"the file is an export of {entry} (already gated)"
            applied = passed_through(spec.name, spec.parent, resolved, why)
        elif spec.name in strategy.overrides:  # drawn by hand in review: as drawn
            applied = AppliedGate(
                spec.name, spec.parent, strategy.overrides[spec.name], True, HAND_DRAWN
            )
        else:
            applied = spec.place(context)
        if spec.name in placed_within:  # drawn over the events it was placed on
            applied = replace(applied, within=placed_within[spec.name])
        if not applied.from_data:
            weak = applied.note.startswith(WEAK_BOUNDARY_METHODS)
            family = "below_separation_floor" if weak else "default_gate"
            flags.append(f"{family}:{applied.name}")
        gates.append(applied)
        evaluate_gates([applied], space, masks)

    populations = []
    minimum = strategy.qc.min_population_events
    for spec in strategy.reported:
        if spec.name in not_measured:
            flags.append(f"not_measured:{spec.name}({'+'.join(not_measured[spec.name])})")
            continue
        count = int(np.count_nonzero(masks[spec.name]))
        parent_count = int(np.count_nonzero(masks[spec.parent]))
        populations.append(PopulationCount(spec.name, spec.parent, count, parent_count))
        if count < minimum:
            flags.append(f"low_count:{spec.name}<{minimum}")
    if any(f.startswith(REVIEW_FLAGS) for f in flags):
        flags.append(NEEDS_REVIEW)
    lost = {s.name: not_measured[s.name] for s in strategy.reported if s.name in not_measured}
    medians = population_medians(populations, masks, space, resolved)
    return SampleGating(
        data.header.n_events, populations, qc.steps, gates, flags, masks, space, lost, medians
    )


def entry_and_ancestors(strategy: Strategy, entry: str, where: str) -> list[str]:
    """The gates a file entering the tree at ``entry`` has already been through (the entry
    and its ancestors, top first); an unknown gate is an error naming the panel."""
    if not entry:
        return []
    parents = {spec.name: spec.parent for spec in strategy.gates}
    if entry not in parents:
        raise StrategyError(
            f"{where}: enters_at: {entry!r} is not a gate of strategy {strategy.name} "
            f"(gates: {', '.join(parents)})"
        )
    chain = [entry]
    while parents.get(chain[-1], QC_ROOT) != QC_ROOT:
        chain.append(parents[chain[-1]])
    return chain[::-1]


def place_registered(
    landmark_values: np.ndarray, peak: str, offset: float, bounds: tuple[float, float]
) -> Placement | None:
    """A registered threshold: this sample's landmark plus the study's offset; None (place it
    from this sample alone) when the landmark cannot be found or lands outside the bounds."""
    landmark = landmark_peak(landmark_values, peak)
    if landmark is None or not bounds[0] <= landmark + offset <= bounds[1]:
        return None
    value = landmark + offset
    note = f"registered: landmark {landmark:.3f} + study offset {offset:+.3f} = {value:.3f}"
    return Placement(value, True, note, "registered")


# A boundary below the negatives' peak + this many spreads lets more than a sixth of them
# through: it lies inside the negative population, not between it and the positives.
INSIDE_NEGATIVES_SDS = 1.0


@dataclass(frozen=True)
class NegativeTailPlacement:
    """A threshold ``sds`` spreads above the negatives' peak; a boundary below ``inside``
    lies within the negatives."""

    value: float
    inside: float
    note: str


def place_beyond_negatives(
    values: np.ndarray, sds: float, bounds: tuple[float, float]
) -> NegativeTailPlacement | None:
    """``sds`` spreads above the lowest density peak of ``values`` (the negatives), the spread
    measured on the peak's low side, where no positives reach; None when there is no peak or
    the value falls outside ``bounds``."""
    peak = landmark_peak(values, "low")
    if peak is None:
        return None
    spread = half_spread(values[values < peak], peak)
    value = peak + sds * spread
    if not (np.isfinite(value) and bounds[0] <= value <= bounds[1]):
        return None
    note = f"tail: negatives' peak {peak:.3f} + {sds:g} x {spread:.3f} = {value:.3f}"
    return NegativeTailPlacement(float(value), float(peak + INSIDE_NEGATIVES_SDS * spread), note)


def population_medians(
    populations: list[PopulationCount],
    masks: dict[str, np.ndarray],
    space: GatingSpace,
    resolved: ResolvedPanel,
) -> list[MarkerMedian]:
    """Median fluorescence of every marker of the tube in every reported population."""
    medians = []
    for population in populations:
        rows = np.flatnonzero(masks[population.population])  # once, not once per marker
        for marker, channel in resolved.marker_channels.items():
            values = space.compensated[marker].take(rows)
            median = float(np.median(values)) if values.size else float("nan")
            logicle = (
                float(space.transforms[marker].exact(np.array([median]))[0])
                if values.size
                else float("nan")
            )
            medians.append(
                MarkerMedian(population.population, marker, channel, median, logicle, values.size)
            )
    return medians
