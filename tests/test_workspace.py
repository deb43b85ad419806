"""A FlowJo workspace as a panel's strategy: counts equal flowkit's own analysis of it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import flowkit as fk
import pytest

from gating.apply import gate_file, load_panel_strategy
from gating.strategy import StrategyError
from gating.workspace import WorkspaceStrategy
from panels.resolve import load_panel
from tests.conftest import write_simulated

POPULATIONS = {"lymphocytes": "Lymphocytes", "cd19_b": "CD19+", "cd27pos_b": "CD27+"}


def _dimension(channel, transform, low=None, high=None):
    return fk.Dimension(
        channel,
        compensation_ref="uncompensated",
        transformation_ref=transform,
        range_min=low,
        range_max=high,
    )


def _lab_workspace(folder):
    """A workspace as a lab would draw it: scatter polygon, then CD19+ and CD27+ rectangles.

    Written by flowkit's FlowJo 10 export, which handles polygon and rectangle gates on
    uncompensated channels (its export of compensated dimensions does not read back)."""
    strategy = fk.GatingStrategy()
    for channel in ("FSC-A", "SSC-A"):
        strategy.add_transform(
            f"lin_{channel}", fk.transforms.LinearTransform(param_t=262144, param_a=0)
        )
    for channel in ("PE-Cy7-A", "PerCP-Cy5-5-A"):
        strategy.add_transform(
            f"logicle_{channel}",
            fk.transforms.LogicleTransform(param_t=262144, param_w=0.5, param_m=4.5, param_a=0),
        )
    scatter = [_dimension("FSC-A", "lin_FSC-A"), _dimension("SSC-A", "lin_SSC-A")]
    box = [[0.12, 0.0], [0.38, 0.0], [0.38, 0.11], [0.12, 0.11]]
    strategy.add_gate(fk.gates.PolygonGate("Lymphocytes", scatter, box), ("root",))
    cd19 = [_dimension("PE-Cy7-A", "logicle_PE-Cy7-A", 0.45)]
    strategy.add_gate(fk.gates.RectangleGate("CD19+", cd19), ("root", "Lymphocytes"))
    cd27 = [_dimension("PerCP-Cy5-5-A", "logicle_PerCP-Cy5-5-A", 0.45)]
    strategy.add_gate(fk.gates.RectangleGate("CD27+", cd27), ("root", "Lymphocytes", "CD19+"))
    samples = sorted(str(p) for p in folder.glob("*.fcs"))
    path = folder.parent / "lab.wsp"
    with open(path, "wb") as fh:
        fk.Session(gating_strategy=strategy, fcs_samples=samples).export_wsp(fh, "All Samples")
    return path


@pytest.fixture()
def lab(tmp_path):
    folder = tmp_path / "acquired"
    folder.mkdir()
    for k in range(2):
        write_simulated(folder / f"P0{k + 1}_BL_BCELL.fcs", "BCELL", n_events=8000, seed=30 + k)
    wsp = _lab_workspace(folder)
    panel_file = tmp_path / "bcell_flowjo.yaml"
    builtin = Path(load_panel("bcell").source).read_text()
    panel_file.write_text(
        builtin.replace("strategy: bcell", "strategy: lab.wsp")
        + f"workspace:\n  group: All Samples\n  populations: {json.dumps(POPULATIONS)}\n"
    )
    return folder, wsp, load_panel(str(panel_file))


def _counts(gating):
    return {p.population: (p.count, p.parent, p.parent_count) for p in gating.populations}


def test_samples_in_the_workspace_count_as_flowkit_analyses_them(lab):
    folder, wsp, panel = lab
    strategy = load_panel_strategy(panel, wsp.parent)
    assert isinstance(strategy, WorkspaceStrategy)
    reference = fk.Workspace(str(wsp), fcs_samples=str(folder))
    reference.analyze_samples(group_name="All Samples", use_mp=False)
    for path in sorted(folder.glob("*.fcs")):
        ours = _counts(gate_file(path, panel, strategy).gating)
        theirs = reference.get_gating_results(path.name)
        for population, gate in POPULATIONS.items():
            assert ours[population][0] == theirs.get_gate_count(gate), (path.name, gate)
        assert ours["cd27pos_b"][1:] == ("cd19_b", ours["cd19_b"][0])
        assert ours["lymphocytes"][1:] == ("all_events", 8000)


def test_a_new_sample_gets_the_template_samples_gates(lab, tmp_path):
    folder, wsp, panel = lab
    strategy = load_panel_strategy(panel, wsp.parent)
    new = tmp_path / "P03_M1_BCELL.fcs"
    write_simulated(new, "BCELL", visit="M1", n_events=8000, seed=40)
    gating = gate_file(new, panel, strategy).gating
    template = fk.Workspace(str(wsp), load_missing_file_data=True).get_gating_strategy(
        strategy.template_sample
    )
    theirs = template.gate_sample(fk.Sample(str(new)))
    for population, gate in POPULATIONS.items():
        assert _counts(gating)[population][0] == theirs.get_gate_count(gate)
    assert gating.flags == [f"flowjo_workspace:template {strategy.template_sample}"]


def test_a_population_missing_from_the_workspace_is_a_clear_error(lab, tmp_path):
    _, wsp, panel = lab
    wrong = {**panel.workspace, "populations": {"cd19_b": "CD19 positive"}}
    with pytest.raises(StrategyError, match="no gate .CD19 positive. .gates: Lymphocytes, "):
        load_panel_strategy(type(panel)(**{**panel.__dict__, "workspace": wrong}), wsp.parent)
    broken = tmp_path / "broken.wsp"
    shutil.copy(wsp, broken)
    broken.write_text(broken.read_text()[:500])
    with pytest.raises(StrategyError, match="broken.wsp: flowkit cannot read it"):
        load_panel_strategy(type(panel)(**{**panel.__dict__, "strategy": "broken.wsp"}), tmp_path)


def test_a_study_panel_can_use_the_workspace(lab, tmp_path, prefect_harness):
    import pandas as pd

    from flows.nightly import run_study
    from simulate.demo import DemoOptions, simulate_study

    folder, wsp, panel = lab
    root = tmp_path / "study"
    simulate_study(root, DemoOptions(events_per_file=3000, include_bad_files=False))
    for path in list((root / "inbox").iterdir()):
        if not path.name.startswith("P01_BL_"):
            path.unlink()
    shutil.copy(wsp, root / "lab.wsp")
    shutil.copy(panel.source, root / "bcell_flowjo.yaml")
    config = (root / "study.yaml").read_text().replace("BCELL: bcell", "BCELL: bcell_flowjo.yaml")
    (root / "study.yaml").write_text(config + "qc_reports: none\n")
    summary = run_study(root, workers=1)
    assert (summary.processed, summary.failed) == (2, 0)
    pops = pd.read_csv(root / "results" / "populations.csv")
    bcell = pops[pops.panel == "BCELL"].set_index("population")
    assert set(bcell.index) == set(POPULATIONS)
    template = fk.Workspace(str(wsp), load_missing_file_data=True).get_gating_strategy(
        "P01_BL_BCELL.fcs"
    )
    theirs = template.gate_sample(fk.Sample(str(root / "inbox" / "P01_BL_BCELL.fcs")))
    for population, gate in POPULATIONS.items():
        assert bcell.loc[population, "count"] == theirs.get_gate_count(gate)
    assert set(pops[pops.panel == "TREG"].population) >= {"treg", "cd4_t"}  # YAML as before


FLOWATLAS = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "flowatlas_tissues"


@pytest.mark.skipif(
    not (FLOWATLAS / "flowatlas.wsp").is_file(),
    reason=f"FlowAtlas workspace not found at {FLOWATLAS} (shared/ beside the clone)",
)
def test_a_real_flowjo_workspace_maps_to_the_treg_strategy_only_where_it_can():
    """FlowJo 10's own workspace (FlowAtlas, T-cell panel): read with flowkit against our Treg
    strategy, every one of its gates is accounted for. Its names are the lab's ("T cells",
    "CD4"), its CD4 gate is a polygon, and its Treg gate (a polygon, like our placed arm) has
    no CD45RA child: no rectangle gives one of our thresholds, so it cannot seed the template,
    and the listing says so gate by gate rather than dropping them."""
    from dataclasses import replace

    from gating.strategy import load_strategy
    from gating.workspace import workspace_limits
    from panels.fcs import scan_header
    from panels.resolve import resolve_panel

    header = scan_header(FLOWATLAS / "fcs" / "390C_Ileum_028.fcs")
    panel = replace(load_panel("treg"), enters_at="lymphocytes")  # no scatter in these files
    resolved = resolve_panel(panel, header)
    seed = workspace_limits(
        FLOWATLAS / "flowatlas.wsp",
        load_strategy("treg"),
        resolved,
        dict(zip(header.pnn, header.pnr, strict=True)),
        sample="390C_Ileum_028.fcs",
    )
    workspace = fk.Workspace(str(FLOWATLAS / "flowatlas.wsp"), load_missing_file_data=True)
    gates = workspace.get_gate_ids("390C_Ileum_028.fcs")
    assert seed.limits == {}
    assert len(seed.unmapped) == len(gates)  # each gate listed once, with its reason
    reasons = dict(seed.unmapped)
    assert reasons["T cells"] == "no gate of strategy treg is named 'T cells'"
    assert "PolygonGate for our cloud_arm gate treg" in reasons["T cells/CD4/Treg"]
