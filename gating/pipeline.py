"""One sample from events to populations: compensate, transform, QC, place gates, count.

Knows nothing of studies, stores or Prefect: it takes an ``FcsData`` and a ``ResolvedPanel``
and returns a ``SampleGating``, so it can be run and tested on its own.

Every gate the sample went through, QC steps included, is recorded as an ``AppliedGate`` with
fixed parameters and evaluated by its own class (``gating.gates``). Replaying the recorded
gates (``replay_gates``) therefore gives exactly the counts of the original run, and the same
records export to a flowkit GatingStrategy / GatingML 2.0 (``gating.export``).
"""

from __future__ import annotations

import numpy as np

from gating.adaptive import place_threshold_at_density_valley
from gating.gates import ThresholdMark
from gating.qc import run_qc
from gating.records import AppliedGate, PopulationCount, SampleGating, evaluate_gates
from gating.space import GatingSpace
from gating.strategy import Limit, PlacementContext, Strategy
from panels.fcs import FcsData
from panels.resolve import ResolvedPanel

PIPELINE_VERSION = "4"  # bump when a change alters counts for an unchanged strategy and file


def replay_gates(
    data: FcsData,
    resolved: ResolvedPanel,
    gates: list[AppliedGate],
    space: GatingSpace | None = None,
) -> dict[str, np.ndarray]:
    """Masks of recorded gates on the sample's events, without placing anything anew."""
    return evaluate_gates(gates, space or GatingSpace.of_sample(data, resolved))


def gate_sample(data: FcsData, resolved: ResolvedPanel, strategy: Strategy) -> SampleGating:
    """Run QC and the strategy's gate tree on one sample."""
    space = GatingSpace.of_sample(data, resolved)
    flags = [] if space.spillover is not None else ["no_spillover_keyword:uncompensated"]
    qc = run_qc(space, resolved, strategy.qc)
    flags += qc.flags
    gates, masks = qc.gates, qc.masks
    placed: dict[str, float] = {}

    def threshold(ref: Limit) -> float | None:
        """A limit's value: a number as written, a threshold placed once per sample."""
        if ref is None or isinstance(ref, (int, float)):
            return None if ref is None else float(ref)
        if ref not in placed:
            spec = strategy.thresholds[ref]
            values = space[spec.dimension][masks[spec.within]]
            place = place_threshold_at_density_valley(values, spec.bounds, spec.default)
            placed[ref] = place.value
            if not place.from_data:
                flags.append(f"default_threshold:{ref}")
            mark = ThresholdMark(spec.dimension, place.value, spec.bounds)
            gates.append(AppliedGate(ref, spec.within, mark, place.from_data, place.note))
        return placed[ref]

    context = PlacementContext(space, masks, threshold)
    not_measured = strategy.not_measurable(resolved.missing)
    for spec in strategy.gates:
        if spec.name in not_measured:
            continue
        applied = spec.place(context)
        if not applied.from_data:
            flags.append(f"default_gate:{applied.name}")
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
    lost = {s.name: not_measured[s.name] for s in strategy.reported if s.name in not_measured}
    return SampleGating(
        data.header.n_events, populations, qc.steps, gates, flags, masks, space, lost
    )
