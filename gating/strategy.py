"""Gating strategies as reviewable YAML files: validation, defaults, identity, and placement.

A strategy has QC settings, thresholds placed per sample from the data, and a tree of gate
specifications. Each specification kind knows how to place its gate on one sample
(``place``), giving an ``AppliedGate`` with fixed parameters (``gating.gates``).

The files are validated by the pydantic models below: unknown keys, wrong types and
out-of-range values are errors naming the file, the key and what is allowed. Every default is
stated once, on its model field.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gating.gates import (
    BooleanGate,
    EllipseGate,
    Gate,
    PolygonGate,
    RawRangeGate,
    RectangleGate,
    gate_from_record,
)
from gating.records import AppliedGate
from panels.config_files import find_config_file, load_yaml_model
from panels.errors import ImmunomonError

if TYPE_CHECKING:
    from gating.space import GatingSpace

QC_ROOT = "qc_passed"  # the events left after QC; parent of the first gate


class StrategyError(ImmunomonError):
    """A strategy file that cannot be used; the message names the file and the entry."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BoundedPlacement(_Spec):
    """A position placed from the data inside ``bounds``; ``default`` when the data show none."""

    bounds: tuple[float, float]
    default: float

    @model_validator(mode="after")
    def _default_inside(self) -> BoundedPlacement:
        lo, hi = self.bounds
        if not lo < hi:
            raise ValueError(f"bounds must be increasing, got [{lo}, {hi}]")
        if not lo <= self.default <= hi:
            raise ValueError(f"default {self.default} lies outside bounds [{lo}, {hi}]")
        return self


class QcSettings(_Spec):
    """QC steps before gating, and when a sample is flagged."""

    max_removed_share: float = Field(0.20, ge=0.0, le=1.0)
    min_population_events: int = Field(50, ge=0)
    time_bins: int = Field(100, ge=2)
    time_max_z: float = Field(6.0, gt=0.0)
    # upper limit of the pulse's area/height (or width), as a multiple of the sample's median
    singlet_pulse: BoundedPlacement = BoundedPlacement(bounds=(1.06, 1.57), default=1.25)
    # lower limit of FSC-A (fraction of range)
    debris_fsc: BoundedPlacement = BoundedPlacement(bounds=(0.03, 0.16), default=0.08)


class MarkerPair(_Spec):
    """The second marker of the pair that defines a population, and where the population lies
    on each (the threshold's own marker first)."""

    dimension: str
    target: tuple[Literal["high", "low"], Literal["high", "low"]] = ("high", "high")

    @property
    def direction(self) -> tuple[int, int]:
        return tuple(1 if side == "high" else -1 for side in self.target)  # type: ignore[return-value]


class Registration(_Spec):
    """Align samples on a landmark before placing the threshold once for the study
    (``gating.registration``): the ``peak`` ('high' or 'low') of the threshold's marker among
    the events of gate ``landmark_within`` (a well-populated population, e.g. all CD4 T)."""

    landmark_within: str
    peak: Literal["high", "low"] = "high"


class NegativeTail(_Spec):
    """Where the marker's positives are a shoulder above the negatives rather than a
    population of their own: the threshold ``sds`` spreads above the negative (lowest) peak of
    gate ``within``'s events, the spread measured below that peak, away from the positives
    (openCyto's gate_tail on a reference population). Used where the per-sample placement
    finds no boundary (the default) or places it inside the negatives (below their peak + 1
    spread, ``gating.pipeline.INSIDE_NEGATIVES_SDS``); a boundary above that is kept."""

    within: str
    sds: float = 3.0


class ThresholdSpec(BoundedPlacement):
    """A 1-D threshold on ``dimension`` among the events of gate ``within``, placed per sample
    by ``gating.adaptive.place_threshold`` (a mixture on ``pair`` where given, a valley, a 1-D
    mixture; ``default`` otherwise). ``placement: dim_tail_mixture`` places it first at the
    balanced boundary of a mixture heavy-tailed towards dim (``gating.dim_tail``), between
    populations whose dim tails reach far below them (IgD of the memory B)."""

    dimension: str
    within: str
    placement: Literal["auto", "dim_tail_mixture"] = "auto"
    pair: MarkerPair | None = None
    registration: Registration | None = None
    tail: NegativeTail | None = None

    def markers(self) -> set[str]:
        """Every marker the placement reads."""
        return {self.dimension} | ({self.pair.dimension} if self.pair else set())


Limit = str | float | None


class _GateSpec(_Spec):
    name: str
    parent: str
    report: bool = True
    # What the report calls the population, defining markers included (issue 24):
    # "Transitional B (CD24hi CD38hi CD27-)"; the name when not given.
    title: str | None = None

    def references(self) -> list[str]:
        """Gates this one needs to be defined before it (besides its parent)."""
        return []

    def thresholds_used(self, absent: Container[str] = ()) -> list[str]:
        """Names of the strategy thresholds this gate's placement uses (on a tube lacking the
        ``absent`` markers)."""
        return []

    def dimensions_used(self) -> set[str]:
        """Markers and scatter roles the gate itself is placed on (thresholds' excluded)."""
        return set()

    def describe(self) -> str:
        """The gate's definition in words, as a reviewer reads it."""
        raise NotImplementedError


class RectangleSpec(_GateSpec):
    """Limits per dimension: a threshold's name, a number, or null (open). Limits on the
    ``optional`` markers apply where the tube carries them and are left out where it does
    not (CD4 T cells are CD8- where CD8 is stained; a tube without CD8 cannot exclude the
    CD4+CD8+ cells, and says so in the gate's note)."""

    kind: Literal["rectangle"]
    limits: dict[str, tuple[Limit, Limit]] = Field(min_length=1)
    optional: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _optional_limits(self) -> RectangleSpec:
        unknown = sorted(set(self.optional) - set(self.limits))
        if unknown:
            raise ValueError(f"optional: {', '.join(unknown)} has no limit in this gate")
        return self

    def thresholds_used(self, absent: Container[str] = ()) -> list[str]:
        return [r for pair in self._limits(absent).values() for r in pair if isinstance(r, str)]

    def dimensions_used(self) -> set[str]:
        return set(self.limits) - set(self.optional)

    def _limits(self, absent: Container[str]) -> dict[str, tuple[Limit, Limit]]:
        """The limits a tube lacking the ``absent`` markers gets."""
        return {
            dim: pair
            for dim, pair in self.limits.items()
            if dim not in self.optional or dim not in absent
        }

    def describe(self) -> str:
        parts = []
        for dim, (low, high) in self.limits.items():
            where = " (where stained)" if dim in self.optional else ""
            if low is not None and high is not None:
                parts.append(f"{low} <= {dim} < {high}{where}")
            elif low is not None:
                parts.append(f"{dim} >= {low}{where}")
            elif high is not None:
                parts.append(f"{dim} < {high}{where}")
        return " and ".join(parts)

    def place(self, context: PlacementContext) -> AppliedGate:
        absent = [dim for dim in self.optional if dim not in context.space]
        limits = {
            dim: (context.threshold(lo), context.threshold(hi))
            for dim, (lo, hi) in self._limits(absent).items()
        }
        note = "limits from thresholds"
        if absent:
            note += f"; not in this tube, so not applied: {', '.join(absent)}"
        gate: RectangleGate | RawRangeGate = RectangleGate(limits)
        if not limits:  # every limit optional and absent: every event of the parent passes
            gate = RawRangeGate({}, tuple(context.space.channels.values())[:1])
        return AppliedGate(self.name, self.parent, gate, True, note)


class BooleanSpec(_GateSpec):
    """``and``/``or`` of gates defined above; ``not NAME`` takes a complement."""

    kind: Literal["boolean"]
    op: Literal["and", "or"] = "and"
    refs: list[str] = Field(min_length=1)

    def references(self) -> list[str]:
        return [r[4:].strip() if r.startswith("not ") else r for r in self.refs]

    def describe(self) -> str:
        return f" {self.op} ".join(self.refs)

    def place(self, context: PlacementContext) -> AppliedGate:
        refs = tuple(("not " + r[4:].strip()) if r.startswith("not ") else r for r in self.refs)
        return AppliedGate(self.name, self.parent, BooleanGate(self.op, refs), True, "")


class ScatterClusterSpec(_GateSpec):
    """An ellipse around the lymphocyte cluster, found among the sample's own scatter clusters
    by relative rules (``gating.adaptive.place_lymphocyte_ellipse``)."""

    kind: Literal["scatter_cluster"]
    dimensions: tuple[str, str]
    components: int = Field(4, ge=2, le=12)
    distance_square: float = Field(13.82, gt=0.0)  # chi-square(2) 99.9%
    min_weight: float = Field(0.04, gt=0.0, lt=1.0)
    debris_fsc_share: float = Field(0.45, gt=0.0, lt=1.0)
    default_mean: tuple[float, float]
    default_covariance: tuple[tuple[float, float], tuple[float, float]]

    def dimensions_used(self) -> set[str]:
        return set(self.dimensions)

    def describe(self) -> str:
        x_dim, y_dim = self.dimensions
        return (
            f"ellipse around the lymphocyte cluster on {x_dim} x {y_dim}, chosen among "
            f"{self.components} mixture components (chi-square distance {self.distance_square:g})"
        )

    def place(self, context: PlacementContext) -> AppliedGate:
        from gating.adaptive import place_lymphocyte_ellipse

        x_dim, y_dim = self.dimensions
        place = place_lymphocyte_ellipse(
            context.space[x_dim],
            context.space[y_dim],
            self.default_mean,
            self.default_covariance,
            within=context.masks[self.parent],
            components=self.components,
            distance_square=self.distance_square,
            min_weight=self.min_weight,
            debris_fsc_share=self.debris_fsc_share,
        )
        gate = EllipseGate(
            self.dimensions,
            tuple(float(v) for v in place.mean),
            tuple(tuple(float(v) for v in row) for row in place.covariance),
            float(place.distance_square),
        )
        return AppliedGate(self.name, self.parent, gate, place.from_data, place.note)


class CloudArmSpec(_GateSpec):
    """The population leaving the parent's main cloud as an arm towards ``target`` on
    ``dimensions`` (Tregs: the CD25-high arm of the CD4 T cells towards lower CD127), as a
    polygon placed per sample (``gating.adaptive.place_cloud_arm``); limits in the cloud's
    own spreads."""

    kind: Literal["cloud_arm"]
    dimensions: tuple[str, str]
    # where the arm leaves the cloud on each dimension
    target: tuple[Literal["high", "low"], Literal["high", "low"]] = ("low", "high")
    min_rise: float = Field(1.0, ge=0.0)  # beyond the cloud's peak on dimensions[1], in SDs
    min_fall: float = Field(0.5, ge=0.0)  # beyond the cloud's peak on dimensions[0], in SDs
    min_distance: float = Field(2.0, ge=0.0)  # from the cloud's centre along the diagonal
    # the y edge at least this many SDs below the arm's own median y (None: min_rise alone)
    below_arm: float | None = Field(None, gt=0.0)
    # x peak, x SD, y peak, y SD (logicle) where the sample's cloud cannot be measured
    default_cloud: tuple[float, float, float, float]

    def dimensions_used(self) -> set[str]:
        return set(self.dimensions)

    def describe(self) -> str:
        x_dim, y_dim = self.dimensions
        x_side, y_side = self.target
        return (
            f"{y_dim}-{y_side} {x_dim}-{x_side} arm of the parent's main cloud: {y_dim} at "
            f"least {self.min_rise:g} SD beyond the cloud, {x_dim} at least "
            f"{self.min_fall:g} SD beyond it and {self.min_distance:g} SD from it along the "
            "diagonal (cloud measured on its far side, per sample)"
            + (
                f"; where no dip separates the arm, {y_dim} also at least "
                f"{self.below_arm:g} SD below the arm's median"
                if self.below_arm is not None
                else ""
            )
        )

    def place(self, context: PlacementContext) -> AppliedGate:
        from gating.adaptive import place_cloud_arm

        x_dim, y_dim = self.dimensions
        within = context.masks[self.parent]
        arm = place_cloud_arm(
            context.space[x_dim][within],
            context.space[y_dim][within],
            self.default_cloud,
            direction=tuple(1 if side == "high" else -1 for side in self.target),
            min_rise=self.min_rise,
            min_fall=self.min_fall,
            min_distance=self.min_distance,
            below_arm=self.below_arm,
        )
        gate = PolygonGate(self.dimensions, arm.vertices)
        return AppliedGate(self.name, self.parent, gate, arm.from_data, f"{arm.method}: {arm.note}")


class CloudTipSpec(_GateSpec):
    """The tip of the parent's cloud towards ``target`` on ``dimensions`` (transitional B: the
    CD24-high CD38-high tip of the CD27- B cells' diagonal CD38 x CD24 cloud), as a polygon
    placed per sample (``gating.cloud_tip.place_cloud_tip``): the band beyond a cut
    perpendicular to the cloud's axis, the cut at a valley or a t-mixture boundary along it."""

    kind: Literal["cloud_tip"]
    dimensions: tuple[str, str]
    # the events whose cloud it is (CD27- B), when not the parent: a boolean gate then joins
    # the two as siblings (GatingML and FlowJo combine sibling gates only)
    within: str | None = None
    target: tuple[Literal["high", "low"], Literal["high", "low"]] = ("high", "high")
    # half-width of the band across the axis, in robust SDs of the events' distances from it
    across: float = Field(5.0, gt=0.0)
    # where no tip component is found: the cut this many of the cloud's spreads beyond its peak
    default_cut: float = Field(1.5, gt=0.0)

    def dimensions_used(self) -> set[str]:
        return set(self.dimensions)

    def references(self) -> list[str]:
        return [self.within] if self.within else []

    def describe(self) -> str:
        x_dim, y_dim = self.dimensions
        x_side, y_side = self.target
        return (
            f"{x_dim}-{x_side} {y_dim}-{y_side} tip of the {self.within or 'parent'}'s cloud: "
            f"the band ({self.across:g} robust SDs each side of the cloud's axis) beyond a cut "
            "across the axis at a density valley or a t-mixture boundary along it (per sample)"
        )

    def place(self, context: PlacementContext) -> AppliedGate:
        from gating.cloud_tip import place_cloud_tip

        x_dim, y_dim = self.dimensions
        within = context.masks[self.within or self.parent]
        tip = place_cloud_tip(
            context.space[x_dim][within],
            context.space[y_dim][within],
            target=tuple(1 if side == "high" else -1 for side in self.target),
            across=self.across,
            default_cut=self.default_cut,
        )
        gate = PolygonGate(self.dimensions, tip.vertices)
        return AppliedGate(self.name, self.parent, gate, tip.from_data, f"{tip.method}: {tip.note}")


GateSpec = Annotated[
    RectangleSpec | BooleanSpec | ScatterClusterSpec | CloudArmSpec | CloudTipSpec,
    Field(discriminator="kind"),
]


class StrategyFile(_Spec):
    """The contents of a strategy YAML file."""

    name: str
    version: int = Field(1, ge=1)
    qc: QcSettings = QcSettings()
    thresholds: dict[str, ThresholdSpec] = {}
    gates: list[GateSpec] = Field(min_length=1)


@dataclass
class PlacementContext:
    """What a gate specification needs to place its gate on one sample."""

    space: GatingSpace
    masks: Mapping[str, np.ndarray]
    threshold: Callable[[Limit], float | None]


@dataclass(frozen=True)
class Strategy:
    """A panel's gating strategy: QC settings, data-placed thresholds and the gate tree."""

    name: str
    version: int
    qc: QcSettings
    thresholds: dict[str, ThresholdSpec]
    gates: tuple[
        RectangleSpec | BooleanSpec | ScatterClusterSpec | CloudArmSpec | CloudTipSpec, ...
    ]
    sha256: str
    source: str
    # Registered thresholds' study offsets from their landmarks (``gating.registration``),
    # from the study reference with this sha256; the strategy's sha256 then includes it.
    offsets: Mapping[str, float] = field(default_factory=dict)
    reference_sha256: str = ""
    # Set by hand for one sample in review (``cohort.review``): thresholds (name -> value) and
    # drawn gates (gate name -> its ellipse or polygon), used as given and recorded as manual;
    # the sha256 then includes them, so the result is a new one.
    overrides: Mapping[str, float | Gate] = field(default_factory=dict)
    base_sha256: str = ""  # the strategy's sha256 without the overrides

    def drawable(self) -> dict[str, tuple[str, str]]:
        """Gate name -> its two dimensions, for the gates a person may redraw in review: those
        placed per sample on a scatter plot (the lymphocyte ellipse, a placed polygon)."""
        return {
            g.name: tuple(g.dimensions)
            for g in self.gates
            if not isinstance(g, (RectangleSpec, BooleanSpec))
            and len(getattr(g, "dimensions", ())) == 2
        }

    def with_overrides(self, overrides: Mapping[str, float | Gate]) -> Strategy:
        """This strategy with one sample's hand-set thresholds and hand-drawn gates."""
        drawable = self.drawable()
        unknown = sorted(set(overrides) - set(self.thresholds) - set(drawable))
        if unknown:
            raise StrategyError(
                f"{', '.join(unknown)}: not thresholds or drawable gates of strategy {self.name}"
            )
        for name, value in overrides.items():
            if name in self.thresholds:
                if not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise StrategyError(f"{name}: a threshold's value must be a finite number")
                continue
            if not isinstance(value, Gate):
                raise StrategyError(f"{name}: a drawn gate must be an ellipse or a polygon")
            problem = value.drawn_problem()
            if not problem and tuple(value.dimensions) != drawable[name]:
                problem = (
                    f"drawn on {' x '.join(value.dimensions)}, but the gate is on "
                    f"{' x '.join(drawable[name])}"
                )
            if problem:
                raise StrategyError(f"gate {name} of strategy {self.name}: {problem}")
        if not overrides:
            return self
        base = self.base_sha256 or self.sha256
        text = json.dumps(
            {k: override_record(v) for k, v in sorted(overrides.items())}, sort_keys=True
        )
        digest = hashlib.sha256(f"{base}|manual|{text}".encode()).hexdigest()
        return replace(self, overrides=dict(overrides), sha256=digest, base_sha256=base)

    def registered_with(
        self, offsets: Mapping[str, float], sha256: str, reference_sha256: str
    ) -> Strategy:
        """This strategy with a study reference's offsets and the combined identity."""
        return replace(
            self, offsets=dict(offsets), sha256=sha256, reference_sha256=reference_sha256
        )

    def placed_within(self) -> dict[str, str]:
        """Gate name -> the population whose events it is placed on, for the gates placed on
        another population than their parent (a cloud tip's ``within``)."""
        return {g.name: g.within for g in self.gates if isinstance(g, CloudTipSpec) and g.within}

    def with_placement(self, gates: list[AppliedGate]) -> list[AppliedGate]:
        """Recorded gates with the population each was placed on (``AppliedGate.within``), as
        the strategy says: the store keeps the gate, not the strategy's placement."""
        within = self.placed_within()
        return [replace(g, within=within[g.name]) if g.name in within else g for g in gates]

    def titles(self) -> dict[str, str]:
        """Each gate's display title (its ``title:``, else its name)."""
        return {g.name: g.title or g.name for g in self.gates}

    @property
    def reported(self) -> list[_GateSpec]:
        return [g for g in self.gates if g.report]

    def defining_markers(self, name: str) -> set[str]:
        """The markers a population is defined on (scatter left out): its limits or its
        axes, and for a boolean gate those of the gates it keeps (not of those it takes a
        complement of: naive B are defined on CD27 and IgD, not on the transitional tip's
        CD24 and CD38). Drift QC follows these markers' medians."""
        by_name = {g.name: g for g in self.gates}
        gate = by_name[name]
        found = set(getattr(gate, "limits", None) or {})
        found |= set(getattr(gate, "dimensions", None) or ())
        for ref in getattr(gate, "refs", None) or ():
            if not ref.startswith("not ") and ref in by_name:
                found |= self.defining_markers(ref)
        return {m for m in found if not m.startswith(("FSC", "SSC"))}

    def definitions(self) -> list[str]:
        """Every gate and threshold in words, from the strategy as it ran: what the report
        prints as the populations' definitions."""
        lines = [f"Strategy {self.name} v{self.version} ({self.source}, sha256 {self.sha256[:12]})"]
        for gate in self.gates:
            shown = "" if gate.report else "  [not reported]"
            lines.append(f"  {gate.name} = {gate.parent} where {gate.describe()}{shown}")
        for name, spec in self.thresholds.items():
            how = f"placed among {spec.within} events within [{spec.bounds[0]:g}, "
            how += f"{spec.bounds[1]:g}], default {spec.default:g}"
            if spec.pair is not None:
                how += f", by a 2-D mixture with {spec.pair.dimension}"
            if spec.placement == "dim_tail_mixture":
                how += ", by a dim-tailed mixture's balanced boundary"
            if name in self.offsets:
                how += f"; registered: study offset {self.offsets[name]:+.3f} from the landmark"
            lines.append(f"  {name}: {spec.dimension} threshold (logicle), {how}")
        return lines

    def not_measurable(self, missing: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
        """Gates that cannot be placed on a tube lacking ``missing`` markers, each with the
        missing markers it needs (directly, through a threshold, or through its ancestors)."""
        absent = set(missing)
        lost: dict[str, set[str]] = {}
        for spec in self.gates:
            needs = set(spec.dimensions_used())
            depends = [spec.parent, *spec.references()]
            for name in spec.thresholds_used(absent):  # optional limits on absent markers: none
                needs |= self.thresholds[name].markers()
                depends.append(self.thresholds[name].within)
            needs &= absent
            for name in depends:
                needs |= lost.get(name, set())
            if needs:
                lost[spec.name] = needs
        return {name: tuple(sorted(needs)) for name, needs in lost.items()}


def override_record(value: float | Gate) -> float | dict:
    """An override as JSON (the audit trail's and the identity's form): a threshold's value,
    or a drawn gate's kind, dimensions and parameters."""
    if isinstance(value, Gate):
        return {
            "kind": value.kind,
            "dimensions": list(value.dimensions),
            "parameters": value.parameters(),
        }
    return float(value)


def override_from_record(record: float | Mapping) -> float | Gate:
    """``override_record``'s inverse; a record that is neither is a StrategyError."""
    if isinstance(record, Mapping):
        try:
            return gate_from_record(
                str(record["kind"]), tuple(record["dimensions"]), record["parameters"]
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StrategyError(f"a drawn gate's record is not usable ({exc})") from None
    try:
        return float(record)
    except (TypeError, ValueError):
        raise StrategyError(f"an override's value {record!r} is not a number") from None


def load_strategy(name_or_path: str, base_dir: Path | None = None) -> Strategy:
    """Load a built-in strategy ('bcell', 'treg') or a strategy YAML file by path."""
    path = find_config_file(
        name_or_path, "gating", "strategies", base_dir, "gating strategy", StrategyError
    )
    parsed, doc = load_yaml_model(path, StrategyFile, StrategyError)
    return strategy_from_model(parsed, str(path), doc)


def strategy_from_model(parsed: StrategyFile, source: str, doc: dict | None = None) -> Strategy:
    """A usable strategy from a validated file (``doc``: the raw YAML, for its identity)."""
    _check_references(parsed, source)
    doc = doc if doc is not None else parsed.model_dump(mode="json")
    # Identity: the parsed content, so whitespace and comment edits do not force reprocessing.
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()
    return Strategy(
        parsed.name,
        parsed.version,
        parsed.qc,
        dict(parsed.thresholds),
        tuple(parsed.gates),
        digest,
        source,
    )


def _check_references(parsed: StrategyFile, path: str) -> None:
    """Every parent, reference and threshold is defined before it is used."""
    known = {QC_ROOT}
    for k, gate in enumerate(parsed.gates):
        where = f"{path}: gates.{k} ({gate.name!r})"
        if gate.parent not in known:
            raise StrategyError(f"{where}: parent {gate.parent!r} is not defined above it")
        if gate.name in known:
            raise StrategyError(f"{where}: the name is defined twice")
        for ref in gate.references():
            if ref not in known:
                raise StrategyError(f"{where}: refers to {ref!r} before it is defined")
        if isinstance(gate, RectangleSpec):
            for dim, pair in gate.limits.items():
                for ref in pair:
                    if isinstance(ref, str) and ref not in parsed.thresholds:
                        raise StrategyError(
                            f"{where}: limits.{dim}: unknown threshold {ref!r} (thresholds: "
                            f"{', '.join(parsed.thresholds) or 'none'})"
                        )
        known.add(gate.name)
    for name, t in parsed.thresholds.items():
        if t.within not in known:
            raise StrategyError(f"{path}: thresholds.{name}.within: unknown gate {t.within!r}")
        if t.tail and t.tail.within not in known:
            raise StrategyError(
                f"{path}: thresholds.{name}.tail.within: unknown gate {t.tail.within!r}"
            )
        if t.registration and t.registration.landmark_within not in known:
            raise StrategyError(
                f"{path}: thresholds.{name}.registration.landmark_within: unknown gate "
                f"{t.registration.landmark_within!r}"
            )
