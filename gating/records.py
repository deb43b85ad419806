"""What gating one sample produced: populations, QC steps and every gate as applied.

These records are what the store keeps and what replay, export, QC drawing and review read; the
pipeline that makes them is ``gating.pipeline``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from gating.gates import Gate, gate_from_record

if TYPE_CHECKING:
    from gating.space import GatingSpace

ALL_EVENTS = "all_events"


NEEDS_REVIEW = "needs_review"  # flag set on a sample with any of the flags below
# A gate or threshold the data could not place (its default was used), one placed at a boundary
# below the separation floor, or too many events lost in QC: the numbers are not released unseen.
REVIEW_FLAGS = ("default_threshold:", "default_gate:", "below_separation_floor:", "qc_removed")
# Placement methods (the first word of an applied gate's note) that keep a gate at a boundary
# the data show too weakly to measure: flagged below the floor, not as a default.
WEAK_BOUNDARY_METHODS = ("tip_below_floor:",)


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
class MarkerMedian:
    """Median fluorescence of one marker in one population (FlowJo's 'Median' statistic):
    compensated, in channel units, and its logicle value (the logicle is monotone, so this is
    also the median of the logicle values). NaN when the population is empty."""

    population: str
    marker: str
    channel: str
    median: float
    median_logicle: float
    n: int


@dataclass(frozen=True)
class QcStep:
    """One QC step on one sample: events in, events removed, and what was decided."""

    name: str
    events_in: int
    removed: int
    detail: str


@dataclass(frozen=True)
class AppliedGate:
    """A gate as applied to one sample: its fixed form, its parent, and its provenance.

    ``from_data`` is False when the placer fell back to the strategy's default. ``within``
    names the population whose events the gate was placed on (and is drawn over) where that
    is not its parent: the transitional tip is a child of the CD19+ B cells but the tip of the
    CD27- B cells' cloud. It comes from the strategy, which the store's rows do not repeat.
    """

    name: str
    parent: str
    gate: Gate
    from_data: bool
    note: str
    within: str | None = None

    @property
    def kind(self) -> str:
        return self.gate.kind

    @property
    def dimensions(self) -> tuple[str, ...]:
        return self.gate.dimensions

    @property
    def parameters(self) -> dict:
        return self.gate.parameters()

    def to_record(self) -> dict:
        """Plain data for the store."""
        return {
            "name": self.name,
            "parent": self.parent,
            "kind": self.kind,
            "dimensions": list(self.dimensions),
            "parameters": self.parameters,
            "from_data": self.from_data,
            "note": self.note,
        }

    @classmethod
    def from_record(
        cls,
        name: str,
        parent: str,
        kind: str,
        dimensions: tuple[str, ...],
        parameters: Mapping,
        from_data: bool,
        note: str,
    ) -> AppliedGate:
        return cls(name, parent, gate_from_record(kind, dimensions, parameters), from_data, note)


@dataclass
class SampleGating:
    """Everything one sample's gating produced."""

    n_events: int
    populations: list[PopulationCount]
    qc_steps: list[QcStep]
    gates: list[AppliedGate]
    flags: list[str]
    masks: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    space: GatingSpace | None = field(repr=False, default=None)
    # Reported populations the tube cannot give, with the missing markers each needs.
    not_measured: dict[str, tuple[str, ...]] = field(default_factory=dict)
    medians: list[MarkerMedian] = field(default_factory=list)

    @property
    def needs_review(self) -> bool:
        """A person must look at this sample before its numbers are released."""
        return NEEDS_REVIEW in self.flags


def evaluate_gates(
    gates: list[AppliedGate], space: GatingSpace, masks: dict[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """Masks of the gates in order (each after its parent), added to ``masks``."""
    masks = masks if masks is not None else {ALL_EVENTS: np.ones(space.data.header.n_events, bool)}
    for applied in gates:
        if applied.gate.selects_events:
            masks[applied.name] = applied.gate.apply(masks[applied.parent], masks, space)
    return masks
