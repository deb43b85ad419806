"""Redrawing a placed gate in review (issue 26, item 3): the lymphocyte ellipse (centre,
semi-axes, angle) and a placed polygon (vertices), per sample, as an audited, signed override
like a threshold's; kept by the nightly pass, undone by undo, carried by the exports; and the
shapes a person (or a forged request) must not be able to give."""

from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pytest

from cohort.audit import AuditError, AuditLog
from cohort.review import drawn_gate, overrides_in_force, review_states
from cohort.store import Store
from gating.gates import EllipseGate, PolygonGate
from gating.strategy import StrategyError, load_strategy
from tests.conftest import processed_demo_samples

BASE = "http://127.0.0.1:8765"
SAMPLE = "P01_BL_BCELL"
TREG = "P01_BL_TREG"


# plain functions -------------------------------------------------------------------------
def test_an_ellipse_from_its_axes_has_those_axes_and_that_boundary():
    gate = EllipseGate.from_axes(("FSC-A", "SSC-A"), (0.3, 0.2), (0.12, 0.05), 30.0, 13.82)
    centre, axes, angle = gate.axes()
    assert centre == (0.3, 0.2)
    assert axes == pytest.approx((0.12, 0.05)) and angle == pytest.approx(30.0)
    # Points just inside and just outside the ends of each axis, by the gate's own test.
    t = math.radians(30.0)
    major, minor = np.array([math.cos(t), math.sin(t)]), np.array([-math.sin(t), math.cos(t)])
    points = np.array(
        [
            centre + 0.99 * 0.12 * major,
            centre + 1.01 * 0.12 * major,
            centre - 0.99 * 0.05 * minor,
            centre - 1.01 * 0.05 * minor,
        ]
    )
    precision = np.linalg.inv(np.asarray(gate.covariance))
    q = np.einsum("ij,jk,ik->i", points - centre, precision, points - centre)
    assert list(q <= gate.distance_square) == [True, False, True, False]
    # An angle outside (-90, 90] names the same ellipse.
    again = EllipseGate.from_axes(("FSC-A", "SSC-A"), (0.3, 0.2), (0.12, 0.05), 210.0, 13.82)
    assert np.allclose(again.covariance, gate.covariance)


def test_a_strategy_takes_a_drawn_gate_by_name_and_refuses_what_it_cannot_use():
    bcell = load_strategy("bcell")
    # Rectangles move by their thresholds; the transitional tip (bcell v4) is a placed polygon.
    assert set(bcell.drawable()) == {"lymphocytes", "transitional_tip"}
    treg = load_strategy("treg")
    assert {"lymphocytes", "treg"} <= set(treg.drawable())
    dims = bcell.drawable()["lymphocytes"]
    ellipse = EllipseGate.from_axes(dims, (0.3, 0.2), (0.1, 0.05), 10.0, 13.82)
    drawn = bcell.with_overrides({"lymphocytes": ellipse})
    assert drawn.sha256 != bcell.sha256 and drawn.base_sha256 == bcell.sha256
    moved = EllipseGate.from_axes(dims, (0.31, 0.2), (0.1, 0.05), 10.0, 13.82)
    assert bcell.with_overrides({"lymphocytes": moved}).sha256 != drawn.sha256
    # Identity does not depend on the order the overrides come in.
    both = {"lymphocytes": ellipse, "t_cd19": 0.6}
    assert (
        bcell.with_overrides(both).sha256
        == bcell.with_overrides(dict(reversed(both.items()))).sha256
    )
    with pytest.raises(StrategyError, match="not thresholds or drawable gates"):
        bcell.with_overrides({"lymphocytez": ellipse})  # a forged name
    with pytest.raises(StrategyError, match="not thresholds or drawable gates"):
        bcell.with_overrides({"cd19_b": ellipse})  # a rectangle: moved by its thresholds
    wrong_dims = EllipseGate.from_axes(("SSC-A", "FSC-A"), (0.3, 0.2), (0.1, 0.05), 0.0)
    with pytest.raises(StrategyError, match="drawn on SSC-A x FSC-A"):
        bcell.with_overrides({"lymphocytes": wrong_dims})
    with pytest.raises(StrategyError, match="finite number"):
        bcell.with_overrides({"t_cd19": float("nan")})


@pytest.mark.parametrize(
    ("geometry", "says"),
    [
        ({"centre": [0.3, 0.2], "axes": [0.1, 0.0], "angle": 0}, "flat"),
        ({"centre": [0.3, float("nan")], "axes": [0.1, 0.05], "angle": 0}, "finite"),
        ({"centre": [0.3, 0.2], "axes": [0.1, 0.05], "angle": float("inf")}, "finite"),
        ({"centre": [40.0, 0.2], "axes": [0.1, 0.05], "angle": 0}, "centre must lie"),
        ({"centre": [0.3, 0.2], "axes": [9.0, 0.05], "angle": 0}, "larger than the plot"),
        ({"centre": [0.3, 0.2], "axes": ["a", 0.05], "angle": 0}, "give its centre"),
        ({"vertices": [[0.1, 0.1], [0.2, 0.2]]}, "give its centre"),  # not an ellipse's keys
    ],
)
def test_a_degenerate_or_forged_ellipse_is_one_clear_refusal(geometry, says):
    placed = EllipseGate.from_axes(("FSC-A", "SSC-A"), (0.3, 0.2), (0.1, 0.05), 0.0, 13.82)
    with pytest.raises(AuditError, match=says) as caught:
        drawn_gate(placed, geometry)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("vertices", "says"),
    [
        ([[0.1, 0.1], [0.2, 0.2]], "3 to 200 vertices"),
        ([[0.1, 0.1], [0.2, 0.2], [0.3, 0.3]], "no area"),  # in line
        ([[0.1, 0.1], [0.2, 1e9], [0.3, 0.1]], "within"),
        ([[0.1, 0.1], [0.2, float("nan")], [0.3, 0.1]], "within"),
        ([[0.1 + 1e-5 * k, 0.1 + 0.3 * (k % 2)] for k in range(100_000)], "at most 200"),
    ],
)
def test_a_degenerate_or_huge_polygon_is_one_clear_refusal(vertices, says):
    placed = PolygonGate(("CD127", "CD25"), ((0.1, 0.5), (0.3, 0.5), (0.3, 0.9), (0.1, 0.9)))
    with pytest.raises(AuditError, match=says):
        drawn_gate(placed, {"vertices": vertices})


# one study, through the review application ------------------------------------------------
@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    """A B-cell and a Treg sample of one patient, processed as a pass would."""
    return processed_demo_samples(tmp_path_factory.mktemp("drawn") / "study", 3000, (SAMPLE, TREG))


@pytest.fixture()
def study(processed, tmp_path):
    root = tmp_path / "study"
    shutil.copytree(processed, root)
    return root


def _client(study):
    from fastapi.testclient import TestClient

    from flows.review import create_app

    client = TestClient(create_app(study), base_url=BASE)
    page = client.get("/whoami")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)[1]
    client.post("/whoami", data={"name": "ana", "csrf": token})
    token = re.search(r'name="csrf" value="([^"]+)"', client.get("/signoff").text)[1]
    return client, token


def _current(study, sample_id=SAMPLE):
    store = Store(study / "immunomon.db")
    try:
        sample = store.current_sample(sample_id)
        gates = {g.name: g for g in store.applied_gates(sample["sample_key"])}
        pops = store.current_populations()
        pops = pops[pops.sample_key == sample["sample_key"]]
        counts = dict(zip(pops.population, pops["count"], strict=True))
        return sample, gates, counts, AuditLog(store.conn).entries()
    finally:
        store.close()


def test_the_lymphocyte_ellipse_redrawn_in_review_regates_is_audited_and_kept(study):
    from cohort.study import Study

    client, token = _client(study)
    scatter = client.get(f"/scatter/{SAMPLE}/lymphocytes.json").json()
    assert scatter["kind"] == "ellipse" and scatter["dimensions"] == ["FSC-A", "SSC-A"]
    assert len(scatter["x"]) == scatter["parent_count"]  # 3000 events: all of them sent
    _, gates, counts, _ = _current(study)
    assert scatter["count"] == counts["lymphocytes"]
    (cx, cy), (major, minor), angle = gates["lymphocytes"].gate.axes()
    assert scatter["geometry"]["centre"] == pytest.approx([cx, cy])
    # Half the ellipse: a smaller region keeps fewer lymphocytes, and every population under it.
    geometry = {"centre": [cx, cy], "axes": [major / 2, minor / 2], "angle": angle}
    response = client.post(
        f"/sample/{SAMPLE}/redraw",
        data={
            "gate": "lymphocytes",
            "geometry": json.dumps(geometry),
            "reason": "debris inside the ellipse",
            "csrf": token,
        },
    )
    assert response.status_code == 200
    page = response.text
    assert "lymphocytes redrawn" in page and 'id="change"' in page
    sample, after_gates, after, trail = _current(study)
    drawn = after_gates["lymphocytes"]
    assert drawn.note == "drawn by hand in review" and drawn.gate.axes()[1] == pytest.approx(
        (major / 2, minor / 2)
    )
    assert after["lymphocytes"] < counts["lymphocytes"] and after["cd19_b"] <= counts["cd19_b"]
    # The count is the gate's own test on the events (nothing else moved the result).
    assert ">manual<" in page
    entry = trail[-1]
    assert (entry.action, entry.who, entry.reason) == (
        "override",
        "ana",
        "debris inside the ellipse",
    )
    assert entry.detail["gate"] == "lymphocytes" and entry.detail["kind"] == "ellipse"
    assert entry.detail["counts_before"]["lymphocytes"] == counts["lymphocytes"]
    assert entry.detail["counts_after"]["lymphocytes"] == after["lymphocytes"]
    assert entry.detail["old"]["parameters"]["mean"] == pytest.approx([cx, cy])
    assert "lymphocytes ellipse at" in page  # the trail says what changed
    state = review_states(trail)[SAMPLE]
    assert state.status == "overridden" and isinstance(
        state.overrides["lymphocytes"].value, EllipseGate
    )
    # The nightly pass keeps it: its identity for this sample is the stored result's.
    strategies = Study(study).strategies
    in_force = overrides_in_force(trail, {t: s.sha256 for t, s in strategies.items()})
    assert set(in_force[SAMPLE]) == {"lymphocytes"}
    assert strategies["BCELL"].with_overrides(in_force[SAMPLE]).sha256 == sample["strategy_sha256"]
    # Undo re-gates with the placed ellipse: the counts come back.
    response = client.post(f"/sample/{SAMPLE}/undo", data={"reason": "wrong sample", "csrf": token})
    assert response.status_code == 200
    _, undone_gates, undone, trail = _current(study)
    assert undone == counts and undone_gates["lymphocytes"].note != "drawn by hand in review"
    assert trail[-1].action == "undo" and SAMPLE not in overrides_in_force(
        trail, {t: s.sha256 for t, s in strategies.items()}
    )


def test_a_placed_polygon_redrawn_moves_its_vertices(study):
    client, token = _client(study)
    scatter = client.get(f"/scatter/{TREG}/treg.json").json()
    assert scatter["kind"] == "polygon"
    vertices = [[x + 0.02, y] for x, y in scatter["geometry"]["vertices"]]
    response = client.post(
        f"/sample/{TREG}/redraw",
        data={
            "gate": "treg",
            "geometry": json.dumps({"vertices": vertices}),
            "reason": "arm starts further right",
            "csrf": token,
        },
    )
    assert response.status_code == 200 and "treg redrawn" in response.text
    _, gates, _, trail = _current(study, TREG)
    assert np.allclose(gates["treg"].gate.vertices, vertices)
    assert trail[-1].detail["gate"] == "treg" and trail[-1].detail["kind"] == "polygon"


def test_the_transitional_tip_is_redrawn_over_the_cd27neg_b_cells_it_was_placed_on(study):
    """The review canvas shows the tip over the CD27- B cells whose cloud it is the tip of
    (as the QC page does), not over all CD19+ B cells, and counts it there: the count is the
    transitional B count the report gives."""
    client, _ = _client(study)
    scatter = client.get(f"/scatter/{SAMPLE}/transitional_tip.json").json()
    _, _, counts, _ = _current(study)
    assert scatter["kind"] == "polygon" and scatter["parent"] == "cd27neg_b"
    assert scatter["count"] == counts["transitional_b"]
    cd27pos = counts["memory_b"] + counts["plasmablasts"]
    assert scatter["parent_count"] == counts["cd19_b"] - cd27pos  # no CD27+ cell among them


@pytest.mark.parametrize(
    ("gate", "geometry", "says"),
    [
        ("cd19_b", {"centre": [0.3, 0.2], "axes": [0.1, 0.05], "angle": 0}, "that can be drawn"),
        ("../../etc", {"centre": [0.3, 0.2], "axes": [0.1, 0.05], "angle": 0}, "that can be"),
        ("lymphocytes", {"centre": [0.3, 0.2], "axes": [0.0, 0.05], "angle": 0}, "flat"),
        ("lymphocytes", "NaN", "must be an object"),
        ("lymphocytes", "{not json", "is not JSON"),
    ],
)
def test_a_bad_drawing_is_refused_on_the_page_and_changes_nothing(study, gate, geometry, says):
    client, token = _client(study)
    _, gates, counts, trail = _current(study)
    text = geometry if isinstance(geometry, str) else json.dumps(geometry)
    response = client.post(
        f"/sample/{SAMPLE}/redraw",
        data={"gate": gate, "geometry": text, "reason": "try", "csrf": token},
    )
    assert response.status_code == 200 and says in response.text
    assert "Traceback" not in response.text
    assert _current(study)[2:] == (counts, trail)


def test_the_exports_carry_the_drawn_ellipse(study):
    """GatingML and the FlowJo workspace hold the drawn geometry, and flowkit's counts of both
    agree with ours (``check_export``)."""
    import flowkit as fk

    from cohort.study import Study
    from flows.gates_export import check_export, export_study_gates

    client, token = _client(study)
    geometry = {"centre": [0.32, 0.22], "axes": [0.15, 0.06], "angle": 20.0}
    client.post(
        f"/sample/{SAMPLE}/redraw",
        data={
            "gate": "lymphocytes",
            "geometry": json.dumps(geometry),
            "reason": "tighter",
            "csrf": token,
        },
    )
    store = Store(study / "immunomon.db")
    try:
        for fmt in ("gatingml", "wsp"):
            export = export_study_gates(Study(study), store, fmt, sample_ids=[SAMPLE])
            checks = check_export(export, fmt)
            assert checks and all(c.agrees for c in checks), [c for c in checks if not c.agrees]
            keywords = export.samples[0].keywords
            assert keywords["OVERRIDDEN GATES"].startswith("lymphocytes=ellipse at (0.320, 0.220)")
        strategy = fk.parse_gating_xml(
            str(
                export_study_gates(Study(study), store, "gatingml", sample_ids=[SAMPLE]).files[
                    SAMPLE
                ]
            )
        )
    finally:
        store.close()
    gate = next(
        strategy.get_gate(name, path)
        for name, path in strategy.get_gate_ids()
        if name == "lymphocytes"
    )
    assert list(gate.coordinates) == pytest.approx(geometry["centre"])
    back = EllipseGate(
        ("FSC-A", "SSC-A"),
        tuple(gate.coordinates),
        tuple(tuple(r) for r in gate.covariance_matrix),
        gate.distance_square,
    )
    assert back.axes()[1] == pytest.approx(geometry["axes"]) and back.axes()[2] == pytest.approx(20)


def test_redrawing_after_an_approval_must_be_signed_and_says_what_it_supersedes(study):
    from cohort.review import SignatureNeeded
    from flows.review import ReviewServer

    server = ReviewServer(study, accounts=True)
    server.decide([SAMPLE], "approve", "bo", "gates look right")
    _, gates, counts, trail = _current(study)
    (cx, cy), (major, minor), angle = gates["lymphocytes"].gate.axes()
    drawn = {"centre": [cx, cy], "axes": [major * 0.8, minor], "angle": angle}
    with pytest.raises(SignatureNeeded, match="sign it with your password"):
        server.redraw(SAMPLE, "lymphocytes", drawn, "ana", "tighter", signed=False)
    assert _current(study)[2:] == (counts, trail)  # nothing re-gated, nothing recorded
    server.redraw(SAMPLE, "lymphocytes", drawn, "ana", "tighter", signed=True)
    entry = _current(study)[3][-1]
    assert entry.detail["supersedes"] == {"seq": trail[-1].seq, "action": "approve", "who": "bo"}
    assert review_states(_current(study)[3])[SAMPLE].status == "overridden"
    with pytest.raises(AuditError, match="reason"):
        server.redraw(SAMPLE, "lymphocytes", drawn, "ana", "  ", signed=True)


def test_the_patient_pages_compact_plots_draw_the_polygon_populations(processed):
    """The patient page compares visits by their compact plots: the Treg arm and the
    transitional tip (polygons) must be among them, the acquisition checks not."""
    from cohort.study import Study
    from reports.outputs import replay_current
    from reports.review_plots import gate_grid_png, shown_gates

    study = Study(processed)
    store = Store(study.db_path)
    try:
        for sample_id, polygon in ((TREG, "treg"), (SAMPLE, "transitional_tip")):
            gates = replay_current(study, store, sample_id)[1]
            compact = [g.name for g in shown_gates(gates, compact=True)]
            assert polygon in compact, compact
            assert not {"in_range", "stable_flow", "singlets"} & set(compact), compact
            assert "qc_passed" in compact and "lymphocytes" in compact
            assert len(shown_gates(gates, compact=False)) == len(compact) + 2  # time, doublets
        assert gate_grid_png(study, store, TREG, compact=True).startswith(b"\x89PNG")
    finally:
        store.close()
