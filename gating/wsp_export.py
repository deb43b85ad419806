"""A study's applied gates as one FlowJo 10 workspace (.wsp), and flowkit's reading of it.

Every sample is its own FlowJo sample node with its own gates: the tree each gate kind gives as
flowkit gates (``Gate.to_flowkit``, through ``gating.export.to_flowkit_strategy``) is written as
FlowJo XML, so a new gate kind plugs in as long as its flowkit form is a rectangle, polygon,
ellipsoid or boolean gate. We write the XML ourselves rather than call flowkit's
``Session.export_wsp``: flowkit 1.3 writes one gate tree and one set of transforms for every
sample, rectangles and polygons only (no ellipsoid, no boolean gate), and its compensation
matrix lands in the workspace's ``Matrices`` only, where its own reader does not find it.

What FlowJo is given, per sample:

- the file's own spillover as the sample's ``Acquisition-defined`` matrix (prefix ``Comp-``),
  which is the matrix we compensate with;
- our transforms: logicle (T = $PnR and the panel's W, M, A) on every marker channel, compensated
  and not, and scatter linear on [0, $PnR] (our "fraction of range"); no transform on Time;
- gate coordinates in channel units, as FlowJo stores them (rectangle limits and polygon
  vertices through the inverse of the dimension's transform); an ellipse as FlowJo's foci and
  four edge points in its 256-bin display space;
- gates on compensated markers named ``Comp-CHANNEL``, gates on raw values (the margin gate)
  by the bare channel name, as FlowJo names uncompensated parameters;
- boolean gates as ``AndNode``/``OrNode``; a complemented reference (``not X``) as a
  ``NotNode`` sibling named ``not X`` that the ``AndNode`` refers to, the way FlowJo builds
  such combinations itself;
- each population's ``count`` (ours, from replaying the recorded gates) and, as its annotation,
  how the gate was placed; the sample's review state and overrides as keywords.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import numpy as np
from lxml import etree

from gating.export import to_flowkit_strategy
from gating.records import ALL_EVENTS, AppliedGate
from panels.errors import ImmunomonError
from panels.fcs import FcsHeader
from panels.resolve import ResolvedPanel

NS_GATING = "http://www.isac-net.org/std/Gating-ML/v2.0/gating"
NS_TRANSFORMS = "http://www.isac-net.org/std/Gating-ML/v2.0/transformations"
NS_DATATYPE = "http://www.isac-net.org/std/Gating-ML/v2.0/datatypes"
NSMAP = {
    "xsi": "http://www.w3.org/2001/XMLSchema-instance",
    "gating": NS_GATING,
    "transforms": NS_TRANSFORMS,
    "data-type": NS_DATATYPE,
}
COMP_PREFIX = "Comp-"
# FlowJo's name for the matrix an FCS file carries in $SPILLOVER.
ACQUISITION_MATRIX = "Acquisition-defined"
# FlowJo draws (and stores ellipses) in a 256-bin display space over each transform's range.
DISPLAY_BINS = 256.0
ALL_SAMPLES = "All Samples"
# Keywords we add to each sample; FlowJo lists them with the file's own keywords.
KEYWORD_PREFIX = "IMMUNOMON "


class FlowJoFormError(ImmunomonError):
    """A gate or transform the FlowJo workspace cannot hold; names the sample and the gate."""


def _g(tag: str) -> str:
    return f"{{{NS_GATING}}}{tag}"


def _t(tag: str) -> str:
    return f"{{{NS_TRANSFORMS}}}{tag}"


def _d(tag: str) -> str:
    return f"{{{NS_DATATYPE}}}{tag}"


def _number(value: float) -> str:
    """Shortest text that reads back as the same float64 (limits must not move)."""
    return repr(float(value))


_NOT_XML = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd]")


def _text(value: object) -> str:
    """A keyword value as XML can hold it (FCS TEXT may carry control characters)."""
    return _NOT_XML.sub("?", str(value))


@dataclass(frozen=True)
class WorkspaceSample:
    """One sample as the workspace shows it: its file, its recorded gates and their counts."""

    sample_id: str
    fcs_path: Path
    header: FcsHeader
    resolved: ResolvedPanel
    gates: list[AppliedGate]
    counts: Mapping[str, int]  # gate name -> events (ALL_EVENTS included), ours
    keywords: Mapping[str, str] = field(default_factory=dict)  # added as IMMUNOMON keywords


def gate_counts(sample_gates: list[AppliedGate], fcs_path: Path, resolved: ResolvedPanel):
    """Events in every recorded gate of a sample, by replaying the gates on its file."""
    from gating.pipeline import replay_gates
    from panels.fcs import read_events

    masks = replay_gates(read_events(fcs_path), resolved, sample_gates)
    return {name: int(np.count_nonzero(mask)) for name, mask in masks.items()}


def _flowjo_dimension(dim, comp_id: str | None) -> str:
    """FlowJo's parameter name: ``Comp-`` marks the compensated version of a channel."""
    if comp_id is not None and dim.compensation_ref == comp_id:
        return COMP_PREFIX + dim.id
    return dim.id


def _to_channel_units(strategy, dim, value: float) -> float:
    """A transformed coordinate in channel units, as FlowJo stores gates."""
    if dim.transformation_ref is None:
        return float(value)
    transform = strategy.get_transform(dim.transformation_ref)
    return float(transform.inverse(np.array([[float(value)]]))[0, 0])


def _shape_element(parent_el, tag: str, gate, comp_id, strategy=None, **attributes):
    """A FlowJo gate element (``tag``) with its dimensions; with ``strategy``, each
    dimension's limits in channel units (a rectangle's)."""
    el = etree.SubElement(parent_el, _g(tag), eventsInside="1")
    for key, value in attributes.items():
        el.set(key, value)
    for dim in gate.dimensions:
        dim_el = etree.SubElement(el, _g("dimension"))
        for key, limit in (("min", dim.min), ("max", dim.max)):
            if strategy is not None and limit is not None:
                dim_el.set(_g(key), _number(_to_channel_units(strategy, dim, limit)))
        etree.SubElement(dim_el, _d("fcs-dimension")).set(
            _d("name"), _flowjo_dimension(dim, comp_id)
        )
    return el


def _rectangle(parent_el, gate, strategy, comp_id) -> None:
    _shape_element(parent_el, "RectangleGate", gate, comp_id, strategy, percentX="0", percentY="0")


def _polygon(parent_el, gate, strategy, comp_id) -> None:
    el = _shape_element(parent_el, "PolygonGate", gate, comp_id, quadId="-1", gateResolution="256")
    for vertex in gate.vertices:
        vertex_el = etree.SubElement(el, _g("vertex"))
        for dim, coordinate in zip(gate.dimensions, vertex, strict=True):
            etree.SubElement(vertex_el, _g("coordinate")).set(
                _d("value"), _number(_to_channel_units(strategy, dim, coordinate))
            )


def ellipse_foci_and_edges(
    mean, covariance, distance_square: float
) -> tuple[np.ndarray, np.ndarray]:
    """FlowJo's form of an ellipse: its two foci and four edge points (the major axis' ends,
    then the minor axis'), in the coordinates of ``mean``.

    The ellipse ``(x - m)' C^-1 (x - m) = d`` has semi-axes ``sqrt(d * eigenvalue)`` along the
    covariance's eigenvectors; the foci lie on the major axis at ``sqrt(a^2 - b^2)``."""
    mean = np.asarray(mean, float)
    values, vectors = np.linalg.eigh(np.asarray(covariance, float))
    minor, major = np.sqrt(distance_square * values)  # eigh sorts ascending
    v_minor, v_major = vectors[:, 0], vectors[:, 1]
    focal = np.sqrt(max(major**2 - minor**2, 0.0))
    foci = np.array([mean - focal * v_major, mean + focal * v_major])
    edges = np.array(
        [
            mean - major * v_major,
            mean + major * v_major,
            mean - minor * v_minor,
            mean + minor * v_minor,
        ]
    )
    return foci, edges


def _ellipse(parent_el, gate, strategy, comp_id) -> None:
    if len(gate.dimensions) != 2:
        raise FlowJoFormError(f"gate {gate.gate_name}: FlowJo ellipses have 2 dimensions")
    for dim in gate.dimensions:
        transform = (
            strategy.get_transform(dim.transformation_ref) if dim.transformation_ref else None
        )
        if transform is None or not hasattr(transform, "param_t"):
            raise FlowJoFormError(
                f"gate {gate.gate_name}: FlowJo stores an ellipse in display units; "
                f"dimension {dim.id} needs a linear or logicle transform"
            )
    foci, edges = ellipse_foci_and_edges(
        gate.coordinates, gate.covariance_matrix, gate.distance_square
    )
    el = _shape_element(parent_el, "EllipsoidGate", gate, comp_id)
    for tag, points in (("foci", foci), ("edge", edges)):
        group = etree.SubElement(el, _g(tag))
        for point in points:
            vertex_el = etree.SubElement(group, _g("vertex"))
            for coordinate in point:
                etree.SubElement(vertex_el, _g("coordinate")).set(
                    _d("value"), _number(coordinate * DISPLAY_BINS)
                )


def _population(parent_el, name, gate, strategy, comp_id, ids, path, count, note):
    import flowkit as fk

    pop = etree.SubElement(parent_el, "Population", name=name, annotation=_text(note))
    pop.set("owningGroup", "")  # a sample's own gate, not a group template's
    pop.set("count", str(count))
    gate_el = etree.SubElement(pop, "Gate")
    gate_el.set(_g("id"), ids[path + (name,)])
    if len(path) > 1:
        gate_el.set(_g("parent_id"), ids[path])
    writers = {
        fk.gates.RectangleGate: _rectangle,
        fk.gates.PolygonGate: _polygon,
        fk.gates.EllipsoidGate: _ellipse,
    }
    writer = writers.get(type(gate))
    if writer is None:
        raise FlowJoFormError(f"gate {name}: no FlowJo form for flowkit {type(gate).__name__}")
    writer(gate_el, gate, strategy, comp_id)
    for child in gate_el:
        child.set(_g("id"), ids[path + (name,)])
        if len(path) > 1:
            child.set(_g("parent_id"), ids[path])
    return pop


def _boolean(parent_el, tag, name, references, count, note):
    node = etree.SubElement(parent_el, tag, name=name, annotation=_text(note))
    node.set("owningGroup", "")
    node.set("count", str(count))
    dependents = etree.SubElement(node, "Dependents")
    for reference in references:
        etree.SubElement(dependents, "Dependent", name=reference)
    return node


def _subpopulations(element):
    found = element.find("Subpopulations")
    return found if found is not None else etree.SubElement(element, "Subpopulations")


def gate_annotations(gates: list[AppliedGate]) -> dict[str, str]:
    """Gate name -> how it was placed, as FlowJo shows a population's annotation: the gate's
    note and, for a rectangle, each threshold at one of its limits with its own placement
    (valley, mixture, registered, default, set by hand in review)."""
    from gating.gates import RectangleGate, ThresholdMark

    marks = [g for g in gates if isinstance(g.gate, ThresholdMark)]
    notes = {}
    for applied in gates:
        note = applied.note
        if isinstance(applied.gate, RectangleGate):
            used = [
                f"{m.name} = {m.gate.value:.3f} ({m.gate.method}: {m.note})"
                for m in marks
                if m.gate.value in applied.gate.limits.get(m.gate.dimension, ())
            ]
            note = "; ".join([note, *used]) if used else note
        notes[applied.name] = note
    return notes


def _sample_tree(sample_node, sample: WorkspaceSample, sample_number: int) -> None:
    """The sample's gate tree under its SampleNode, from its flowkit gating strategy."""
    import flowkit as fk

    strategy = to_flowkit_strategy(sample.gates, sample.resolved, sample.header)
    comp_id = next(iter(strategy.comp_matrices), None)
    notes = gate_annotations(sample.gates)
    element_of: dict[tuple, etree._Element] = {("root",): sample_node}
    ids: dict[tuple, str] = {}
    helper_counts: dict[str, int] = {}
    for k, (name, path) in enumerate(strategy.get_gate_ids(), start=1):
        ids[path + (name,)] = f"ID{sample_number}{k:04d}"
    for name, path in strategy.get_gate_ids():
        gate = strategy.get_gate(name, path)
        parent = _subpopulations(element_of[path])
        count = sample.counts.get(name, helper_counts.get(name, -1))
        note = notes.get(name, "")
        if isinstance(gate, fk.gates.BooleanGate):
            references = []
            for ref in gate.gate_refs:
                target = "/".join((*ref["path"][1:], ref["ref"]))
                if ref["complement"]:
                    not_name = f"not {ref['ref']}"
                    if parent.find(f"NotNode[@name='{not_name}']") is None:
                        parent_count = sample.counts.get(path[-1] if len(path) > 1 else ALL_EVENTS)
                        ref_count = sample.counts.get(ref["ref"])
                        not_count = (
                            parent_count - ref_count
                            if parent_count is not None and ref_count is not None
                            else -1
                        )
                        _boolean(parent, "NotNode", not_name, [target], not_count, "")
                    target = "/".join((*path[1:], not_name))
                references.append(target)
            tag = {"and": "AndNode", "or": "OrNode", "not": "NotNode"}[gate.type]
            element_of[path + (name,)] = _boolean(parent, tag, name, references, count, note)
        else:
            element_of[path + (name,)] = _population(
                parent, name, gate, strategy, comp_id, ids, path, count, note
            )
    _add_transforms(sample_node.getparent(), strategy, comp_id)


def _add_transforms(sample_el, strategy, comp_id) -> None:
    """One transform per parameter the gates use, under both its names (FlowJo keeps the raw
    and the ``Comp-`` parameter; flowkit looks transforms up by the bare channel name)."""
    import flowkit as fk

    transforms_el = sample_el.find("Transformations")
    seen: set[str] = set()
    for name, path in strategy.get_gate_ids():
        gate = strategy.get_gate(name, path)
        for dim in getattr(gate, "dimensions", []) or []:
            if dim.transformation_ref is None or dim.id in seen:
                continue
            seen.add(dim.id)
            transform = strategy.get_transform(dim.transformation_ref)
            labels = [dim.id]
            if comp_id is not None and dim.id in strategy.comp_matrices[comp_id].detectors:
                labels.append(COMP_PREFIX + dim.id)
            for label in labels:
                if isinstance(transform, fk.transforms.LogicleTransform):
                    el = etree.SubElement(transforms_el, _t("logicle"))
                    el.set(_t("length"), "256")
                    el.set(_t("T"), _number(transform.param_t))
                    el.set(_t("W"), _number(transform.param_w))
                    el.set(_t("M"), _number(transform.param_m))
                    el.set(_t("A"), _number(transform.param_a))
                elif isinstance(transform, fk.transforms.LinearTransform):
                    el = etree.SubElement(transforms_el, _t("linear"))
                    el.set(_t("minRange"), _number(transform.param_a))
                    el.set(_t("maxRange"), _number(transform.param_t))
                    el.set("gain", "1")
                else:
                    raise FlowJoFormError(
                        f"dimension {dim.id}: no FlowJo form for {type(transform).__name__}"
                    )
                etree.SubElement(el, _d("parameter")).set(_d("name"), label)


def _add_matrix(sample_el, header: FcsHeader) -> None:
    spill = header.spillover()
    if spill is None:
        return
    channels, matrix = spill
    el = etree.SubElement(sample_el, _t("spilloverMatrix"), prefix=COMP_PREFIX, suffix="")
    el.set("name", ACQUISITION_MATRIX)
    el.set("editable", "0")
    el.set("spectral", "0")
    el.set("status", "FINALIZED")
    parameters = etree.SubElement(el, _d("parameters"))
    for channel in channels:
        etree.SubElement(parameters, _d("parameter")).set(_d("name"), channel)
    for i, row_channel in enumerate(channels):
        row = etree.SubElement(el, _t("spillover"))
        row.set(_d("parameter"), row_channel)
        for j, column_channel in enumerate(channels):
            coefficient = etree.SubElement(row, _t("coefficient"))
            coefficient.set(_d("parameter"), column_channel)
            coefficient.set(_t("value"), _number(matrix[i, j]))


def _dataset_uri(fcs_path: Path, workspace_dir: Path) -> str:
    """The file relative to the workspace (FlowJo offers to locate a file that moved)."""
    relative = os.path.relpath(Path(fcs_path).resolve(), workspace_dir.resolve())
    return quote(Path(relative).as_posix())


def workspace_document(
    samples: list[WorkspaceSample], groups: Mapping[str, list[str]], workspace_dir: Path
) -> etree._ElementTree:
    """The FlowJo 10 workspace of ``samples``; ``groups``: group name -> sample ids (every
    sample is in 'All Samples' as well)."""
    root = etree.Element("Workspace", nsmap=NSMAP)
    root.set("version", "20.0")
    root.set("modDate", datetime.datetime.now().astimezone().strftime("%a %b %d %H:%M:%S %Z %Y"))
    root.set("flowJoVersion", "10.8.1")
    root.set("curGroup", ALL_SAMPLES)
    etree.SubElement(root, "Matrices")
    groups_el = etree.SubElement(root, "Groups")
    sample_list = etree.SubElement(root, "SampleList")
    number_of = {s.sample_id: str(k) for k, s in enumerate(samples, start=1)}
    all_groups = {ALL_SAMPLES: [s.sample_id for s in samples], **groups}
    for group_name, members in all_groups.items():
        node = etree.SubElement(groups_el, "GroupNode", name=group_name, annotation="")
        node.set("owningGroup", group_name)
        group = etree.SubElement(node, "Group", name=group_name)
        refs = etree.SubElement(group, "SampleRefs")
        for sample_id in members:
            etree.SubElement(refs, "SampleRef", sampleID=number_of[sample_id])
    for sample in samples:
        number = number_of[sample.sample_id]
        sample_el = etree.SubElement(sample_list, "Sample")
        etree.SubElement(
            sample_el, "DataSet", uri=_dataset_uri(sample.fcs_path, workspace_dir), sampleID=number
        )
        _add_matrix(sample_el, sample.header)
        etree.SubElement(sample_el, "Transformations")
        keywords = etree.SubElement(sample_el, "Keywords")
        for key, value in sample.header.keywords.items():
            etree.SubElement(keywords, "Keyword", name=_text(key), value=_text(value))
        for key, value in sample.keywords.items():
            etree.SubElement(
                keywords, "Keyword", name=_text(KEYWORD_PREFIX + key), value=_text(value)
            )
        node = etree.SubElement(sample_el, "SampleNode", name=sample.fcs_path.name, annotation="")
        node.set("owningGroup", "")
        node.set("count", str(sample.counts.get(ALL_EVENTS, sample.header.n_events)))
        node.set("sampleID", number)
        try:
            _sample_tree(node, sample, int(number))
        except FlowJoFormError as exc:
            raise FlowJoFormError(
                f"{sample.sample_id}: {exc}; export it with --format gatingml instead"
            ) from exc
    return etree.ElementTree(root)


def write_workspace(
    path: str | Path, samples: list[WorkspaceSample], groups: Mapping[str, list[str]]
) -> Path:
    """Write the workspace of ``samples`` to ``path`` (a .wsp file)."""
    path = Path(path)
    document = workspace_document(samples, groups, path.parent)
    document.write(str(path), encoding="utf-8", xml_declaration=True, pretty_print=True)
    return path


def _raw_rectangle_dimensions(
    element, parents: tuple, detectors: set[str], found: dict[tuple, dict[str, tuple]]
) -> None:
    """Add to ``found`` the rectangles under ``element`` with dimensions on raw values of a
    compensated channel: (gate name, parent path) -> channel -> (min, max)."""
    subpopulations = element.find("Subpopulations")
    if subpopulations is None:
        return
    for child in subpopulations:
        name = child.get("name")
        rectangle = child.find(f"Gate/{_g('RectangleGate')}")
        if rectangle is not None:
            raw = {}
            for dim_el in rectangle.findall(_g("dimension")):
                channel = dim_el.find(_d("fcs-dimension")).get(_d("name"))
                if channel in detectors:
                    lo, hi = dim_el.get(_g("min")), dim_el.get(_g("max"))
                    raw[channel] = (
                        None if lo is None else float(lo),
                        None if hi is None else float(hi),
                    )
            if raw:
                found[(name, parents)] = raw
        _raw_rectangle_dimensions(child, (*parents, name), detectors, found)


def _gates_on_raw_fluorescence(path: Path) -> dict[str, dict[tuple, dict[str, tuple]]]:
    """Sample name -> the rectangles whose dimensions name a channel the sample's matrix
    compensates by its bare name (a gate on uncompensated values, in FlowJo's naming)."""
    found: dict[str, dict[tuple, dict[str, tuple]]] = {}
    for sample_el in etree.parse(str(path)).getroot().iter("Sample"):
        matrix = sample_el.find(_t("spilloverMatrix"))
        if matrix is None:
            continue
        detectors = {p.get(_d("name")) for p in matrix.iter(_d("parameter"))}
        node = sample_el.find("SampleNode")
        gates: dict[tuple, dict[str, tuple]] = {}
        _raw_rectangle_dimensions(node, ("root",), detectors, gates)
        if gates:
            found[node.get("name")] = gates
    return found


def read_workspace(path: str | Path):
    """flowkit's reading of a workspace: (sample name, GatingStrategy, Sample) for every
    sample whose FCS file its DataSet URI finds.

    flowkit's reader (1.3) compensates every dimension whose channel the sample's matrix
    covers, whether the workspace names it ``Comp-CHANNEL`` or not (FlowKit issue #265), so a
    gate FlowJo evaluates on raw values (our margin gate) would be read as a gate on
    compensated ones. Those rectangle dimensions are set back to uncompensated, untransformed
    channel units with the limits the workspace gives; everything else is flowkit's reading.
    """
    import warnings

    import flowkit as fk

    path = Path(path)
    raw_gates = _gates_on_raw_fluorescence(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # flowkit warns about files it cannot find
        workspace = fk.Workspace(str(path), find_fcs_files_from_wsp=True)
    for sample_name in workspace.get_sample_ids():
        strategy = workspace.get_gating_strategy(sample_name)
        for (gate_name, parents), raw in raw_gates.get(sample_name, {}).items():
            gate = strategy.get_gate(gate_name, parents)
            for dim in gate.dimensions:
                if dim.id in raw:
                    dim.compensation_ref = "uncompensated"
                    dim.transformation_ref = None
                    dim.min, dim.max = raw[dim.id]
        yield sample_name, strategy, workspace.get_sample(sample_name)


def read_workspace_counts(path: str | Path) -> dict[str, dict[tuple[str, tuple], int]]:
    """Sample name -> (gate name, parent path) -> events, as flowkit analyses the workspace
    (``read_workspace``) with the FCS files its DataSet URIs point to."""
    counts: dict[str, dict[tuple[str, tuple], int]] = {}
    for sample_name, strategy, sample in read_workspace(path):
        result = strategy.gate_sample(sample)
        counts[sample_name] = {
            (name, parents): int(result.get_gate_count(name, gate_path=parents))
            for name, parents in strategy.get_gate_ids()
        }
    return counts
