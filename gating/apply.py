"""One way to gate a file with a panel's strategy, whichever kind the panel names: a YAML
strategy (immunomon's own pipeline) or a FlowJo workspace (flowkit)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gating.pipeline import SampleGating, gate_sample
from gating.strategy import Strategy, load_strategy
from gating.workspace import WorkspaceStrategy, gate_sample_with_workspace, load_workspace_strategy
from panels.fcs import FcsData, read_events, scan_header
from panels.resolve import Panel, ResolvedPanel, resolve_panel

AnyStrategy = Strategy | WorkspaceStrategy


def load_panel_strategy(panel: Panel, base_dir: Path | None = None) -> AnyStrategy:
    """The panel's strategy: a built-in or YAML strategy, or a FlowJo workspace (.wsp)."""
    if panel.uses_workspace:
        path = Path(panel.strategy)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        return load_workspace_strategy(path, panel.workspace)
    return load_strategy(panel.strategy, base_dir)


@dataclass
class GatedFile:
    """A file's gating, with its events when immunomon's pipeline read them (QC reports)."""

    gating: SampleGating
    resolved: ResolvedPanel
    data: FcsData | None


def gate_file(path: str | Path, panel: Panel, strategy: AnyStrategy) -> GatedFile:
    """Resolve the panel's markers in the file and gate it with the strategy."""
    if isinstance(strategy, WorkspaceStrategy):
        resolved = resolve_panel(panel, scan_header(path))
        return GatedFile(gate_sample_with_workspace(path, strategy), resolved, None)
    data = read_events(path)
    resolved = resolve_panel(panel, data.header)
    return GatedFile(gate_sample(data, resolved, strategy), resolved, data)
