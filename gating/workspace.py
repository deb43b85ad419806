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
    populations: dict[str, str]  # reported population -> gate name in the workspace
    sha256: str


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
    gate_names = {name for name, _ in workspace.get_gate_ids(template)}
    missing = sorted(g for g in populations.values() if g not in gate_names)
    if missing:
        raise StrategyError(
            f"{where}: gate(s) {', '.join(missing)} not found for sample {template!r} "
            f"(gates: {', '.join(sorted(gate_names))}); fix 'workspace: populations:'"
        )
    digest = hashlib.sha256(path.read_bytes())
    digest.update(json.dumps([group, template, populations], sort_keys=True).encode())
    return WorkspaceStrategy(path.stem, str(path), group, template, populations, digest.hexdigest())


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
    name_of_gate = {gate: population for population, gate in strategy.populations.items()}
    paths = {name: path for name, path in gating_strategy.get_gate_ids()}
    populations = []
    for population, gate in strategy.populations.items():
        parent_path = paths[gate]
        count = int(result.get_gate_count(gate, gate_path=parent_path))
        if len(parent_path) > 1:
            parent_gate = parent_path[-1]
            parent = name_of_gate.get(parent_gate, parent_gate)
            parent_count = int(result.get_gate_count(parent_gate, gate_path=parent_path[:-1]))
        else:
            parent, parent_count = "all_events", sample.event_count
        populations.append(PopulationCount(population, parent, count, parent_count))
    flags = [f"flowjo_workspace:{'own_gates' if own else 'template ' + strategy.template_sample}"]
    return SampleGating(sample.event_count, populations, [], [], flags)
