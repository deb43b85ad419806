"""Expert study templates: set once for a panel, mapped through each sample's landmark,
audited, part of the results' identity, named in the report's Methods."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from cohort.audit import AuditLog
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
from simulate.real_shaped import RealShapedOptions, simulate_real_shaped

OPTIONS = RealShapedOptions(patients=3, visits=("BL", "M1"), events_per_file=2500, seed=31)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    return simulate_real_shaped(tmp_path_factory.mktemp("templates") / "study", OPTIONS)


@pytest.fixture(scope="module")
def referenced(written, tmp_path_factory):
    """The study with its TREG reference built (once: gating is the costly part)."""
    root = shutil.copytree(written, tmp_path_factory.mktemp("referenced") / "study")
    study = Study(root)
    reference, _ = build_panel_reference(study, "TREG", _reference_files(study))
    return root, reference


def _reference_files(study: Study):
    return sorted(study.inbox.glob("*_TREG.fcs"))[:5]  # the fewest a reference takes


@pytest.fixture
def study(written, tmp_path):
    root = shutil.copytree(written, tmp_path / "study")
    return Study(root)


def _gate(study: Study, sample_id: str):
    data = read_events(study.inbox / f"{sample_id}.fcs")
    resolved = resolve_panel(study.panels["TREG"], data.header)
    return gate_sample(data, resolved, study.strategies["TREG"])


def _threshold(gating, name: str) -> ThresholdMark:
    return next(g.gate for g in gating.gates if g.name == name)


def _landmark(gating) -> float:
    """The sample's CD45RA landmark, found independently of cohort.templates."""
    return landmark_peak(gating.space["CD45RA"][gating.masks["cd4_t"]], "high")


def test_a_template_set_on_a_sample_is_mapped_through_every_samples_landmark(study):
    before = study.strategies["TREG"].sha256
    own = _landmark(_gate(study, "R01_BL_TREG"))
    with_store = Store(study.db_path)
    change = set_template(
        study,
        with_store,
        "TREG",
        "t_cd45ra",
        0.47,
        who="Dr Lab",
        reason="expert cut",
        sample_id="R01_BL_TREG",
    )
    with_store.close()
    assert change.template.offset == pytest.approx(0.47 - own, abs=1e-6)
    regated = Study(study.root)
    assert regated.strategies["TREG"].sha256 != before  # the next pass re-gates the panel
    assert regated.strategies["TREG"].offsets == {"t_cd45ra": change.template.offset}
    on_reference = _threshold(_gate(regated, "R01_BL_TREG"), "t_cd45ra")
    assert on_reference.value == pytest.approx(0.47, abs=1e-6)
    assert on_reference.method == "registered"
    other = _gate(regated, "R02_M1_TREG")
    expected = _landmark(other) + change.template.offset
    assert _threshold(other, "t_cd45ra").value == pytest.approx(expected, abs=1e-6)
    assert abs(_landmark(other) - own) > 1e-4  # a different landmark: really mapped


def test_setting_a_template_is_audited_with_who_why_and_the_old_and_new_offsets(study):
    store = Store(study.db_path)
    first = set_template(
        study, store, "TREG", "t_cd45ra", 0.45, who="Dr A", reason="first", sample_id="R01_BL_TREG"
    )
    second = set_template(
        study,
        store,
        "TREG",
        "t_cd45ra",
        0.50,
        who="Dr B",
        reason="moved up",
        sample_id="R01_BL_TREG",
    )
    log = AuditLog(store.conn)
    entries = [e for e in log.entries() if e.action == "template"]
    assert [(e.who, e.reason) for e in entries] == [("Dr A", "first"), ("Dr B", "moved up")]
    assert entries[0].detail["old_offset"] is None
    assert entries[1].detail["old_offset"] == pytest.approx(first.template.offset)
    assert entries[1].detail["new_offset"] == pytest.approx(second.template.offset)
    assert entries[1].detail["reference_sha256_old"] != entries[1].detail["reference_sha256_new"]
    assert second.audit_seq == entries[1].seq and second.regates
    log.verify()  # the chain holds
    store.close()
    template = panel_templates(Study(study.root), "TREG")["t_cd45ra"]
    assert (template.set_by, template.reason, template.given_on) == (
        "Dr B",
        "moved up",
        "R01_BL_TREG",
    )


def test_the_same_offset_again_does_not_regate(study):
    store = Store(study.db_path)
    set_template(
        study, store, "TREG", "t_cd45ra", 0.48, who="A", reason="r", sample_id="R01_BL_TREG"
    )
    sha = Study(study.root).strategies["TREG"].sha256
    again = set_template(
        study, store, "TREG", "t_cd45ra", 0.48, who="B", reason="checked", sample_id="R01_BL_TREG"
    )
    store.close()
    assert not again.regates
    assert Study(study.root).strategies["TREG"].sha256 == sha


def test_pooled_scale_needs_a_reference(study):
    store = Store(study.db_path)
    with pytest.raises(TemplateError, match="reference build"):
        set_template(study, store, "TREG", "t_cd45ra", 0.45, who="A", reason="r")
    store.close()


def test_a_template_on_the_pooled_scale_is_kept_when_the_reference_is_rebuilt(referenced, tmp_path):
    built, reference = referenced
    study = Study(shutil.copytree(built, tmp_path / "study"))
    landmark = reference.thresholds["t_cd45ra"].landmark_reference
    store = Store(study.db_path)
    change = set_template(study, store, "TREG", "t_cd45ra", 0.44, who="Dr P", reason="pooled cut")
    store.close()
    assert change.template.given_on == POOLED
    assert change.template.offset == pytest.approx(0.44 - landmark, abs=1e-6)
    assert change.previous_method == reference.thresholds["t_cd45ra"].method
    assert change.previous_offset == pytest.approx(reference.thresholds["t_cd45ra"].offset)
    rebuilt, _ = build_panel_reference(Study(study.root), "TREG", _reference_files(study))
    assert rebuilt.thresholds["t_cd45ra"].method == "template"
    assert Study(study.root).strategies["TREG"].offsets["t_cd45ra"] == pytest.approx(
        change.template.offset
    )


@pytest.mark.parametrize(
    ("panel", "threshold", "value", "who", "reason", "message"),
    [
        ("NOPE", "t_cd45ra", 0.4, "A", "r", "no panel 'NOPE'"),
        ("TREG", "t_cd99", 0.4, "A", "r", "no threshold 't_cd99'"),
        ("TREG", "t_cd127", 0.4, "A", "r", "no landmark"),
        ("TREG", "t_cd45ra", 0.95, "A", "r", "outside the strategy's bounds"),
        ("TREG", "t_cd45ra", float("nan"), "A", "r", "not a number"),
        ("TREG", "t_cd45ra", 0.4, " ", "r", "name of the person"),
        ("TREG", "t_cd45ra", 0.4, "A", "", "reason"),
    ],
)
def test_a_template_that_cannot_be_set_is_refused_and_changes_nothing(
    study, panel, threshold, value, who, reason, message
):
    store = Store(study.db_path)
    with pytest.raises(TemplateError, match=message) as raised:
        set_template(
            study, store, panel, threshold, value, who=who, reason=reason, sample_id="R01_BL_TREG"
        )
    assert isinstance(raised.value, ImmunomonError)
    assert not any(e.action == "template" for e in AuditLog(store.conn).entries())
    store.close()
    assert not (study.root / "references").exists()


def test_the_reference_sample_must_exist_and_belong_to_the_panel(study):
    store = Store(study.db_path)
    with pytest.raises(TemplateError, match="no file of sample"):
        set_template(
            study, store, "TREG", "t_cd45ra", 0.4, who="A", reason="r", sample_id="R09_BL_TREG"
        )
    with pytest.raises(TemplateError, match="not a TREG sample"):
        set_template(
            study, store, "TREG", "t_cd45ra", 0.4, who="A", reason="r", sample_id="R01_BL_BCELL"
        )
    store.close()


def test_the_report_methods_name_the_template_and_who_set_it(study):
    from reports.outputs import methods_text

    store = Store(study.db_path)
    set_template(
        study,
        store,
        "TREG",
        "t_cd45ra",
        0.46,
        who="Dr Methods",
        reason="lab SOP 12",
        sample_id="R01_BL_TREG",
    )
    store.close()
    lines = template_methods_lines(Study(study.root))
    assert len(lines) == 1
    assert "TREG t_cd45ra" in lines[0] and "Dr Methods" in lines[0] and "lab SOP 12" in lines[0]
    assert "0.460 on sample R01_BL_TREG" in lines[0]
    assert any("Dr Methods" in line for line in methods_text(Study(study.root)))


def test_cli_reference_set(study):
    command = [sys.executable, "-m", "flows.cli", "reference", "set", "--study", str(study.root)]
    args = ["--panel", "TREG", "--value", "0.47", "--reason", "expert", "--who", "Dr CLI"]
    done = subprocess.run(
        [*command, *args, "--threshold", "t_cd45ra", "--sample", "R01_BL_TREG"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "set by Dr CLI" in done.stdout and "re-gates the TREG samples" in done.stdout
    refused = subprocess.run(
        [*command, *args, "--threshold", "t_cd127"], capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "t_cd127 has no landmark" in refused.stderr
    entries = AuditLog(Store(study.db_path).conn).entries()
    assert [e.who for e in entries if e.action == "template"] == ["Dr CLI"]
    assert np.isfinite(panel_templates(Study(study.root), "TREG")["t_cd45ra"].offset)
