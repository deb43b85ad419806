"""A FlowJo workspace (.wsp) as a panel's gating strategy, analysed by flowkit.

A lab that has drawn its gates in FlowJo can use that workspace instead of a YAML strategy.
Its gates are fixed (not placed from each sample's data) and flowkit applies them exactly as
its own ``Workspace`` analysis does: a sample present in the workspace is gated with its own
gates, compensation and transforms; a new sample with those of the group's template sample
(the first sample of the group, unless the panel names one), as when a FlowJo group template
is applied to a new file. The panel maps each reported population to a gate of the workspace.

The QC steps of the YAML strategies do not run: the workspace's own gates are the whole
analysis.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from gating.records import PopulationCount, SampleGating
from gating.strategy import StrategyError


@dataclass(frozen=True)
class WorkspaceStrategy:
    """A FlowJo workspace, the sample group whose gates apply, and the reported populations."""

    name: str
    source: str
    group: str
    template_sample: str
    populations: dict[str, str]  # reported population -> gate name or path in the workspace
    sha256: str
    # reported population -> the gate's (name, parent path) in the template sample
    gate_ids: dict[str, tuple[str, tuple[str, ...]]]


def is_flowjo_workspace(path: str | Path) -> bool:
    """Whether a file is a FlowJo 10 workspace, by its content (FlowJo also saves as .xml)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return False
    return b"<Workspace" in head


def find_gate(
    reference: str, gate_ids: list[tuple[str, tuple[str, ...]]], where: str
) -> tuple[str, tuple[str, ...]]:
    """The one gate a reference names: a gate name, or the end of its path written with '/'
    (``CD4+/CD107a+``) where the name repeats under several parents."""

    def full(gate: tuple[str, tuple[str, ...]]) -> tuple[str, ...]:
        name, parents = gate
        return (*[p for p in parents if p != "root"], name)

    by_name = [g for g in gate_ids if g[0] == reference]
    parts = tuple(reference.split("/"))
    by_path = [g for g in gate_ids if full(g)[-len(parts) :] == parts]
    found = by_name or by_path
    if len(found) == 1:
        return found[0]
    if not found:
        known = ", ".join(sorted("/".join(full(g)) for g in gate_ids))
        raise StrategyError(
            f"{where}: no gate {reference!r} (gates: {known}); fix 'workspace: populations:'"
        )
    raise StrategyError(
        f"{where}: gate name {reference!r} is ambiguous; name it by its path, one of: "
        f"{', '.join('/'.join(full(g)) for g in found)}"
    )


def load_workspace_strategy(path: str | Path, options: dict) -> WorkspaceStrategy:
    """Read and check a workspace: the group, the template sample and every mapped gate exist.

    ``options`` (the panel's ``workspace:`` entry): ``populations`` (required: population ->
    gate name), ``group`` (default 'All Samples'), ``template_sample``.
    """
    path = Path(path)
    where = f"FlowJo workspace {path}"
    populations = {str(k): str(v) for k, v in (options.get("populations") or {}).items()}
    if not populations:
        raise StrategyError(
            f"{where}: the panel's 'workspace: populations:' must map each reported "
            "population to a gate name of the workspace"
        )
    workspace = _read(path)
    group = str(options.get("group", "All Samples"))
    groups = list(workspace.get_sample_groups())
    if group not in groups:
        raise StrategyError(f"{where}: no sample group {group!r} (groups: {', '.join(groups)})")
    members = workspace.get_sample_ids(group_name=group, loaded_only=False)
    template = str(options.get("template_sample", members[0] if members else ""))
    if template not in members:
        raise StrategyError(
            f"{where}: template sample {template!r} is not in group {group!r}; "
            f"set 'workspace: template_sample:' to one of {', '.join(members) or '(none)'}"
        )
    gate_ids = list(workspace.get_gate_ids(template))
    chosen = {
        population: find_gate(reference, gate_ids, f"{where}: populations.{population}")
        for population, reference in populations.items()
    }
    digest = hashlib.sha256(path.read_bytes())
    digest.update(json.dumps([group, template, populations], sort_keys=True).encode())
    return WorkspaceStrategy(
        path.stem, str(path), group, template, populations, digest.hexdigest(), chosen
    )


@lru_cache(maxsize=8)
def _parse(path: str, mtime_ns: int):
    """The parsed workspace (``flowkit.Workspace``), once per process and file version."""
    import flowkit as fk  # only panels that use a workspace pay for importing flowkit

    return fk.Workspace(path, load_missing_file_data=True)  # gates of every sample, no events


def gate_sample_with_workspace(fcs_path: str | Path, strategy: WorkspaceStrategy) -> SampleGating:
    """Gate one file with the workspace's gates (flowkit) and count the mapped populations."""
    import flowkit as fk

    fcs_path = Path(fcs_path)
    workspace = _parse(strategy.source, Path(strategy.source).stat().st_mtime_ns)
    members = workspace.get_sample_ids(group_name=strategy.group, loaded_only=False)
    own = fcs_path.name if fcs_path.name in members else None
    gating_strategy = workspace.get_gating_strategy(own or strategy.template_sample)
    sample = fk.Sample(str(fcs_path), sample_id=fcs_path.name)
    result = gating_strategy.gate_sample(sample)
    # A gate is known by its full path: the same name may sit under several parents.
    population_of_path = {
        (*parents, name): population for population, (name, parents) in strategy.gate_ids.items()
    }
    own_gates = set(gating_strategy.get_gate_ids())
    populations = []
    for population, (gate, parent_path) in strategy.gate_ids.items():
        if (gate, parent_path) not in own_gates:
            raise StrategyError(
                f"FlowJo workspace {strategy.source}: sample {fcs_path.name} has no gate "
                f"{'/'.join((*parent_path[1:], gate))} (its own gates differ from the template's)"
            )
        count = int(result.get_gate_count(gate, gate_path=parent_path))
        if len(parent_path) > 1:
            parent_gate = parent_path[-1]
            parent = population_of_path.get(parent_path, parent_gate)
            parent_count = int(result.get_gate_count(parent_gate, gate_path=parent_path[:-1]))
        else:
            parent, parent_count = "all_events", sample.event_count
        populations.append(PopulationCount(population, parent, count, parent_count))
    flags = [f"flowjo_workspace:{'own_gates' if own else 'template ' + strategy.template_sample}"]
    return SampleGating(sample.event_count, populations, [], [], flags)


@dataclass(frozen=True)
class WorkspaceLimit:
    """A FlowJo rectangle's limit read as one of our thresholds: ``value`` on our logicle
    scale (the panel's W, M, A and the file's $PnR), from gate ``gate`` (its FlowJo path)."""

    threshold: str
    value: float
    gate: str
    channel: str
    side: str  # "min" or "max"


@dataclass(frozen=True)
class WorkspaceSeed:
    """What a FlowJo workspace's template sample gives a strategy: each threshold's limit (the
    first gate that sets it), and every FlowJo gate not used, with the reason."""

    sample: str  # the workspace's sample the gates were read on (its file name)
    limits: dict[str, WorkspaceLimit]
    unmapped: list[tuple[str, str]]  # (FlowJo gate path, why it gives no threshold)


def _read(path: Path):
    """The parsed workspace; a file flowkit cannot read is a StrategyError naming it."""
    where = f"FlowJo workspace {path}"
    try:
        return _parse(str(path), path.stat().st_mtime_ns)
    except OSError as exc:
        raise StrategyError(f"{where}: cannot be read ({exc.strerror or exc})") from None
    except Exception as exc:  # flowkit raises many types for a malformed file
        raise StrategyError(
            f"{where}: flowkit cannot read it ({type(exc).__name__}: {exc})"
        ) from None


def workspace_samples(path: str | Path, group: str = "All Samples") -> list[str]:
    """The samples (file names) of a workspace's sample group; an unknown group is an error
    naming the groups there are."""
    path = Path(path)
    workspace = _read(path)
    groups = list(workspace.get_sample_groups())
    if group not in groups:
        raise StrategyError(
            f"FlowJo workspace {path}: no sample group {group!r} (groups: {', '.join(groups)})"
        )
    return list(workspace.get_sample_ids(group_name=group, loaded_only=False))


def workspace_limits(
    path: str | Path,
    strategy,
    resolved,
    pnr: dict[str, float],
    group: str = "All Samples",
    sample: str | None = None,
) -> WorkspaceSeed:
    """Read a FlowJo workspace's gates (flowkit) on one sample of ``group`` (``sample``, or
    the group's first) and map them to ``strategy``'s thresholds: a FlowJo rectangle named as
    one of our rectangle gates gives, on each dimension our gate limits by a threshold, that
    threshold's value. FlowJo's dimension is matched to our marker by its channel
    (``resolved``: the panel bound to a file of the study; ``Comp-`` or not), its limit taken
    back to channel units through the workspace's own transform and then onto our logicle
    (``pnr``: channel -> $PnR of that file). Every other gate is listed with the reason.

    An ellipse or polygon of FlowJo is not a threshold: our placed gates (the lymphocyte
    ellipse, the Treg arm) find themselves on each sample, so their FlowJo geometry is listed,
    not used."""
    from gating.space import channel_range
    from gating.strategy import RectangleSpec
    from gating.transforms import Logicle

    path = Path(path)
    where = f"FlowJo workspace {path}"
    members = workspace_samples(path, group)
    chosen = sample if sample is not None else (members[0] if members else "")
    if chosen not in members:
        raise StrategyError(
            f"{where}: sample {chosen!r} is not in group {group!r} "
            f"(its samples: {', '.join(members) or 'none'})"
        )
    gating = _read(path).get_gating_strategy(chosen)
    ours = {g.name.casefold(): g for g in strategy.gates}
    marker_of = {channel: marker for marker, channel in resolved.marker_channels.items()}
    panel = resolved.panel
    limits: dict[str, WorkspaceLimit] = {}
    unmapped: list[tuple[str, str]] = []
    for name, parents in gating.get_gate_ids():
        label = "/".join((*[p for p in parents if p != "root"], name))
        gate = gating.get_gate(name, parents)
        spec = ours.get(name.casefold())
        kind = type(gate).__name__
        if spec is None:
            unmapped.append((label, f"no gate of strategy {strategy.name} is named {name!r}"))
            continue
        if not isinstance(spec, RectangleSpec) or kind != "RectangleGate":
            unmapped.append(
                (
                    label,
                    f"a FlowJo {kind} for our {spec.kind} gate {spec.name}: "
                    "only rectangle limits map to thresholds (our placed gates are found on "
                    "each sample)",
                )
            )
            continue
        used = False
        for dim in gate.dimensions:
            channel = dim.id.removeprefix("Comp-")
            marker = marker_of.get(channel)
            if marker is None or marker not in spec.limits:
                continue
            for side, ref, limit in zip(
                ("min", "max"), spec.limits[marker], (dim.min, dim.max), strict=True
            ):
                if not isinstance(ref, str) or limit is None or ref in limits:
                    continue
                value = float(limit)
                if dim.transformation_ref is not None:
                    theirs = gating.get_transform(dim.transformation_ref)
                    value = float(np.asarray(theirs.inverse(np.array([[value]]))).ravel()[0])
                logicle = Logicle(
                    channel_range(pnr[channel]), panel.logicle_w, panel.logicle_m, panel.logicle_a
                )
                ours_value = float(logicle.exact(np.array([value]))[0])
                limits[ref] = WorkspaceLimit(ref, ours_value, label, channel, side)
                used = True
        if not used:
            unmapped.append(
                (label, f"no limit of it falls on a threshold of {spec.name} not already read")
            )
    return WorkspaceSeed(chosen, limits, unmapped)
