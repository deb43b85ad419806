"""One way to gate a file with a panel's strategy, whichever kind the panel names: a YAML
strategy (immunomon's own pipeline) or a FlowJo workspace (flowkit)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gating.strategy import Strategy, StrategyError, load_strategy
from gating.workspace import (
    WorkspaceStrategy,
    gate_sample_with_workspace,
    is_flowjo_workspace,
    load_workspace_strategy,
)
from panels.fcs import FcsData, FcsHeader, read_events, scan_header
from panels.resolve import SCATTER_ALIASES, Panel, PanelError, ResolvedPanel, resolve_panel

if TYPE_CHECKING:  # the pipeline (scikit-learn, ~1.3 s) is imported where a file is gated,
    # so a command checks its panel and strategy before paying for it
    from gating.pipeline import SampleGating

AnyStrategy = Strategy | WorkspaceStrategy


def load_panel_strategy(panel: Panel, base_dir: Path | None = None) -> AnyStrategy:
    """The panel's strategy: a built-in or YAML strategy, or a FlowJo workspace (.wsp, or
    .xml when its content is a workspace)."""
    if panel.uses_workspace:
        path = Path(panel.strategy)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if path.suffix.lower() == ".xml" and not is_flowjo_workspace(path):
            raise StrategyError(
                f"{path}: not a FlowJo 10 workspace (no <Workspace> element); a panel's "
                "strategy is a strategy YAML or a FlowJo workspace (.wsp, or .xml saved by FlowJo)"
            )
        return load_workspace_strategy(path, panel.workspace)
    return load_strategy(panel.strategy, base_dir)


@dataclass
class GatedFile:
    """A file's gating, with its events when immunomon's pipeline read them (QC reports)."""

    gating: SampleGating
    resolved: ResolvedPanel
    data: FcsData | None


def resolve_for_strategy(panel: Panel, header: FcsHeader, strategy: AnyStrategy) -> ResolvedPanel:
    """Bind the panel to the file, and refuse a tube from which the strategy can measure no
    marker-defined population (a tube of another panel, mislabelled): PanelError naming the
    missing markers."""
    resolved = resolve_panel(panel, header)
    if isinstance(strategy, Strategy) and resolved.missing:
        lost = strategy.not_measurable(resolved.missing)
        needs_markers = [
            g.name for g in strategy.reported if g.dimensions_used() - set(SCATTER_ALIASES)
        ]
        if needs_markers and all(name in lost for name in needs_markers):
            raise PanelError(
                f"the file does not fit panel {panel.name!r}: missing marker(s) "
                f"{', '.join(resolved.missing)}, so none of its populations can be measured. "
                "Check the panel given for the file (in a study, the panel token in its name) "
                "and the tube's $PnS labels"
            )
    return resolved


def gate_file(path: str | Path, panel: Panel, strategy: AnyStrategy) -> GatedFile:
    """Resolve the panel's markers in the file and gate it with the strategy."""
    if isinstance(strategy, WorkspaceStrategy):
        resolved = resolve_panel(panel, scan_header(path))
        return GatedFile(gate_sample_with_workspace(path, strategy), resolved, None)
    from gating.pipeline import gate_sample

    data = read_events(path)
    resolved = resolve_for_strategy(panel, data.header, strategy)
    return GatedFile(gate_sample(data, resolved, strategy), resolved, data)
