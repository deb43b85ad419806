"""A sample's flags and drift items in words, named from the strategy it was gated with.

A result gated under an older strategy version keeps that version's threshold markers and
population titles until the next pass re-gates it, and its QC page and review plots replay
its gates with that version's placement (``within``); the review pages print drift items in
words (``reports.names``) as they print the other flags."""

from __future__ import annotations

import html
import json
import re
import shutil
import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from cohort.store import Store
from cohort.study import Study
from reports.names import Names, drift_subject
from tests.conftest import gate_and_record, processed_demo_samples

DRIFTING = ("P01_BL_BCELL", "P01_M1_BCELL", "P01_M3_BCELL", "P01_M6_BCELL")
OLD = "P02_BL_BCELL"  # gated under bcell v3 (t_cd38, "Antibody-secreting cells")
CURRENT = "P01_BL_BCELL"


def _older_bcell(folder: Path) -> Path:
    """bcell as it was before: version 3, its plasmablast threshold named t_cd38 and the
    plasmablasts titled otherwise, neither of which exists in the current strategy, and its
    transitional tip placed on its parent's cloud (all CD19+ B cells), not the CD27- B's."""
    text = (Path(__file__).parents[1] / "gating" / "strategies" / "bcell.yaml").read_text()
    text = re.sub(r"^version: \d+", "version: 3", text, flags=re.M)
    assert "    within: cd27neg_b " in text
    text = re.sub(r"^    within: cd27neg_b .*\n", "", text, flags=re.M)
    text = text.replace("t_cd38_plasmablast", "t_cd38")
    text = text.replace("Plasmablasts (CD27+ CD38hi)", "Antibody-secreting cells (CD27+ CD38++)")
    path = folder / "bcell_v3.yaml"
    path.write_text(text)
    return path


def _gate_with(root: Path, sample_id: str, strategy) -> None:
    """Process one inbox file with ``strategy`` and store it as its current result."""
    study = Study(root)
    store = Store(study.db_path)
    try:
        gate_and_record(
            store, study, root / "inbox" / f"{sample_id}.fcs", strategy, "older strategy"
        )
    finally:
        store.close()


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    """Four visits of P01 under the current bcell strategy, P02_BL under bcell v3."""
    from gating.strategy import load_strategy

    folder = tmp_path_factory.mktemp("names_as_gated")
    root = processed_demo_samples(folder / "study", 1000, (*DRIFTING, OLD))
    _gate_with(root, OLD, load_strategy(str(_older_bcell(folder))))
    return root


@pytest.fixture()
def study(gated, tmp_path):
    root = tmp_path / "study"
    shutil.copytree(gated, root)
    return root


def _set_flags(root: Path, flags: dict[str, str]) -> None:
    conn = sqlite3.connect(root / "immunomon.db")
    with conn:
        for sample_id, text in flags.items():
            conn.execute(
                "UPDATE samples SET qc_flags=? WHERE sample_id=? AND superseded_by IS NULL",
                (text, sample_id),
            )
    conn.close()


def _pages(root: Path, *paths: str) -> list[str]:
    from fastapi.testclient import TestClient

    from flows.review import create_app

    client = TestClient(create_app(root), base_url="http://127.0.0.1:8765")  # the default site
    token = re.search(r'name="csrf" value="([^"]+)"', client.get("/whoami").text)[1]
    client.post("/whoami", data={"name": "ana", "csrf": token})
    return [html.unescape(client.get(path).text) for path in paths]


def _today_row(page: str, sample_id: str) -> str:
    row = next(r for r in page.split("<tr>") if f"/sample/{sample_id}" in r)
    return re.sub(r"\s+", " ", row)


def test_the_store_keeps_the_strategy_a_result_was_gated_with(gated):
    from reports.outputs import study_names

    store = Store(gated / "immunomon.db")
    try:
        rows = store.current_strategies().set_index("sample_id")
        names = study_names(Study(gated), store)
    finally:
        store.close()
    assert json.loads(rows.at[OLD, "document"])["version"] == 3
    assert json.loads(rows.at[CURRENT, "document"])["version"] >= 4
    assert rows.at[OLD, "strategy_sha256"] != rows.at[CURRENT, "strategy_sha256"]
    old, current = names.of_sample(OLD), names.of_sample(CURRENT)
    assert old.markers[("BCELL", "t_cd38")] == "CD38"
    assert ("BCELL", "t_cd38") not in current.markers
    assert old.short("BCELL", "plasmablasts") == "Antibody-secreting cells"
    assert current.short("BCELL", "plasmablasts") == "Plasmablasts"
    assert current is names  # a sample gated with the current strategy: the study's names


def test_review_pages_name_a_sample_from_the_strategy_it_was_gated_with(study):
    """The bug: a sample gated under bcell v3 read 'boundary t_cd38 at its default' with no
    marker, since its names came from the current strategy, which has no t_cd38."""
    flags = "default_threshold:t_cd38;low_count:plasmablasts<50"
    _set_flags(study, {OLD: flags, CURRENT: "low_count:plasmablasts<50"})
    today, sample = _pages(study, "/", f"/sample/{OLD}")
    for text in (_today_row(today, OLD), sample):
        assert "CD38 boundary (t_cd38) at its default" in text
        assert "Antibody-secreting cells: fewer than 50 events" in text
        assert "boundary t_cd38 at" not in text and "Plasmablasts:" not in text
    # The same flag on a sample gated with the current strategy: its current title.
    assert "Plasmablasts: fewer than 50 events" in _today_row(today, CURRENT)


def test_a_result_stored_before_strategies_were_kept_takes_its_markers_from_its_gates(study):
    conn = sqlite3.connect(study / "immunomon.db")
    with conn:
        conn.execute("DELETE FROM strategies")
    conn.close()
    _set_flags(study, {OLD: "default_threshold:t_cd38"})
    (today,) = _pages(study, "/")
    assert "CD38 boundary (t_cd38) at its default" in _today_row(today, OLD)


def _move_threshold(root: Path, threshold: str, values: dict[str, float]) -> None:
    """Put a threshold of these samples at these values (their recorded gates)."""
    conn = sqlite3.connect(root / "immunomon.db")
    with conn:
        for sample_id, value in values.items():
            key, parameters = conn.execute(
                "SELECT g.sample_key, g.parameters FROM gates g JOIN samples s ON "
                "s.sample_key=g.sample_key WHERE s.sample_id=? AND s.superseded_by IS NULL "
                "AND g.gate=?",
                (sample_id, threshold),
            ).fetchone()
            moved = {**json.loads(parameters), "value": value}
            conn.execute(
                "UPDATE gates SET parameters=? WHERE sample_key=? AND gate=?",
                (json.dumps(moved), key, threshold),
            )
    conn.close()


def test_drift_items_in_the_review_list_are_in_words(study):
    """One visit's t_cd27 far off the patient's other three: the today list says which
    boundary moved, by how much and how unusual that is, in words, never its drift key."""
    _move_threshold(study, "t_cd27", dict(zip(DRIFTING, (0.45, 0.46, 0.44, 0.90), strict=True)))
    (today,) = _pages(study, "/")
    row = _today_row(today, "P01_M6_BCELL")
    found = re.search(
        r"drift: CD27 boundary \(t_cd27\) moved \+0\.45 from this patient's other visits "
        r"\(z \+(\d+\.\d)\)",
        row,
    )
    assert found and float(found[1]) > 3.5, row
    assert 'class="drift"' in row
    assert "CD27 boundary (t_cd27) moved" not in _today_row(today, "P01_M1_BCELL")
    assert not re.search(r"drift (threshold|%|median) ", today)  # no key as a code


def test_drift_keys_in_words():
    names = Names(
        titles={
            ("BCELL", "cd19_b"): "CD19+ B cells",
            ("BCELL", "naive_b"): "Naive B (CD27- IgD+)",
            ("TREG", "treg"): "Treg (CD25hi CD127lo)",
        },
        parents={("BCELL", "naive_b"): "cd19_b"},
        markers={("BCELL", "t_cd27"): "CD27"},
    )
    assert names.drift("BCELL", "threshold t_cd27", 0.21, 4.34) == (
        "drift: CD27 boundary (t_cd27) moved +0.21 from this patient's other visits (z +4.3)"
    )
    assert names.drift("TREG", "threshold treg edge CD25", -0.1, -5.0).startswith(
        "drift: Treg gate's CD25 edge moved -0.1 "
    )
    assert names.drift("BCELL", "% naive_b") == (
        "drift: Naive B, % of CD19+ B cells off this patient's other visits"
    )
    assert drift_subject("median naive_b IgD", population=str) == "IgD median of naive_b"
    assert names.drift("BCELL", "threshold t_gone").startswith("drift: boundary t_gone off")
    assert drift_subject("something new") == "something new"


def test_the_report_counts_each_sample_s_flags_in_the_words_of_its_own_strategy():
    """The completeness page and the QC summary: a flag code means what the strategy its
    sample was gated with says, so samples are counted by the words, not by the code."""
    from reports.cohort_report import qc_summary_lines
    from reports.monitor_pages import qc_summary

    current = Names(
        titles={("BCELL", "plasmablasts"): "Plasmablasts (CD27+ CD38hi)"},
        markers={("BCELL", "t_cd38_plasmablast"): "CD38"},
    )
    older = Names(
        titles={("BCELL", "plasmablasts"): "Antibody-secreting cells (CD27+ CD38++)"},
        markers={("BCELL", "t_cd38"): "CD38"},
    )
    names = Names(current.titles, current.parents, current.markers, gated_with={"old": older})
    samples = pd.DataFrame(
        {
            "sample_id": ["old", "new", "new2"],
            "panel": ["BCELL"] * 3,
            "status": ["processed"] * 3,
            "events": [10000, 12000, 11000],
            "needs_review": [True, True, False],
            "qc_flags": [
                "default_threshold:t_cd38;low_count:plasmablasts<50;needs_review",
                "default_threshold:t_cd38_plasmablast;low_count:plasmablasts<50;needs_review",
                "low_count:plasmablasts<50",
            ],
        }
    )
    steps = pd.DataFrame({"sample_id": ["old"], "step": ["debris"], "removed": [1]})
    gates = pd.DataFrame(
        {
            "sample_id": ["old", "new"],
            "kind": ["threshold"] * 2,
            "from_data": [False] * 2,
            "gate": ["t_cd38", "t_cd38_plasmablast"],
        }
    )
    lines = qc_summary(samples, steps.assign(events_in=100), gates, names)
    assert "    Antibody-secreting cells: fewer than 50 events: 1 samples" in lines
    assert "    Plasmablasts: fewer than 50 events: 2 samples" in lines
    assert (
        "  thresholds left at the strategy's default (samples): CD38 (t_cd38) 1, "
        "CD38 (t_cd38_plasmablast) 1" in lines
    )
    completeness = qc_summary_lines(samples, names)
    assert (
        "    BCELL: CD38 boundary (t_cd38) at its default: no separation in the data: "
        "1 samples" in completeness
    )
    assert not any("boundary t_cd38 " in line for line in completeness + lines)


def test_a_sample_is_replayed_with_the_placement_of_the_strategy_it_was_gated_with(gated):
    """The bug: the QC page (``immunomon report --sample``) and the review's scatter replayed
    every sample with the current strategy's ``within``, so a transitional tip placed on all
    CD19+ B cells (bcell v3) was drawn and counted over the CD27- B cells it never saw."""
    from reports.outputs import replay_current
    from reports.qc_report import gate_plot

    study, store = Study(gated), Store(gated / "immunomon.db")
    try:
        old = replay_current(study, store, OLD)
        current = replay_current(study, store, CURRENT)
    finally:
        store.close()

    def tip(replayed):
        return next(g for g in replayed[1] if g.name == "transitional_tip")

    assert tip(current).within == "cd27neg_b"
    assert tip(old).within is None  # placed on its parent's events, as v3 says
    _, gates, masks, space, data = old
    plot = gate_plot(tip(old), space, masks, data.channel)
    among = int(masks["cd19_b"].sum())
    assert f"/{among} (" in plot.title and "of cd27neg_b" not in plot.title
    assert among > int(masks["cd27neg_b"].sum())  # the two really differ on this sample
    plot = gate_plot(tip(current), current[3], current[2], current[4].channel)
    assert f"/{int(current[2]['cd27neg_b'].sum())} (" in plot.title and "of cd27neg_b" in plot.title


def _row(page: str, table: str, label: str) -> str:
    """The row of the patient page's ``table`` whose first cell is ``label``."""
    section = page.split(f'<table id="{table}">')[1].split("</table>")[0]
    rows = [r for r in section.split("<tr>") if r.startswith(f"<td>{label}</td>")]
    assert len(rows) == 1, (label, section[:2000])
    return re.sub(r"\s+", " ", rows[0])


def test_the_patient_page_names_its_rows_and_drift_items_in_words(study):
    """The bug: the patient page's rows were drift keys ('t_cd27', 'naive_b IgD') and its
    drift items bare numbers, while the today list printed the same items in words. Now both
    take them from ``reports.names`` (each visit's from the strategy it was gated with)."""
    _move_threshold(study, "t_cd27", dict(zip(DRIFTING, (0.45, 0.46, 0.44, 0.90), strict=True)))
    patient, older = _pages(study, "/patient/P01?panel=BCELL", "/patient/P02?panel=BCELL")
    row = _row(patient, "thresholds", "CD27 boundary (t_cd27)")
    chip = re.search(
        r'<span class="drift" title="([^"]+)">moved \+0\.45 \(z \+\d+\.\d\)</span>', row
    )
    assert chip, row
    assert chip[1].startswith(
        "drift: CD27 boundary (t_cd27) moved +0.45 from this patient's other visits (z +"
    )
    assert row.count('class="drift"') == 1  # M6 only
    _row(patient, "populations", "Naive B, % of CD19+ B cells")
    _row(patient, "mfi", "IgD median of Naive B")
    cells = re.findall(r"<tr><td>([^<]*)</td>", patient)
    assert len(cells) > 20
    assert not [c for c in cells if re.fullmatch(r"[a-z0-9_]+( [A-Za-z0-9]+)?", c)], cells
    # P02's visit was gated with bcell v3: its plasmablast boundary by that version's names.
    _row(older, "thresholds", "CD38 boundary (t_cd38)")
    _row(older, "populations", "Antibody-secreting cells, % of CD19+ B cells")
