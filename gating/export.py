"""Recorded gates of one sample as a flowkit GatingStrategy, and as GatingML 2.0.

Another tool given the FCS file and this GatingML reproduces our counts: compensation with the
file's spillover, logicle per marker channel (T = $PnR), scatter as a fraction of its range
(GatingML 'flin'), then the same gate tree, QC gates included.
"""

from __future__ import annotations

import io
from pathlib import Path

import flowkit as fk

from gating.records import ALL_EVENTS, AppliedGate
from gating.space import channel_range
from panels.fcs import FcsHeader
from panels.resolve import ResolvedPanel

COMP_ID = "acquisition_spillover"


def to_flowkit_strategy(
    gates: list[AppliedGate], resolved: ResolvedPanel, header: FcsHeader
) -> fk.GatingStrategy:
    """Build the flowkit GatingStrategy equivalent of a sample's recorded gates."""
    strategy = fk.GatingStrategy()
    spill = header.spillover()
    comp_ref = "uncompensated"
    if spill is not None:
        # Fluorochromes named as their detectors: GatingML needs names, and gates refer to them.
        strategy.add_comp_matrix(COMP_ID, fk.Matrix(spill[1], spill[0], fluorochromes=spill[0]))
        comp_ref = COMP_ID
    p = resolved.panel
    dimension_of: dict[str, tuple[str, str, str]] = {}
    for marker, channel in resolved.marker_channels.items():
        t = channel_range(header.pnr[header.pnn.index(channel)])
        transform_id = f"logicle_{channel}"
        strategy.add_transform(
            transform_id,
            fk.transforms.LogicleTransform(
                param_t=t, param_w=p.logicle_w, param_m=p.logicle_m, param_a=p.logicle_a
            ),
        )
        marker_comp = comp_ref if spill is not None and channel in spill[0] else "uncompensated"
        dimension_of[marker] = (channel, marker_comp, transform_id)
    for role, channel in resolved.scatter_channels.items():
        t = channel_range(header.pnr[header.pnn.index(channel)])
        transform_id = f"linear_{channel}"
        strategy.add_transform(transform_id, fk.transforms.LinearTransform(param_t=t, param_a=0))
        dimension_of[role] = (channel, "uncompensated", transform_id)

    def dim(name: str, lo=None, hi=None) -> fk.Dimension:
        channel, comp, transform = dimension_of[name]
        return fk.Dimension(
            channel, compensation_ref=comp, transformation_ref=transform, range_min=lo, range_max=hi
        )

    paths: dict[str, tuple[str, ...]] = {ALL_EVENTS: ("root",)}
    for applied in gates:
        if not applied.gate.selects_events:
            continue
        parent_path = paths[applied.parent]
        for extra in applied.gate.to_flowkit(applied.name, dim, parent_path):
            strategy.add_gate(extra, gate_path=parent_path)
        paths[applied.name] = (*parent_path, applied.name)
    return strategy


def gatingml_text(gates: list[AppliedGate], resolved: ResolvedPanel, header: FcsHeader) -> str:
    """GatingML 2.0 document of a sample's recorded gates."""
    buffer = io.BytesIO()
    fk.export_gatingml(to_flowkit_strategy(gates, resolved, header), buffer)
    return buffer.getvalue().decode()


def write_gatingml(
    path: str | Path, gates: list[AppliedGate], resolved: ResolvedPanel, header: FcsHeader
) -> Path:
    path = Path(path)
    path.write_text(gatingml_text(gates, resolved, header))
    return path


def gatingml_counts(xml_path: str | Path, fcs_path: str | Path) -> dict[tuple[str, tuple], int]:
    """(gate name, parent path) -> events, as flowkit applies a GatingML file to an FCS file."""
    strategy = fk.parse_gating_xml(str(xml_path))
    result = strategy.gate_sample(fk.Sample(str(fcs_path)))
    return {
        (name, path): int(result.get_gate_count(name, gate_path=path))
        for name, path in strategy.get_gate_ids()
    }
