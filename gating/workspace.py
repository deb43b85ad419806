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
    try:
        workspace = _parse(str(path), path.stat().st_mtime_ns)
    except Exception as exc:  # flowkit raises many types for a malformed file
        raise StrategyError(
            f"{where}: flowkit cannot read it ({type(exc).__name__}: {exc})"
        ) from exc
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
