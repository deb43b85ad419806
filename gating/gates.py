"""Gate kinds: one class each, holding its parameters, its evaluation and its GatingML form.

A gate is fixed for one sample (its limits, vertices or ellipse are numbers): placing it from
the data is the strategy's job (``gating.strategy``), recording it is ``gating.records``'.
Every kind knows three things:

- ``apply(parent, masks, space)``: the parent's events inside the gate, decided exactly as
  flowkit decides (float64 values; see ``gating.space``);
- ``to_flowkit(name, dimension, parent_path)``: the flowkit gate(s) that reproduce it, for
  GatingML 2.0 export;
- ``parameters()`` / ``from_parameters``: its JSON form in the store.

Adding a kind is adding a class here (and, if it is drawn differently, a drawing function in
``reports.qc_report``). Kinds register themselves by their ``kind`` name.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from gating.membership import raw_within
from gating.transforms import FAST_ERROR, Logicle

if TYPE_CHECKING:
    from gating.space import GatingSpace

Limits = dict[str, tuple[float | None, float | None]]
# A gate drawn by hand in review lies on the plot's scale (logicle 0-1, scatter as a fraction of
# range), with this much room beyond it; a coordinate further out is a slip or a forgery.
DRAWN_REACH = 1.5
DRAWN_LIMITS = "[-1, 2]"
MAX_DRAWN_VERTICES = 200
MIN_DRAWN_AREA = 1e-6  # of the unit square: less is a line, not a region
MIN_DRAWN_AXIS = 1e-3  # an ellipse's semi-axis, on the plot's scale
# dimension name, low, high -> flowkit Dimension (transform and compensation of that dimension)
DimensionMaker = Callable[..., Any]

GATE_KINDS: dict[str, type[Gate]] = {}


class Gate(ABC):
    """A gate with fixed parameters. ``kind`` names it in the store and in GatingML export."""

    kind: ClassVar[str]
    # False for placement records (a threshold) that are stored beside gates but select nothing.
    selects_events: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            GATE_KINDS[cls.kind] = cls

    @property
    @abstractmethod
    def dimensions(self) -> tuple[str, ...]:
        """The dimensions (markers, scatter roles or raw channels) the gate is drawn on."""

    @abstractmethod
    def parameters(self) -> dict:
        """JSON-ready parameters, as stored."""

    @classmethod
    @abstractmethod
    def from_parameters(cls, dimensions: tuple[str, ...], parameters: Mapping) -> Gate:
        """The gate from its stored form."""

    @abstractmethod
    def apply(
        self, parent: np.ndarray, masks: Mapping[str, np.ndarray], space: GatingSpace
    ) -> np.ndarray:
        """Events of ``parent`` (a boolean mask) that fall inside the gate."""

    @abstractmethod
    def to_flowkit(self, name: str, dimension: DimensionMaker, parent_path: tuple) -> list:
        """flowkit gates that reproduce this one; helpers first, the gate named ``name`` last."""

    def drawn_problem(self) -> str:
        """Why this gate, drawn by hand in review, cannot be used ('' when it can). Only kinds
        a person can draw on a scatter plot (ellipse, polygon) say ''."""
        return f"a {self.kind} gate cannot be drawn in review"


def gate_from_record(kind: str, dimensions: tuple[str, ...], parameters: Mapping) -> Gate:
    """Rebuild a stored gate; an unknown kind is an error naming it."""
    if kind not in GATE_KINDS:
        raise ValueError(f"unknown gate kind {kind!r} (known: {', '.join(sorted(GATE_KINDS))})")
    return GATE_KINDS[kind].from_parameters(tuple(dimensions), parameters)


def _limits(raw: Mapping) -> Limits:
    return {str(d): (lo, hi) for d, (lo, hi) in raw.items()}


def _raw_dimension(channel: str, lo: float | None = None, hi: float | None = None):
    import flowkit as fk

    return fk.Dimension(channel, compensation_ref="uncompensated", range_min=lo, range_max=hi)


@dataclass(frozen=True)
class RawRangeGate(Gate):
    """Limits on raw (uncompensated, untransformed) channels: ``low <= value < high``."""

    kind: ClassVar[str] = "raw_range"
    limits: Limits
    channels: tuple[str, ...] = ()

    @property
    def dimensions(self) -> tuple[str, ...]:
        return self.channels

    def parameters(self) -> dict:
        return {"limits": {c: list(v) for c, v in self.limits.items()}}

    @classmethod
    def from_parameters(cls, dimensions, parameters) -> RawRangeGate:
        return cls(_limits(parameters["limits"]), tuple(dimensions))

    def apply(self, parent, masks, space):
        return parent & raw_within(space.data, self.limits)

    def to_flowkit(self, name, dimension, parent_path):
        import flowkit as fk

        dims = [_raw_dimension(ch, lo, hi) for ch, (lo, hi) in self.limits.items()]
        if not dims:  # nothing to limit: a range no event can leave
            dims = [_raw_dimension(self.channels[0] if self.channels else "Time")]
        return [fk.gates.RectangleGate(name, dims)]


@dataclass(frozen=True)
class TimeRangesGate(Gate):
    """Kept acquisition-time ranges ``[low, high)`` (the last may be open: ``None``)."""

    kind: ClassVar[str] = "time_ranges"
    channel: str
    keep: tuple[tuple[float, float | None], ...]

    @property
    def dimensions(self) -> tuple[str, ...]:
        return (self.channel,)

    def parameters(self) -> dict:
        return {"channel": self.channel, "keep": [list(r) for r in self.keep]}

    @classmethod
    def from_parameters(cls, dimensions, parameters) -> TimeRangesGate:
        return cls(str(parameters["channel"]), tuple((lo, hi) for lo, hi in parameters["keep"]))

    def apply(self, parent, masks, space):
        t = space.data.channel(self.channel)
        inside = np.zeros_like(parent)
        for lo, hi in self.keep:
            inside |= (t >= lo) & (t < hi if hi is not None else True)
        return parent & inside

    def to_flowkit(self, name, dimension, parent_path):
        import flowkit as fk

        if len(self.keep) == 1:
            lo, hi = self.keep[0]
            return [fk.gates.RectangleGate(name, [_raw_dimension(self.channel, lo, hi)])]
        parts = [
            fk.gates.RectangleGate(f"{name}_part{k}", [_raw_dimension(self.channel, lo, hi)])
            for k, (lo, hi) in enumerate(self.keep, start=1)
        ]
        refs = [{"ref": part.gate_name, "path": parent_path, "complement": False} for part in parts]
        return [*parts, fk.gates.BooleanGate(name, "or", refs)]


@dataclass(frozen=True)
class RectangleGate(Gate):
    """Limits on transformed dimensions, GatingML-style: ``min <= x < max``; ``None`` is open."""

    kind: ClassVar[str] = "rectangle"
    limits: Limits

    @property
    def dimensions(self) -> tuple[str, ...]:
        return tuple(self.limits)

    def parameters(self) -> dict:
        return {"limits": {d: list(v) for d, v in self.limits.items()}}

    @classmethod
    def from_parameters(cls, dimensions, parameters) -> RectangleGate:
        return cls(_limits(parameters["limits"]))

    def apply(self, parent, masks, space):
        inside = parent.copy()
        for dim, (lo, hi) in self.limits.items():
            if lo is not None:
                inside &= space.at_least(dim, lo)
            if hi is not None:
                inside &= space.below(dim, hi)
        return inside

    def to_flowkit(self, name, dimension, parent_path):
        import flowkit as fk

        dims = [dimension(d, lo, hi) for d, (lo, hi) in self.limits.items()]
        return [fk.gates.RectangleGate(name, dims)]


def _parent_rows_in_blocks(parent: np.ndarray, block: int = 1 << 16) -> Iterator[np.ndarray]:
    """Indices of the parent's events, a block of events at a time (bounded temporaries)."""
    for start in range(0, parent.size, block):
        rows = np.flatnonzero(parent[start : start + block])
        if rows.size:
            yield rows + start


@dataclass(frozen=True)
class PolygonGate(Gate):
    """A polygon on two transformed dimensions (flowutils' point-in-polygon test)."""

    kind: ClassVar[str] = "polygon"
    dims: tuple[str, str]
    vertices: tuple[tuple[float, float], ...]
    # What the polygon encodes when a placer built it (the singlet gate's FSC-A/FSC-H ratio).
    max_ratio: float | None = None

    @property
    def dimensions(self) -> tuple[str, ...]:
        return self.dims

    def parameters(self) -> dict:
        out: dict = {"vertices": [list(v) for v in self.vertices]}
        if self.max_ratio is not None:
            out["max_ratio"] = self.max_ratio
        return out

    @classmethod
    def from_parameters(cls, dimensions, parameters) -> PolygonGate:
        vertices = tuple((float(x), float(y)) for x, y in parameters["vertices"])
        return cls(tuple(dimensions), vertices, parameters.get("max_ratio"))

    def apply(self, parent, masks, space):
        from flowutils.gating import points_in_polygon

        vertices = np.asarray(self.vertices, float)
        inside = np.zeros_like(parent)
        for rows in _parent_rows_in_blocks(parent):
            xy = np.column_stack([space.exact(d, rows) for d in self.dims])
            inside[rows] = points_in_polygon(vertices, xy).astype(bool)
        return inside

    def to_flowkit(self, name, dimension, parent_path):
        import flowkit as fk

        vertices = [list(v) for v in self.vertices]
        return [fk.gates.PolygonGate(name, [dimension(d) for d in self.dims], vertices)]

    def drawn_problem(self) -> str:
        """Why this polygon, drawn by hand, cannot be used ('' when it can): finite vertices
        on the plot's scale, not too many, enclosing an area."""
        points = np.asarray(self.vertices, float)
        if points.ndim != 2 or points.shape[1] != 2 or not 3 <= len(points) <= MAX_DRAWN_VERTICES:
            return f"a polygon needs 3 to {MAX_DRAWN_VERTICES} vertices of 2 coordinates"
        if not np.isfinite(points).all() or np.abs(points - 0.5).max() > DRAWN_REACH:
            return f"every vertex must be a finite number within {DRAWN_LIMITS} (the plot's scale)"
        x, y = points[:, 0], points[:, 1]
        area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
        if area < MIN_DRAWN_AREA:
            return f"the polygon encloses no area ({area:.2g}): its vertices are (nearly) in line"
        return ""


def singlet_polygon(max_ratio: float, area: str = "FSC-A", height: str = "FSC-H") -> PolygonGate:
    """Region height >= area / max_ratio (range-scaled), as a polygon gate."""
    vertices = ((-1.0, -1.0 / max_ratio), (2.0, 2.0 / max_ratio), (2.0, 2.0), (-1.0, 2.0))
    return PolygonGate((area, height), vertices, max_ratio)


@dataclass(frozen=True)
class EllipseGate(Gate):
    """An ellipse: squared Mahalanobis distance from ``mean`` at most ``distance_square``."""

    kind: ClassVar[str] = "ellipse"
    dims: tuple[str, ...]
    mean: tuple[float, ...]
    covariance: tuple[tuple[float, ...], ...]
    distance_square: float

    @property
    def dimensions(self) -> tuple[str, ...]:
        return self.dims

    def parameters(self) -> dict:
        return {
            "mean": list(self.mean),
            "covariance": [list(r) for r in self.covariance],
            "distance_square": self.distance_square,
        }

    @classmethod
    def from_parameters(cls, dimensions, parameters) -> EllipseGate:
        return cls(
            tuple(dimensions),
            tuple(float(m) for m in parameters["mean"]),
            tuple(tuple(float(v) for v in r) for r in parameters["covariance"]),
            float(parameters["distance_square"]),
        )

    def apply(self, parent, masks, space):
        """Membership as flowutils decides it (flowkit's test), at a fraction of its cost.

        The squared Mahalanobis distance is computed on the space's values (exact for
        scatter, within ``FAST_ERROR`` for markers). Only events so near the boundary that the
        difference could change the answer are tested with flowutils' own function on exact
        values.
        """
        from flowutils.gating import points_in_ellipsoid

        mean = np.asarray(self.mean, float)
        covariance = np.asarray(self.covariance, float)
        distance_square = self.distance_square
        precision = np.linalg.inv(covariance)
        # |q error| <= 2 sqrt(q * lmax) |value error| + lmax |value error|^2, plus rounding.
        value_error = np.sqrt(len(mean)) * max(
            FAST_ERROR if isinstance(space.transforms[d], Logicle) else 0.0 for d in self.dims
        )
        eigen = np.linalg.eigvalsh((precision + precision.T) / 2)
        margin = (
            2
            * (
                2 * np.sqrt(distance_square * eigen.max()) * value_error
                + eigen.max() * value_error**2
            )
            + 1e-9 * distance_square * eigen.max() / eigen.min()
        )
        inside = np.zeros_like(parent)
        for rows in _parent_rows_in_blocks(parent):
            offsets = [
                space[d][rows].astype(np.float64) - m for d, m in zip(self.dims, mean, strict=True)
            ]
            q = np.zeros(rows.size)
            for i, di in enumerate(offsets):
                for j, dj in enumerate(offsets[i:], start=i):
                    q += (
                        (precision[i, j] if i == j else precision[i, j] + precision[j, i]) * di * dj
                    )
            inside[rows] = q <= distance_square
            near = rows[np.abs(q - distance_square) <= margin]
            if near.size:
                xy = np.column_stack([space.exact(d, near) for d in self.dims])
                hit = points_in_ellipsoid(covariance, mean, distance_square, xy)
                inside[near] = hit.astype(bool)
        return inside

    @classmethod
    def from_axes(
        cls,
        dims: tuple[str, str],
        centre: tuple[float, float],
        axes: tuple[float, float],
        angle: float,
        distance_square: float = 1.0,
    ) -> EllipseGate:
        """The ellipse with ``centre``, semi-axes ``axes`` (along its own x, then y) and its x
        axis ``angle`` degrees anticlockwise from the plot's x: what a person drags in review.
        Kept in this class's form, so the boundary is where ``distance_square`` puts it."""
        theta = np.radians(float(angle)) if math.isfinite(angle) else np.nan
        rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        scales = np.diag(np.square(np.asarray(axes, float)) / float(distance_square))
        covariance = rotation @ scales @ rotation.T
        covariance = (covariance + covariance.T) / 2
        return cls(
            tuple(dims),
            tuple(float(c) for c in centre),
            tuple(tuple(float(v) for v in row) for row in covariance),
            float(distance_square),
        )

    def axes(self) -> tuple[tuple[float, float], tuple[float, float], float]:
        """Centre, semi-axes (major first) and the major axis' angle in degrees (-90, 90]:
        the handles review draws (the inverse of ``from_axes``)."""
        values, vectors = np.linalg.eigh(np.asarray(self.covariance, float))
        minor, major = np.sqrt(np.clip(values, 0.0, None) * self.distance_square)
        x, y = vectors[:, 1]
        angle = float(np.degrees(np.arctan2(y, x)))
        if angle <= -90.0:
            angle += 180.0
        elif angle > 90.0:
            angle -= 180.0
        return (float(self.mean[0]), float(self.mean[1])), (float(major), float(minor)), angle

    def drawn_problem(self) -> str:
        """Why this ellipse, drawn by hand, cannot be used ('' when it can): two dimensions,
        a finite centre on the plot's scale, semi-axes neither degenerate nor beyond it."""
        mean = np.asarray(self.mean, float)
        covariance = np.asarray(self.covariance, float)
        if mean.shape != (2,) or covariance.shape != (2, 2):
            return "an ellipse drawn in review has 2 dimensions"
        if not (np.isfinite(mean).all() and np.isfinite(covariance).all()):
            return "the ellipse's centre and axes must be finite numbers"
        if not (math.isfinite(self.distance_square) and self.distance_square > 0):
            return "the ellipse's distance must be a positive number"
        if np.abs(mean - 0.5).max() > DRAWN_REACH:
            return f"the ellipse's centre must lie within {DRAWN_LIMITS} (the plot's scale)"
        if not np.allclose(covariance, covariance.T, rtol=1e-9, atol=1e-15):
            return "the ellipse's covariance must be symmetric"
        values = np.linalg.eigvalsh(covariance) * self.distance_square
        if values.min() <= 0 or np.sqrt(values.min()) < MIN_DRAWN_AXIS:
            return f"the ellipse is flat: each semi-axis must be at least {MIN_DRAWN_AXIS}"
        if np.sqrt(values.max()) > 2 * DRAWN_REACH:
            return f"the ellipse is larger than the plot: semi-axes at most {2 * DRAWN_REACH}"
        return ""

    def to_flowkit(self, name, dimension, parent_path):
        import flowkit as fk

        return [
            fk.gates.EllipsoidGate(
                name,
                [dimension(d) for d in self.dims],
                list(self.mean),
                [list(r) for r in self.covariance],
                self.distance_square,
            )
        ]


@dataclass(frozen=True)
class BooleanGate(Gate):
    """``and``/``or`` of sibling gates; a reference ``not NAME`` takes the complement."""

    kind: ClassVar[str] = "boolean"
    op: str
    refs: tuple[str, ...]

    @property
    def dimensions(self) -> tuple[str, ...]:
        return ()

    def parameters(self) -> dict:
        return {"op": self.op, "refs": list(self.refs)}

    @classmethod
    def from_parameters(cls, dimensions, parameters) -> BooleanGate:
        return cls(str(parameters["op"]), tuple(parameters["refs"]))

    def apply(self, parent, masks, space):
        parts = [~masks[r[4:]] if r.startswith("not ") else masks[r] for r in self.refs]
        reduce = np.logical_and.reduce if self.op == "and" else np.logical_or.reduce
        return parent & reduce(parts)

    def to_flowkit(self, name, dimension, parent_path):
        import flowkit as fk

        refs = [
            {
                "ref": r[4:] if r.startswith("not ") else r,
                "path": parent_path,
                "complement": r.startswith("not "),
            }
            for r in self.refs
        ]
        return [fk.gates.BooleanGate(name, self.op, refs)]


@dataclass(frozen=True)
class ThresholdMark(Gate):
    """Where a threshold was placed (used by rectangles); a record, it selects no events."""

    kind: ClassVar[str] = "threshold"
    selects_events: ClassVar[bool] = False
    dimension: str
    value: float
    bounds: tuple[float, float]
    # valley | mixture_2d | mixture_1d | registered | tail | default | manual
    method: str = "valley"
    # Ashman's D of a mixture's boundary, the dip depth of a valley's; for a default, the
    # best separation the floor refused (``gating.adaptive.SEPARATION_FLOOR``); else None.
    separation: float | None = None

    @property
    def dimensions(self) -> tuple[str, ...]:
        return (self.dimension,)

    def parameters(self) -> dict:
        out = {"value": self.value, "bounds": list(self.bounds), "method": self.method}
        if self.separation is not None:
            out["separation"] = round(float(self.separation), 4)
        return out

    @classmethod
    def from_parameters(cls, dimensions, parameters) -> ThresholdMark:
        lo, hi = parameters["bounds"]
        # Records before pipeline 5 did not name the method, before 6 the separation.
        method = parameters.get("method", "unrecorded")
        separation = parameters.get("separation")
        return cls(dimensions[0], float(parameters["value"]), (lo, hi), method, separation)

    def apply(self, parent, masks, space):
        raise TypeError("a threshold mark records a placement; it selects no events")

    def to_flowkit(self, name, dimension, parent_path):
        return []
