"""Gating strategies as reviewable YAML files: loading, validation and identity (hash)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

QC_ROOT = "qc_passed"  # the events left after QC; parent of the first gate


class StrategyError(Exception):
    """A strategy file that cannot be used; the message names the file and the entry."""


@dataclass(frozen=True)
class QcSettings:
    max_removed_share: float = 0.20
    min_population_events: int = 50
    time_bins: int = 100
    time_max_z: float = 6.0
    singlet_ratio_bounds: tuple[float, float] = (1.15, 1.7)
    singlet_ratio_default: float = 1.35
    debris_fsc_bounds: tuple[float, float] = (0.03, 0.16)
    debris_fsc_default: float = 0.08


@dataclass(frozen=True)
class ThresholdSpec:
    name: str
    dimension: str
    within: str
    bounds: tuple[float, float]
    default: float


@dataclass(frozen=True)
class GateSpec:
    name: str
    parent: str
    kind: str  # rectangle | boolean | scatter_cluster
    report: bool = True
    limits: dict[str, tuple[str | float | None, str | float | None]] = field(default_factory=dict)
    op: str = "and"
    refs: tuple[tuple[str, bool], ...] = ()  # (gate name, negated)
    dimensions: tuple[str, ...] = ()
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Strategy:
    """A panel's gating strategy: QC settings, data-placed thresholds and the gate tree."""

    name: str
    version: int
    qc: QcSettings
    thresholds: dict[str, ThresholdSpec]
    gates: tuple[GateSpec, ...]
    sha256: str
    source: str

    @property
    def reported(self) -> list[GateSpec]:
        return [g for g in self.gates if g.report]

    def gate(self, name: str) -> GateSpec:
        return next(g for g in self.gates if g.name == name)


def load_strategy(name_or_path: str, base_dir: Path | None = None) -> Strategy:
    """Load a built-in strategy ('bcell', 'treg') or a strategy YAML file by path."""
    builtin = resources.files("gating") / "strategies" / f"{name_or_path}.yaml"
    if builtin.is_file():
        path = Path(str(builtin))
    else:
        path = Path(name_or_path)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.is_file():
            raise StrategyError(f"gating strategy {name_or_path!r}: no such built-in or file")
    text = path.read_text()
    try:
        doc = yaml.safe_load(text)
        return _build(doc, path, text)
    except StrategyError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, yaml.YAMLError) as exc:
        raise StrategyError(f"{path}: malformed strategy ({type(exc).__name__}: {exc})") from None


def _build(doc: dict, path: Path, text: str) -> Strategy:
    q = doc.get("qc", {}) or {}
    qc = QcSettings(
        max_removed_share=float(q.get("max_removed_share", 0.2)),
        min_population_events=int(q.get("min_population_events", 50)),
        time_bins=int(q.get("time_bins", 100)),
        time_max_z=float(q.get("time_max_z", 6.0)),
        singlet_ratio_bounds=tuple(q.get("singlet_ratio", {}).get("bounds", (1.15, 1.7))),
        singlet_ratio_default=float(q.get("singlet_ratio", {}).get("default", 1.35)),
        debris_fsc_bounds=tuple(q.get("debris_fsc", {}).get("bounds", (0.03, 0.16))),
        debris_fsc_default=float(q.get("debris_fsc", {}).get("default", 0.08)),
    )
    thresholds = {
        name: ThresholdSpec(
            name, str(t["dimension"]), str(t["within"]), tuple(t["bounds"]), float(t["default"])
        )
        for name, t in (doc.get("thresholds") or {}).items()
    }
    gates: list[GateSpec] = []
    known = {QC_ROOT}
    for g in doc["gates"]:
        name, parent, kind = str(g["name"]), str(g["parent"]), str(g["kind"])
        where = f"{path}: gate {name!r}"
        if parent not in known:
            raise StrategyError(f"{where}: parent {parent!r} is not defined above it")
        if name in known:
            raise StrategyError(f"{where}: defined twice")
        limits: dict = {}
        refs: tuple = ()
        if kind == "rectangle":
            for dim, (lo, hi) in g["limits"].items():
                for ref in (lo, hi):
                    if isinstance(ref, str) and ref not in thresholds:
                        raise StrategyError(f"{where}: unknown threshold {ref!r}")
                limits[str(dim)] = (lo, hi)
        elif kind == "boolean":
            parsed = []
            for ref in g["refs"]:
                negated = ref.startswith("not ")
                target = ref[4:].strip() if negated else ref
                if target not in known:
                    raise StrategyError(f"{where}: refers to {target!r} before it is defined")
                parsed.append((target, negated))
            refs = tuple(parsed)
            if g.get("op", "and") not in {"and", "or"}:
                raise StrategyError(f"{where}: op must be 'and' or 'or'")
        elif kind != "scatter_cluster":
            raise StrategyError(f"{where}: unknown kind {kind!r}")
        options = {
            k: v
            for k, v in g.items()
            if k not in {"name", "parent", "kind", "report", "limits", "op", "refs", "dimensions"}
        }
        gates.append(
            GateSpec(
                name=name,
                parent=parent,
                kind=kind,
                report=bool(g.get("report", True)),
                limits=limits,
                op=str(g.get("op", "and")),
                refs=refs,
                dimensions=tuple(g.get("dimensions", ())),
                options=options,
            )
        )
        known.add(name)
    for t in thresholds.values():
        if t.within not in known:
            raise StrategyError(f"{path}: threshold {t.name!r} within unknown gate {t.within!r}")
    # Identity: the parsed content, so whitespace and comment edits do not force reprocessing.
    canonical = json.dumps(doc, sort_keys=True, default=str)
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return Strategy(
        str(doc["name"]),
        int(doc.get("version", 1)),
        qc,
        thresholds,
        tuple(gates),
        digest,
        str(path),
    )
