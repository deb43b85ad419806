"""Intake of bad inputs: each is quarantined with a reason; inbox/ is never modified."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest

from cohort.intake import plan_intake
from cohort.store import Store
from cohort.study import Study
from panels.fcs import read_events
from simulate.fcs_writer import write_fcs
from tests.conftest import write_simulated


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def _plan(root):
    study = Study(root)
    store = Store(study.db_path)
    keys = {t: (s.sha256, "1") for t, s in study.strategies.items()}
    return study, store, plan_intake(study, store, keys)


def test_bad_inputs_are_quarantined_with_reasons(study_copy):
    inbox = study_copy / "inbox"
    good, _ = write_simulated(inbox / "P01_BL_BCELL.fcs", "BCELL", n_events=2000)
    shutil.copy(good, inbox / "P02_BL_BCELL.fcs")  # same content
    shutil.copy(good, inbox / "P01-BL-BCELL.fcs")  # bad name
    shutil.copy(good, inbox / "P01_M2_BCELL.fcs")  # unknown visit
    shutil.copy(good, inbox / "P01_BL_NK.fcs")  # unknown panel
    (inbox / "P03_BL_BCELL.fcs").write_text("not cytometry")  # not FCS
    (inbox / "P04_BL_BCELL.fcs").write_bytes(good.read_bytes()[:5000])  # truncated
    write_fcs(inbox / "P05_BL_BCELL.fcs", np.zeros((0, 4)), ["FSC-A", "FSC-H", "SSC-A", "T"])
    write_simulated(inbox / "P06_BL_BCELL.fcs", "TREG", n_events=2000)  # wrong tube
    other = read_events(good)  # a spillover naming a detector the file does not have
    write_fcs(
        inbox / "P07_BL_BCELL.fcs",
        other.events,
        other.header.pnn,
        other.header.pns,
        {"$SPILLOVER": "2,FITC-A,BV786-A,1,0.1,0.02,1"},
    )
    before = _digest(inbox)

    study, store, plan = _plan(study_copy)
    reasons = {d.path.name: d.reason for d in plan.quarantined}
    assert [d.path.name for d in plan.ready] == ["P01_BL_BCELL.fcs"]
    assert "identical content" in reasons["P02_BL_BCELL.fcs"]
    assert "P01_BL_BCELL.fcs" in reasons["P02_BL_BCELL.fcs"]
    assert "does not match the study's pattern" in reasons["P01-BL-BCELL.fcs"]
    assert "visit 'M2' is not in study.yaml" in reasons["P01_M2_BCELL.fcs"]
    assert "panel token 'NK'" in reasons["P01_BL_NK.fcs"]
    assert "not an FCS file" in reasons["P03_BL_BCELL.fcs"]
    assert "truncated" in reasons["P04_BL_BCELL.fcs"]
    assert "no events" in reasons["P05_BL_BCELL.fcs"]
    wrong_tube = reasons["P06_BL_BCELL.fcs"]
    assert "missing marker(s) CD19, CD24, CD38, CD27, IgD, IgM" in wrong_tube
    assert "none of its populations can be measured" in wrong_tube
    assert "names channel(s) BV786-A that the file does not have" in reasons["P07_BL_BCELL.fcs"]
    for name, reason in reasons.items():
        note = (study.quarantine_dir / f"{name}.reason.txt").read_text()
        assert reason in note
        assert (study.quarantine_dir / "files" / name).read_bytes() == (inbox / name).read_bytes()
    assert _digest(inbox) == before
    store.close()


def test_second_intake_keeps_decisions(study_copy):
    inbox = study_copy / "inbox"
    (inbox / "P03_BL_BCELL.fcs").write_text("not cytometry")
    _, store, first = _plan(study_copy)
    store.close()
    _, store, second = _plan(study_copy)
    # The same decision, kept; not made (copied, reported) anew.
    assert [d.reason for d in second.still_quarantined] == [d.reason for d in first.quarantined]
    assert second.quarantined == []
    assert store.files_frame().shape[0] == 1  # one row per file, not one per run
    store.close()


def test_study_yaml_errors_name_the_key(tmp_path):
    from cohort.study import StudyError

    (tmp_path / "study.yaml").write_text(
        "study: x\nvisits: {BL: 0}\nbaseline: M1\nfilename_pattern: '^(?P<patient>P.)'\n"
        "panels: {B: bcell}\n"
    )
    with pytest.raises(StudyError) as err:
        Study(tmp_path)
    message = str(err.value)
    assert "filename_pattern" in message and "panel, visit" in message
