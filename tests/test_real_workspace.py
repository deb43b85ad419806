"""A real FlowJo 10 workspace (FACSCanto II files without FSC-H) as a panel's strategy.

Uses ../shared/realdata/flowjo_fcexpr; skipped with the reason where it is absent. FlowJo's own
counts are read from the workspace; flowkit (which immunomon uses) can differ by events lying
on a polygon's edge, since FlowJo bins polygon gates.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from gating.apply import gate_file, load_panel_strategy
from panels.resolve import load_panel

FOLDER = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "flowjo_fcexpr"
POPULATIONS = {"cells": "RPTECs", "live": "DAPI-", "gfp_pos": "GFP+"}

pytestmark = pytest.mark.skipif(
    not FOLDER.is_dir(), reason=f"real workspace not found at {FOLDER} (shared/ beside the clone)"
)


def flowjo_counts() -> dict[str, dict[str, int]]:
    """Sample name -> gate name -> FlowJo's count, from the workspace XML."""
    counts = {}
    for node in ET.parse(FOLDER / "07-Oct-2021.wsp").getroot().iter("SampleNode"):
        counts[node.get("name")] = {
            p.get("name"): int(p.get("count")) for p in node.iter("Population")
        }
    return counts


def test_files_without_fsc_h_process_with_their_workspace_close_to_flowjo(tmp_path):
    panel_file = tmp_path / "panel.yaml"
    panel_file.write_text(
        "name: rptec\nmarkers: {GFP: [b-LP502], DAPI: [v-450]}\n"
        f"strategy: {FOLDER / '07-Oct-2021.wsp'}\n"
        f"workspace:\n  populations: {POPULATIONS}\n"
    )
    panel = load_panel(str(panel_file))
    strategy = load_panel_strategy(panel)
    reference = flowjo_counts()
    files = sorted((FOLDER / "fcs").glob("*.fcs"))
    assert len(files) == 48
    largest = 0
    for path in files:
        gated = gate_file(path, panel, strategy)
        assert gated.resolved.missing == ()
        ours = {p.population: p.count for p in gated.gating.populations}
        for population, gate in POPULATIONS.items():
            difference = abs(ours[population] - reference[path.name][gate])
            largest = max(largest, difference)
    # 500-event files: FlowJo's binned polygons move at most a few edge events.
    assert largest <= 3  # measured 2026-11-27: at most 2 events, on 30 of 144 counts


def test_a_workspace_saved_as_xml_is_recognised_by_its_content(tmp_path, capsys):
    """FlowJo can save a workspace as .xml: accepted because it holds a <Workspace>; an .xml
    that is not a workspace (e.g. GatingML) is one clear line and exit code 2."""
    import shutil

    from flows.cli import main

    xml = shutil.copy(FOLDER / "07-Oct-2021.wsp", tmp_path / "rptec_workspace.xml")
    sample = sorted((FOLDER / "fcs").glob("*.fcs"))[0]
    panel_file = tmp_path / "panel.yaml"
    body = "name: rptec\nmarkers: {GFP: [b-LP502], DAPI: [v-450]}\n"
    panel_file.write_text(body + f"strategy: {xml}\nworkspace:\n  populations: {POPULATIONS}\n")
    assert main(["process", str(sample), "--panel", str(panel_file), "--json"]) == 0
    import json

    out = json.loads(capsys.readouterr().out)
    counts = {p["population"]: p["count"] for p in out["populations"]}
    reference = flowjo_counts()[sample.name]
    assert all(abs(counts[p] - reference[g]) <= 3 for p, g in POPULATIONS.items())

    gatingml = tmp_path / "gates.xml"
    gatingml.write_text('<?xml version="1.0"?>\n<gating:Gating-ML xmlns:gating="x"/>\n')
    panel_file.write_text(
        body + f"strategy: {gatingml}\nworkspace:\n  populations: {POPULATIONS}\n"
    )
    assert main(["process", str(sample), "--panel", str(panel_file)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a FlowJo 10 workspace" in err[0] and "gates.xml" in err[0]


ICS = FOLDER.parent / "flowjo_workspaces_only" / "8_color_ICS.wsp"


@pytest.mark.skipif(not ICS.is_file(), reason=f"{ICS} not found")
def test_a_repeated_gate_name_must_be_named_by_its_path():
    """8_color_ICS.wsp has CD107a+ under both CD4+ and CD8+: the bare name is refused with
    the candidate paths; the path names one gate each."""
    from gating.strategy import StrategyError
    from gating.workspace import load_workspace_strategy

    with pytest.raises(StrategyError) as refused:
        load_workspace_strategy(ICS, {"populations": {"cd107a": "CD107a+"}})
    message = str(refused.value)
    assert "ambiguous" in message
    assert "CD3+/CD4+/CD107a+" in message and "CD3+/CD8+/CD107a+" in message
    strategy = load_workspace_strategy(
        ICS, {"populations": {"cd4_cd107a": "CD4+/CD107a+", "cd8_cd107a": "CD8+/CD107a+"}}
    )
    assert strategy.gate_ids["cd4_cd107a"][1][-1] == "CD4+"
    assert strategy.gate_ids["cd8_cd107a"][1][-1] == "CD8+"
    with pytest.raises(StrategyError, match="no gate 'CD5\\+'"):
        load_workspace_strategy(ICS, {"populations": {"x": "CD5+"}})
