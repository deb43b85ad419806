"""Recorded gates of one sample as a flowkit GatingStrategy, and as GatingML 2.0.

Another tool given the FCS file and this GatingML reproduces our counts: compensation with the
file's spillover, logicle per marker channel (T = $PnR), scatter as a fraction of its range
(GatingML 'flin'), then the same gate tree, QC gates included.
"""

from __future__ import annotations

import io
from pathlib import Path

import flowkit as fk

from gating.pipeline import ALL_EVENTS, AppliedGate
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
    for gate in gates:
        if gate.kind == "threshold":
            continue
        parent_path = paths[gate.parent]
        for extra in _flowkit_gates(gate, dim, paths, parent_path):
            strategy.add_gate(extra, gate_path=parent_path)
        paths[gate.name] = (*parent_path, gate.name)
    return strategy


def _flowkit_gates(gate: AppliedGate, dim, paths, parent_path) -> list:
    """The flowkit gate(s) for one recorded gate; helpers first, the named gate last."""
    p = gate.parameters
    g = fk.gates
    if gate.kind == "raw_range":
        dims = [
            fk.Dimension(ch, compensation_ref="uncompensated", range_min=lo, range_max=hi)
            for ch, (lo, hi) in p["limits"].items()
        ]
        if not dims:  # nothing to limit: a range no event can leave
            return [
                g.RectangleGate(
                    gate.name,
                    [
                        fk.Dimension(
                            gate.dimensions[0] if gate.dimensions else "Time",
                            compensation_ref="uncompensated",
                            range_min=None,
                            range_max=None,
                        )
                    ],
                )
            ]
        return [g.RectangleGate(gate.name, dims)]
    if gate.kind == "time_ranges":

        def time_dim(lo, hi):
            return fk.Dimension(
                p["channel"], compensation_ref="uncompensated", range_min=lo, range_max=hi
            )

        if len(p["keep"]) == 1:
            lo, hi = p["keep"][0]
            return [g.RectangleGate(gate.name, [time_dim(lo, hi)])]
        parts = [
            g.RectangleGate(f"{gate.name}_part{k}", [time_dim(lo, hi)])
            for k, (lo, hi) in enumerate(p["keep"], start=1)
        ]
        refs = [{"ref": part.gate_name, "path": parent_path, "complement": False} for part in parts]
        return [*parts, g.BooleanGate(gate.name, "or", refs)]
    if gate.kind == "rectangle":
        return [g.RectangleGate(gate.name, [dim(d, lo, hi) for d, (lo, hi) in p["limits"].items()])]
    if gate.kind == "polygon":
        return [g.PolygonGate(gate.name, [dim(d) for d in gate.dimensions], p["vertices"])]
    if gate.kind == "ellipse":
        return [
            g.EllipsoidGate(
                gate.name,
                [dim(d) for d in gate.dimensions],
                p["mean"],
                p["covariance"],
                p["distance_square"],
            )
        ]
    if gate.kind == "boolean":
        refs = [
            {
                "ref": r[4:] if r.startswith("not ") else r,
                "path": parent_path,
                "complement": r.startswith("not "),
            }
            for r in p["refs"]
        ]
        return [g.BooleanGate(gate.name, p["op"], refs)]
    raise ValueError(f"gate {gate.name}: kind {gate.kind!r} cannot be exported")


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
