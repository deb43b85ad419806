"""Expert study templates: set once for a panel, mapped through each sample's landmark,
audited, part of the results' identity, named in the report's Methods."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from cohort.audit import AuditLog, anchors_path, read_anchors, verify_trail
from cohort.references import build_panel_reference
from cohort.store import Store
from cohort.study import Study
from cohort.templates import (
    POOLED,
    TemplateError,
    panel_templates,
    set_template,
    template_methods_lines,
)
from gating.gates import ThresholdMark
from gating.pipeline import gate_sample
from gating.registration import landmark_peak
from panels.errors import ImmunomonError
from panels.fcs import read_events
from panels.resolve import resolve_panel
from simulate.second_site import SiteOptions, simulate_site

# A study whose Tregs the strategy gates well (the second site), so a reference can be built.
OPTIONS = SiteOptions(patients=3, visits=("V0", "V1"), events_per_file=5000, seed=31)
PANEL = "T"
REFERENCE_SAMPLE, OTHER_SAMPLE = "S01_V0_T", "S02_V1_T"  # files S01-V0-T.fcs ...


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    return simulate_site(tmp_path_factory.mktemp("templates") / "study", OPTIONS)


@pytest.fixture(scope="module")
def referenced(written, tmp_path_factory):
    """The study with its T-tube reference built (once: gating is the costly part)."""
    root = shutil.copytree(written, tmp_path_factory.mktemp("referenced") / "study")
    study = Study(root)
    reference, _ = build_panel_reference(study, PANEL, _reference_files(study))
    return root, reference


def _reference_files(study: Study):
    return sorted(study.inbox.glob("*-T.fcs"))[:5]  # the fewest a reference takes


@pytest.fixture
def pooled(referenced, tmp_path):
    """A copy of the study with its reference: templates on the pooled scale gate nothing."""
    return Study(shutil.copytree(referenced[0], tmp_path / "pooled"))


@pytest.fixture
def study(written, tmp_path):
    root = shutil.copytree(written, tmp_path / "study")
    return Study(root)


def _gate(study: Study, sample_id: str):
    data = read_events(study.inbox / f"{sample_id.replace('_', '-')}.fcs")
    resolved = resolve_panel(study.panels[PANEL], data.header)
    return gate_sample(data, resolved, study.strategies[PANEL])


def _threshold(gating, name: str) -> ThresholdMark:
    return next(g.gate for g in gating.gates if g.name == name)


def _landmark(gating) -> float:
    """The sample's CD45RA landmark, found independently of cohort.templates."""
    return landmark_peak(gating.space["CD45RA"][gating.masks["cd4_t"]], "high")


def test_a_template_set_on_a_sample_is_mapped_through_every_samples_landmark(study):
    before = study.strategies[PANEL].sha256
    own = _landmark(_gate(study, REFERENCE_SAMPLE))
    with_store = Store(study.db_path)
    change = set_template(
        study,
        with_store,
        PANEL,
        "t_cd45ra",
        0.47,
        who="Dr Lab",
        reason="expert cut",
        sample_id=REFERENCE_SAMPLE,
    )
    with_store.close()
    assert change.template.offset == pytest.approx(0.47 - own, abs=1e-6)
    regated = Study(study.root)
    assert regated.strategies[PANEL].sha256 != before  # the next pass re-gates the panel
    assert regated.strategies[PANEL].offsets == {"t_cd45ra": change.template.offset}
    on_reference = _threshold(_gate(regated, REFERENCE_SAMPLE), "t_cd45ra")
    assert on_reference.value == pytest.approx(0.47, abs=1e-6)
    assert on_reference.method == "registered"
    other = _gate(regated, OTHER_SAMPLE)
    expected = _landmark(other) + change.template.offset
    assert _threshold(other, "t_cd45ra").value == pytest.approx(expected, abs=1e-6)
    assert abs(_landmark(other) - own) > 1e-4  # a different landmark: really mapped


def test_setting_a_template_is_audited_with_who_why_and_the_old_and_new_offsets(pooled):
    built = pooled.strategies[PANEL].offsets["t_cd45ra"]  # the reference's own placement
    store = Store(pooled.db_path)
    first = set_template(pooled, store, PANEL, "t_cd45ra", 0.45, who="Dr A", reason="first")
    second = set_template(pooled, store, PANEL, "t_cd45ra", 0.50, who="Dr B", reason="moved up")
    log = AuditLog(store.conn)
    entries = [e for e in log.entries() if e.action == "template"]
    assert [(e.who, e.reason) for e in entries] == [("Dr A", "first"), ("Dr B", "moved up")]
    assert entries[0].detail["old_offset"] == pytest.approx(built)
    assert entries[0].detail["old_method"] != "template"
    assert entries[1].detail["old_method"] == "template"
    assert entries[1].detail["old_offset"] == pytest.approx(first.template.offset)
    assert entries[1].detail["new_offset"] == pytest.approx(second.template.offset)
    assert entries[1].detail["reference_sha256_old"] != entries[1].detail["reference_sha256_new"]
    assert second.audit_seq == entries[1].seq and second.regates
    assert log.verify() == ""  # the chain holds
    anchors, problems = read_anchors(anchors_path(pooled.root))
    assert not problems and {a.seq for a in anchors} >= {e.seq for e in entries}  # anchored
    assert verify_trail(store.conn, anchors).problems == []
    store.close()
    template = panel_templates(Study(pooled.root), PANEL)["t_cd45ra"]
    assert (template.set_by, template.reason, template.given_on) == ("Dr B", "moved up", POOLED)


def test_the_same_offset_again_does_not_regate(pooled):
    store = Store(pooled.db_path)
    set_template(pooled, store, PANEL, "t_cd45ra", 0.48, who="A", reason="r")
    sha = Study(pooled.root).strategies[PANEL].sha256
    again = set_template(pooled, store, PANEL, "t_cd45ra", 0.48, who="B", reason="checked")
    store.close()
    assert not again.regates
    assert Study(pooled.root).strategies[PANEL].sha256 == sha


def test_pooled_scale_needs_a_reference(study):
    store = Store(study.db_path)
    with pytest.raises(TemplateError, match="reference build"):
        set_template(study, store, PANEL, "t_cd45ra", 0.45, who="A", reason="r")
    store.close()


def test_a_template_on_the_pooled_scale_is_kept_when_the_reference_is_rebuilt(referenced, tmp_path):
    built, reference = referenced
    study = Study(shutil.copytree(built, tmp_path / "study"))
    landmark = reference.thresholds["t_cd45ra"].landmark_reference
    store = Store(study.db_path)
    change = set_template(study, store, PANEL, "t_cd45ra", 0.44, who="Dr P", reason="pooled cut")
    store.close()
    assert change.template.given_on == POOLED
    assert change.template.offset == pytest.approx(0.44 - landmark, abs=1e-6)
    assert change.previous_method == reference.thresholds["t_cd45ra"].method
    assert change.previous_offset == pytest.approx(reference.thresholds["t_cd45ra"].offset)
    rebuilt, _ = build_panel_reference(Study(study.root), PANEL, _reference_files(study))
    assert rebuilt.thresholds["t_cd45ra"].method == "template"
    assert Study(study.root).strategies[PANEL].offsets["t_cd45ra"] == pytest.approx(
        change.template.offset
    )


@pytest.mark.parametrize(
    ("panel", "threshold", "value", "who", "reason", "message"),
    [
        ("NOPE", "t_cd45ra", 0.4, "A", "r", "no panel 'NOPE'"),
        (PANEL, "t_cd99", 0.4, "A", "r", "no threshold 't_cd99'"),
        (PANEL, "t_hladr", 0.4, "A", "r", "no landmark"),
        (PANEL, "t_cd45ra", 0.95, "A", "r", "outside the strategy's bounds"),
        (PANEL, "t_cd45ra", float("nan"), "A", "r", "not a number"),
        (PANEL, "t_cd45ra", 0.4, " ", "r", "name of the person"),
        (PANEL, "t_cd45ra", 0.4, "A", "", "reason"),
    ],
)
def test_a_template_that_cannot_be_set_is_refused_and_changes_nothing(
    study, panel, threshold, value, who, reason, message
):
    store = Store(study.db_path)
    with pytest.raises(TemplateError, match=message) as raised:
        set_template(
            study,
            store,
            panel,
            threshold,
            value,
            who=who,
            reason=reason,
            sample_id=REFERENCE_SAMPLE,
        )
    assert isinstance(raised.value, ImmunomonError)
    assert not any(e.action == "template" for e in AuditLog(store.conn).entries())
    store.close()
    assert not (study.root / "references").exists()


def test_the_reference_sample_must_exist_and_belong_to_the_panel(study):
    store = Store(study.db_path)
    with pytest.raises(TemplateError, match="no file of sample"):
        set_template(
            study, store, PANEL, "t_cd45ra", 0.4, who="A", reason="r", sample_id="S09_V0_T"
        )
    with pytest.raises(TemplateError, match="not a T sample"):
        set_template(
            study, store, PANEL, "t_cd45ra", 0.4, who="A", reason="r", sample_id="S01_V0_B"
        )
    store.close()


def test_the_report_methods_name_the_template_and_who_set_it(pooled):
    from reports.outputs import methods_text

    store = Store(pooled.db_path)
    set_template(
        pooled,
        store,
        PANEL,
        "t_cd45ra",
        0.46,
        who="Dr Methods",
        reason="lab SOP 12",
    )
    store.close()
    lines = template_methods_lines(Study(pooled.root))
    assert len(lines) == 1
    assert "T t_cd45ra" in lines[0] and "Dr Methods" in lines[0] and "lab SOP 12" in lines[0]
    assert "0.460 on the pooled aligned samples" in lines[0]
    assert any("Dr Methods" in line for line in methods_text(Study(pooled.root)))


def test_cli_reference_set(pooled):
    command = [sys.executable, "-m", "flows.cli", "reference", "set", "--study", str(pooled.root)]
    args = ["--panel", PANEL, "--value", "0.47", "--reason", "expert", "--who", "Dr CLI"]
    done = subprocess.run(
        [*command, *args, "--threshold", "t_cd45ra"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "set by Dr CLI" in done.stdout and "re-gates the T samples" in done.stdout
    refused = subprocess.run(
        [*command, *args, "--threshold", "t_hladr"], capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "t_hladr has no landmark" in refused.stderr
    entries = AuditLog(Store(pooled.db_path).conn).entries()
    assert [e.who for e in entries if e.action == "template"] == ["Dr CLI"]
    assert np.isfinite(panel_templates(Study(pooled.root), PANEL)["t_cd45ra"].offset)


def test_a_template_entry_edited_by_hand_is_named_not_a_traceback(pooled):
    store = Store(pooled.db_path)
    set_template(pooled, store, PANEL, "t_cd45ra", 0.46, who="A", reason="r")
    store.close()
    path = pooled.reference_path("treg")
    path.write_text(path.read_text().replace("set_by:", "signed_by:"))
    with pytest.raises(TemplateError, match="treg.yaml: a template entry lacks 'set_by'"):
        panel_templates(Study(pooled.root), PANEL)
    assert "templates not readable" in template_methods_lines(Study(pooled.root))[0]


# A FlowJo workspace seeds the study template (issue 26, item 4) ---------------------------
def _our_workspace(study: Study, sample_ids: list[str], path):
    """Our own FlowJo export of ``sample_ids`` (gated as a pass gates them), one group."""
    from gating.wsp_export import WorkspaceSample, write_workspace

    samples = []
    for sample_id in sample_ids:
        fcs = study.inbox / f"{sample_id.replace('_', '-')}.fcs"
        data = read_events(fcs)
        resolved = resolve_panel(study.panels[PANEL], data.header)
        gating = gate_sample(data, resolved, study.strategies[PANEL])
        counts = {name: int(mask.sum()) for name, mask in gating.masks.items()}
        samples.append(WorkspaceSample(sample_id, fcs, data.header, resolved, gating.gates, counts))
    write_workspace(path, samples, {"Tregs": sample_ids})
    return path


def _move_memory_treg_limit(path, fcs_name: str, study: Study, new_logicle: float) -> None:
    """Edit the XML as a lab would in FlowJo: the memory Treg gate's CD45RA maximum of one
    sample, in FlowJo's channel units."""
    from lxml import etree

    from gating.space import GatingSpace
    from gating.wsp_export import NS_GATING

    data = read_events(study.inbox / fcs_name)
    space = GatingSpace.of_sample(data, resolve_panel(study.panels[PANEL], data.header))
    channel_units = float(space.transforms["CD45RA"].inverse(new_logicle)[0])
    doc = etree.parse(str(path))
    node = next(n for n in doc.iter("SampleNode") if n.get("name") == fcs_name)
    gate = next(p for p in node.iter("Population") if p.get("name") == "memory_treg")
    dims = gate.findall(f".//{{{NS_GATING}}}dimension")
    dims[0].set(f"{{{NS_GATING}}}max", repr(channel_units))
    doc.write(str(path), xml_declaration=True, encoding="utf-8")


def test_a_flowjo_workspace_seeds_the_template_each_sample_adapts_through_its_landmark(
    study, tmp_path
):
    import hashlib

    from cohort.templates import seed_from_workspace

    wsp = _our_workspace(study, [REFERENCE_SAMPLE, OTHER_SAMPLE], tmp_path / "lab.wsp")
    placed = _threshold(_gate(study, REFERENCE_SAMPLE), "t_cd45ra").value
    wanted = round(placed + 0.04, 4)  # the lab moved the boundary in FlowJo
    _move_memory_treg_limit(wsp, "S01-V0-T.fcs", study, wanted)
    store = Store(study.db_path)
    seeding = seed_from_workspace(
        study, store, PANEL, wsp, who="Dr FlowJo", reason="our lab template", group="Tregs"
    )
    entries = [e for e in AuditLog(store.conn).entries() if e.action == "template"]
    store.close()
    assert seeding.sample_id == REFERENCE_SAMPLE  # the group's first sample
    (change,) = seeding.changes
    own = _landmark(_gate(study, REFERENCE_SAMPLE))
    assert change.template.value == pytest.approx(wanted, abs=1e-5)
    assert change.template.offset == pytest.approx(wanted - own, abs=1e-5)
    # Audited, naming the workspace by file name and content, and the gate it came from.
    source = entries[-1].detail["source"]
    assert source["workspace"] == "lab.wsp"
    assert source["workspace_sha256"] == hashlib.sha256(wsp.read_bytes()).hexdigest()
    assert source["flowjo_gate"].endswith("treg/memory_treg") and source["flowjo_side"] == "max"
    # Every other sample: its own landmark + the offset, so it moved by the FlowJo edit.
    regated = Study(study.root)
    other = _gate(regated, OTHER_SAMPLE)
    assert _threshold(other, "t_cd45ra").value == pytest.approx(
        _landmark(other) + change.template.offset, abs=1e-5
    )
    assert _threshold(_gate(regated, REFERENCE_SAMPLE), "t_cd45ra").value == pytest.approx(
        wanted, abs=1e-5
    )
    # Nothing silently dropped: the placed gates and the thresholds without a landmark.
    not_used = dict(seeding.not_used)
    assert any(k.endswith("lymphocytes") and "scatter_cluster" in v for k, v in not_used.items())
    assert any(k.endswith("cd4_t/treg") and "cloud_arm" in v for k, v in not_used.items())
    assert any("t_hladr" in k and "no landmark" in v for k, v in not_used.items())


def test_a_workspace_limit_outside_the_bounds_sets_nothing(study, tmp_path):
    from cohort.templates import seed_from_workspace

    wsp = _our_workspace(study, [REFERENCE_SAMPLE], tmp_path / "lab.wsp")
    _move_memory_treg_limit(wsp, "S01-V0-T.fcs", study, 0.9)  # bounds are [0.22, 0.68]
    store = Store(study.db_path)
    with pytest.raises(TemplateError, match=r"nothing set .*outside the strategy's bounds"):
        seed_from_workspace(study, store, PANEL, wsp, who="A", reason="r", group="Tregs")
    assert [e for e in AuditLog(store.conn).entries() if e.action == "template"] == []
    store.close()
    assert panel_templates(Study(study.root), PANEL) == {}
    with pytest.raises(TemplateError, match="not a file of"):
        store = Store(study.db_path)
        try:
            seed_from_workspace(
                study, store, PANEL, wsp, who="A", reason="r", group="Tregs", sample="x.fcs"
            )
        finally:
            store.close()


def test_cli_reference_set_from_a_workspace(study, tmp_path, monkeypatch, capsys):
    from flows.cli import main

    wsp = _our_workspace(study, [REFERENCE_SAMPLE], tmp_path / "lab.wsp")
    command = ["reference", "set", "--study", str(study.root), "--panel", PANEL]
    args = [*command, "--reason", "lab template", "--who", "Dr CLI", "--from-wsp", str(wsp)]
    done = subprocess.run(  # the installed entry point, once
        [sys.executable, "-m", "flows.cli", *args, "--sample-group", "Tregs"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    assert "lab.wsp (sha256" in done.stdout and "t_cd45ra:" in done.stdout
    assert "not used:" in done.stdout and "re-gates the T samples" in done.stdout
    # The refusals in this process (main() as the script runs it; its settings undone after).
    for name in ("PREFECT_LOGGING_LEVEL", "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"):
        monkeypatch.setenv(name, os.environ.get(name, "WARNING"))
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    assert main(["-q", *args, "--sample-group", "Nope"]) == 2
    refused = capsys.readouterr().err
    assert refused.count("\n") == 1 and "no sample group 'Nope'" in refused
    assert main(["-q", *args, "--threshold", "t_cd45ra"]) == 2
    assert "leave out --threshold" in capsys.readouterr().err


def test_the_templates_page_takes_a_workspace_upload(study, tmp_path):
    """The review page's form does what the command does: signed, audited, the FlowJo gates
    not used listed on the page; the upload is read from a temporary folder, not kept."""
    import re

    from fastapi.testclient import TestClient

    from flows.review import create_app

    wsp = _our_workspace(study, [REFERENCE_SAMPLE], tmp_path / "lab.wsp")
    client = TestClient(create_app(study.root), base_url="http://127.0.0.1:8765")
    token = re.search(r'name="csrf" value="([^"]+)"', client.get("/whoami").text)[1]
    client.post("/whoami", data={"name": "ana", "csrf": token})
    page = client.get(f"/templates/{PANEL}")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)[1]
    assert 'id="wsp-form"' in page.text
    before = {p.relative_to(study.root) for p in study.root.rglob("*")}
    response = client.post(
        f"/templates/{PANEL}/from-wsp",
        data={"csrf": token, "group": "Tregs", "reason": "lab template"},
        files={"workspace": ("lab.wsp", wsp.read_bytes(), "application/xml")},
    )
    assert response.status_code == 200
    assert "lab.wsp (sha256" in response.text and f"read on {REFERENCE_SAMPLE}" in response.text
    assert 'id="not-used"' in response.text and "cloud_arm" in response.text
    template = panel_templates(Study(study.root), PANEL)["t_cd45ra"]
    assert (template.set_by, template.given_on) == ("ana", REFERENCE_SAMPLE)
    added = {p.relative_to(study.root) for p in study.root.rglob("*")} - before
    kept = {"references", "references/treg.yaml", "audit_anchors.jsonl", ".immunomon.lock"}
    assert {str(p) for p in added} <= kept
    refused = client.post(
        f"/templates/{PANEL}/from-wsp",
        data={"csrf": token, "group": "Nope", "reason": "lab template"},
        files={"workspace": ("lab.wsp", wsp.read_bytes(), "application/xml")},
    )
    assert (
        "no sample group &#39;Nope&#39;" in refused.text or "no sample group 'Nope'" in refused.text
    )
