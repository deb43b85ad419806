"""The study's gates as a FlowJo 10 workspace and as GatingML, read back with flowkit.

A small demo study (2 patients x 2 visits x 2 panels, 3000 events a file) is processed once;
one threshold is set by hand and one sample excluded in review. flowkit's ``Workspace`` reads
the exported .wsp with the FCS files and must give our count for every gate of every sample.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from lxml import etree

from flows.cli import main
from tests.conftest import processed_demo_samples

KEEP = ("P01_BL_", "P01_M9_", "P13_BL_", "P13_M9_")  # P13_M9_BCELL: thresholds at defaults


@pytest.fixture(scope="module")
def small_study(tmp_path_factory):
    """Processed as a pass stores samples (flows.sample_work, cohort.store), without the flow's
    statistics and report, which this export does not read."""
    from flows.review import ReviewServer

    root = processed_demo_samples(tmp_path_factory.mktemp("wsp") / "study", 3000, KEEP)
    with open(root / "study.yaml", "a") as fh:  # later passes draw no PDFs (none drawn here)
        fh.write("qc_reports: none\n")
    server = ReviewServer(root, accounts=False)
    server.adjust("P01_M9_BCELL", "t_cd27", 0.55, "ana", "memory tail cut too low")
    server.decide(["P13_M9_TREG"], "exclude", "ana", "clogged acquisition")
    server.store.close()
    inbox = {p.name: p.read_bytes() for p in (root / "inbox").iterdir()}
    return root, inbox


def _export(root: Path, *args: str) -> int:
    return main(["gates", "export", "--study", str(root), *args])


def _current_samples(root):
    from cohort.store import Store
    from cohort.study import Study
    from flows.gates_export import current_workspace_samples

    study = Study(root)
    store = Store(study.db_path)
    try:
        return current_workspace_samples(study, store)[0]
    finally:
        store.close()


def test_workspace_reads_back_in_flowkit_with_our_count_for_every_gate(small_study, tmp_path):
    from cohort.store import Store
    from gating.wsp_export import read_workspace_counts

    root, inbox = small_study
    out = tmp_path / "lab" / "study.wsp"
    assert _export(root, "--format", "wsp", "--out", str(out)) == 0
    samples = _current_samples(root)
    assert len(samples) == 8
    read = read_workspace_counts(out)
    assert sorted(read) == sorted(s.fcs_path.name for s in samples)
    compared = exact = 0
    for sample in samples:
        theirs = {name: n for (name, _), n in read[sample.fcs_path.name].items()}
        for gate in sample.gates:
            if not gate.gate.selects_events:
                continue
            ours = sample.counts[gate.name]
            # Exact everywhere; under the lymphocyte ellipse, which flowkit (as FlowJo) turns
            # into a 128-vertex polygon, within 0.1% of the ellipse's events.
            allowed = max(1, int(np.ceil(0.001 * sample.counts["lymphocytes"])))
            below_ellipse = gate.name not in ("in_range", "stable_flow", "singlets", "qc_passed")
            assert abs(theirs[gate.name] - ours) <= (allowed if below_ellipse else 0), (
                sample.sample_id,
                gate.name,
            )
            compared += 1
            exact += theirs[gate.name] == ours
    assert compared >= 8 * 11 and exact >= 0.95 * compared
    # Our counts are the store's: the replayed gates give every reported population's count.
    store = Store(root / "immunomon.db")
    pops = store.current_populations()
    store.close()
    by_id = {s.sample_id: s for s in samples}
    for row in pops.itertuples():
        assert by_id[row.sample_id].counts[row.population] == row.count
    assert {p.name: p.read_bytes() for p in (root / "inbox").iterdir()} == inbox


def test_workspace_is_flowjo_xml_naming_every_sample_with_groups_and_review_keywords(
    small_study, tmp_path
):
    import flowkit as fk

    root, _ = small_study
    out = tmp_path / "study.wsp"
    assert _export(root, "--format", "wsp", "--out", str(out)) == 0
    doc = etree.parse(str(out)).getroot()  # well-formed XML, or this raises
    assert doc.tag == "Workspace" and doc.get("flowJoVersion").startswith("10")
    names = sorted(n.get("name") for n in doc.iter("SampleNode"))
    assert names == sorted(p.name for p in (root / "inbox").iterdir())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        workspace = fk.Workspace(str(out), find_fcs_files_from_wsp=True)
    groups = workspace.get_sample_groups()
    for group in ("All Samples", "Panel BCELL", "Panel TREG", "Visit BL", "Visit M9"):
        assert group in groups
    assert sorted(workspace.get_sample_ids("Visit M9")) == sorted(n for n in names if "_M9_" in n)
    assert sorted(workspace.get_sample_ids("Panel TREG")) == sorted(n for n in names if "TREG" in n)
    assert workspace.get_sample_ids("Review excluded") == ["P13_M9_TREG.fcs"]
    adjusted = workspace.get_keywords("P01_M9_BCELL.fcs")
    assert adjusted["IMMUNOMON REVIEW STATUS"] == "overridden"
    assert adjusted["IMMUNOMON OVERRIDDEN GATES"].startswith("t_cd27=0.55 by ana")
    excluded = workspace.get_keywords("P13_M9_TREG.fcs")
    assert excluded["IMMUNOMON REVIEW STATUS"] == "excluded"
    assert excluded["IMMUNOMON REVIEW REASON"] == "clogged acquisition"
    # The hand-set threshold is the gate FlowJo gets: its limit is 0.55 on the logicle scale.
    strategy = workspace.get_gating_strategy("P01_M9_BCELL.fcs")
    (name, path) = next(g for g in strategy.get_gate_ids() if g[0] == "cd27pos_b")
    assert strategy.get_gate(name, path).dimensions[0].min == pytest.approx(0.55, abs=1e-12)
    # Each sample carries its own file's matrix, as FlowJo's acquisition-defined one.
    matrix = workspace.get_comp_matrix("P01_BL_TREG.fcs")
    assert matrix is not None and len(matrix.detectors) == 7
    # Each population shows our count, and how its gate was placed as its annotation.
    sample = next(s for s in _current_samples(root) if s.sample_id == "P01_M9_BCELL")
    node = next(n for n in doc.iter("SampleNode") if n.get("name") == "P01_M9_BCELL.fcs")
    shown = {p.get("name"): p for p in node.iter("Population")}
    for gate in sample.gates:
        if gate.gate.selects_events and gate.kind != "boolean":
            assert int(shown[gate.name].get("count")) == sample.counts[gate.name], gate.name
            assert shown[gate.name].get("annotation").startswith(gate.note), gate.name
    assert int(node.find(".//AndNode[@name='memory_b']").get("count")) == sample.counts["memory_b"]
    # The hand-set threshold is named, with how it was set, on the gates that use it.
    for name in ("cd27neg_b", "cd27pos_b", "cd27neg_igdpos_b"):
        assert "t_cd27 = 0.550 (manual: set by hand" in shown[name].get("annotation"), name
    assert "t_cd27" not in shown["cd19_b"].get("annotation")


def test_exported_ellipse_reads_back_on_our_ellipse(small_study, tmp_path):
    """FlowJo stores an ellipse as foci and edge points; flowkit's polygon of it must lie on our
    ellipse: every vertex at our Mahalanobis distance."""
    from gating.wsp_export import read_workspace, write_workspace

    root, _ = small_study
    sample = next(s for s in _current_samples(root) if s.sample_id == "P01_BL_BCELL")
    out = write_workspace(tmp_path / "one.wsp", [sample], {})
    [(_, strategy, _)] = list(read_workspace(out))
    (name, path) = next(g for g in strategy.get_gate_ids() if g[0] == "lymphocytes")
    polygon = np.asarray(strategy.get_gate(name, path).vertices, float)
    ellipse = next(g.gate for g in sample.gates if g.name == "lymphocytes")
    offsets = polygon - np.asarray(ellipse.mean)
    q = np.einsum("ij,jk,ik->i", offsets, np.linalg.inv(ellipse.covariance), offsets)
    np.testing.assert_allclose(q, ellipse.distance_square, rtol=1e-6)
    assert len(polygon) == 128


def test_flowkit_alone_misreads_the_margin_gate_so_the_reader_restores_raw_values(
    small_study, tmp_path
):
    """flowkit compensates a FlowJo gate on a bare channel name (FlowKit #265); the margin gate
    is on raw values, and our reader sets it back. Without that, counts move."""
    import flowkit as fk

    from gating.wsp_export import read_workspace

    root, _ = small_study
    out = tmp_path / "study.wsp"
    assert _export(root, "--format", "wsp", "--out", str(out)) == 0
    name = "P01_BL_BCELL.fcs"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = fk.Workspace(str(out), find_fcs_files_from_wsp=True)
    raw_margin = plain.get_gating_strategy(name).get_gate("in_range", ("root",))
    fluorescence = [d for d in raw_margin.dimensions if not d.id.startswith(("FSC", "SSC"))]
    assert fluorescence and all(d.compensation_ref != "uncompensated" for d in fluorescence)
    restored = next(s for n, s, _ in read_workspace(out) if n == name)
    margin = restored.get_gate("in_range", ("root",))
    back = [d for d in margin.dimensions if not d.id.startswith(("FSC", "SSC"))]
    assert [d.id for d in back] == [d.id for d in fluorescence]
    assert all(d.compensation_ref == "uncompensated" and d.transformation_ref is None for d in back)
    assert {d.max for d in back} == {262143.0}


def test_study_gatingml_folder_one_file_per_sample_reproduces_every_count(small_study, tmp_path):
    from gating.export import gatingml_counts

    root, _ = small_study
    out = tmp_path / "gml"
    assert _export(root, "--format", "gatingml", "--out", str(out)) == 0
    samples = _current_samples(root)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s.sample_id}.xml" for s in samples)
    for sample in samples:
        theirs = {
            n: c
            for (n, _), c in gatingml_counts(
                out / f"{sample.sample_id}.xml", sample.fcs_path
            ).items()
        }
        for gate in sample.gates:
            if gate.gate.selects_events:
                assert theirs[gate.name] == sample.counts[gate.name], (sample.sample_id, gate.name)


def test_check_option_reports_every_count_and_exits_0(small_study, tmp_path, capsys):
    root, _ = small_study
    assert _export(root, "--format", "wsp", "--out", str(tmp_path / "s.wsp"), "--check") == 0
    out = capsys.readouterr().out
    assert "FlowJo 10 workspace with 8 samples" in out
    assert "0 different" in out


def test_check_option_fails_when_the_workspace_no_longer_matches(small_study, tmp_path, capsys):
    """--check compares against the file written: a workspace edited afterwards fails it."""
    from flows.gates_export import check_export
    from gating.wsp_export import write_workspace

    root, _ = small_study
    samples = [s for s in _current_samples(root) if s.sample_id == "P01_BL_TREG"]
    path = write_workspace(tmp_path / "edited.wsp", samples, {})
    text = path.read_text()
    cd4 = text.index('name="cd4_t"')
    minimum = text.index('gating:min="', cd4) + len('gating:min="')
    end = text.index('"', minimum)
    path.write_text(text[:minimum] + str(float(text[minimum:end]) * 3) + text[end:])
    from flows.gates_export import StudyExport

    checks = check_export(StudyExport(path, samples, {"P01_BL_TREG": path}), "wsp")
    wrong = {c.gate for c in checks if not c.agrees}
    assert "cd4_t" in wrong and "lymphocytes" not in wrong


def test_single_sample_gatingml_keeps_its_one_file(small_study, tmp_path, capsys):
    root, _ = small_study
    assert _export(root, "--sample", "P01_BL_TREG") == 0
    assert (root / "results" / "gates" / "P01_BL_TREG.xml").is_file()
    out = tmp_path / "one.xml"
    assert _export(root, "--sample", "P01_BL_TREG", "--out", str(out)) == 0
    assert "gating:Gating-ML" in out.read_text()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--sample", "P99_BL_BCELL"], "no processed sample P99_BL_BCELL"),
        (["--format", "gatingml", "--out", "FILE.xml"], "is one file but 8 samples"),
        (["--format", "wsp", "--out", "DIR"], "is a folder"),
    ],
)
def test_bad_export_requests_are_one_line_and_exit_2(small_study, tmp_path, capsys, args, says):
    root, _ = small_study
    (tmp_path / "DIR").mkdir()
    args = [str(tmp_path / a) if a in ("FILE.xml", "DIR") else a for a in args]
    assert _export(root, *args) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1


def test_a_replaced_inbox_file_is_left_out_with_the_reason(small_study, tmp_path, capsys):
    import shutil

    root, _ = small_study
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    target = copy / "inbox" / "P13_BL_TREG.fcs"
    target.write_bytes(target.read_bytes()[:-8] + b"\0" * 8)  # re-acquired, not processed yet
    out = tmp_path / "s.wsp"
    assert _export(copy, "--format", "wsp", "--out", str(out)) == 0
    err = capsys.readouterr().err
    assert "left out P13_BL_TREG" in err and "run a pass" in err
    names = [n.get("name") for n in etree.parse(str(out)).getroot().iter("SampleNode")]
    assert "P13_BL_TREG.fcs" not in names and len(names) == 7


def _gated_sample(path, panel_token, name):
    from gating.pipeline import gate_sample
    from gating.strategy import load_strategy
    from gating.wsp_export import WorkspaceSample
    from panels.fcs import read_events
    from panels.resolve import load_panel, resolve_panel

    data = read_events(path)
    resolved = resolve_panel(load_panel(name), data.header)
    gating = gate_sample(data, resolved, load_strategy(name))
    counts = {k: int(v.sum()) for k, v in gating.masks.items()}
    return WorkspaceSample(path.stem, path, data.header, resolved, gating.gates, counts)


def _assert_read_back(sample, wsp):
    from flows.gates_export import StudyExport, check_export

    checks = check_export(StudyExport(wsp, [sample], {sample.sample_id: wsp}), "wsp")
    assert len(checks) >= 10  # every gate of the tree (treg v5 has 10, bcell 11)
    assert all(c.agrees for c in checks), [c for c in checks if not c.agrees]


def test_clogged_file_time_ranges_become_rectangles_joined_by_an_or_node(tmp_path):
    from gating.wsp_export import write_workspace
    from simulate.demo import population_frequencies, simulate_sample
    from simulate.fcs_writer import write_fcs

    rng = np.random.default_rng(8)
    shares = population_frequencies("BCELL", "adult", "BL", rng, rng)
    events, pnn, _, spill = simulate_sample("BCELL", shares, 30000, rng, clog=True)
    spill_text = ",".join(["7", *pnn[3:10], *(f"{v:.6g}" for v in spill.ravel())])
    pns = ["", "", "", "IgD", "CD24", "CD27", "CD19", "CD38", "CD45", "IgM", ""]
    path = write_fcs(tmp_path / "P01_BL_BCELL.fcs", events, pnn, pns, {"$SPILLOVER": spill_text})
    sample = _gated_sample(path, "BCELL", "bcell")
    wsp = write_workspace(tmp_path / "clog.wsp", [sample], {})
    node = etree.parse(str(wsp)).getroot().find(".//OrNode[@name='stable_flow']")
    assert node is not None and len(node.find("Dependents")) >= 2
    _assert_read_back(sample, wsp)


def test_file_without_spillover_exports_uncompensated_parameters(tmp_path):
    from gating.wsp_export import write_workspace
    from tests.conftest import write_simulated

    source, _ = write_simulated(tmp_path / "with.fcs", "TREG", n_events=8000, seed=5)
    from panels.fcs import read_events
    from simulate.fcs_writer import write_fcs

    data = read_events(source)
    path = write_fcs(
        tmp_path / "P02_BL_TREG.fcs", data.events, data.header.pnn, data.header.pns, {}
    )
    sample = _gated_sample(path, "TREG", "treg")
    wsp = write_workspace(tmp_path / "plain.wsp", [sample], {})
    text = wsp.read_text()
    assert "spilloverMatrix" not in text and 'data-type:name="Comp-' not in text
    _assert_read_back(sample, wsp)


def test_a_gate_without_flowjo_form_is_one_error_naming_sample_and_gate(tmp_path):
    from dataclasses import replace

    from gating.gates import EllipseGate
    from gating.wsp_export import FlowJoFormError, write_workspace
    from panels.errors import ImmunomonError
    from tests.conftest import write_simulated

    path, _ = write_simulated(tmp_path / "P03_BL_TREG.fcs", "TREG", n_events=5000, seed=9)
    sample = _gated_sample(path, "TREG", "treg")
    three_d = EllipseGate(("FSC-A", "SSC-A", "CD3"), (0.2, 0.05, 0.5), tuple(np.eye(3) * 0.01), 9.0)
    gates = [replace(g, gate=three_d) if g.name == "lymphocytes" else g for g in sample.gates]
    with pytest.raises(FlowJoFormError, match="P03_BL_TREG: gate lymphocytes") as raised:
        write_workspace(tmp_path / "x.wsp", [replace(sample, gates=gates)], {})
    assert isinstance(raised.value, ImmunomonError) and "--format gatingml" in str(raised.value)


def test_marker_polygon_and_limitless_range_read_back_equal(tmp_path):
    """Gate forms other strategies use: a polygon on two logicle markers (stored in channel
    units, drawn in logicle) and a range that every event passes (a step not run)."""
    from dataclasses import replace

    from gating.gates import PolygonGate, RawRangeGate
    from gating.pipeline import replay_gates
    from gating.records import AppliedGate
    from gating.wsp_export import write_workspace
    from panels.fcs import read_events
    from tests.conftest import write_simulated

    path, _ = write_simulated(tmp_path / "P04_BL_TREG.fcs", "TREG", n_events=12000, seed=12)
    sample = _gated_sample(path, "TREG", "treg")
    channel = sample.resolved.marker_channels["CD3"]
    arm = PolygonGate(("CD127", "CD25"), ((0.1, 0.5), (0.55, 0.45), (0.6, 0.95), (0.05, 0.9)))
    gates = [
        replace(g, gate=RawRangeGate({}, (channel,))) if g.name == "singlets" else g
        for g in sample.gates
    ] + [AppliedGate("cd25_arm", "cd4_t", arm, True, "test polygon")]
    masks = replay_gates(read_events(path), sample.resolved, gates)
    counts = {k: int(v.sum()) for k, v in masks.items()}
    assert 0 < counts["cd25_arm"] < counts["cd4_t"]
    edited = replace(sample, gates=gates, counts=counts)
    wsp = write_workspace(tmp_path / "forms.wsp", [edited], {})
    _assert_read_back(edited, wsp)
