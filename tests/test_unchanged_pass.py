"""A pass that finds nothing new leaves the statistics and the cohort report as they are;
any change to what they are made from has them written again (results/written_from.json)."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest

from cohort.audit import AuditLog
from cohort.store import Store
from cohort.study import Study
from flows.outcome import write_cohort_outputs
from reports.written_from import COHORT_OUTPUTS, WRITTEN_FROM, changed_inputs
from tests.conftest import processed_demo_samples

SAMPLES = ("P01_BL_BCELL", "P01_M1_BCELL", "P02_BL_BCELL", "P01_BL_TREG")


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    return processed_demo_samples(tmp_path_factory.mktemp("unchanged") / "study", 1000, SAMPLES)


@pytest.fixture()
def study(processed, tmp_path):
    root = tmp_path / "study"
    shutil.copytree(processed, root)
    return root


class CountingWriters:
    """Stand-ins for write_results and write_report: each call counted, each output written
    with the call's number, so a rewrite shows in the files too."""

    def __init__(self, error: str = ""):
        self.calls, self.error = 0, error

    def results(self, study, store, trail=None):
        self.calls += 1
        for name in COHORT_OUTPUTS:
            if name.startswith("results/"):
                (study.root / name).parent.mkdir(parents=True, exist_ok=True)
                (study.root / name).write_text(f"write {self.calls}\n")
        return SimpleNamespace(broken_inputs={}), self.error

    def report(self, study, store, results):
        path = study.root / "reports" / "cohort_report.pdf"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"report {self.calls}\n")


def _write(root: Path, writers: CountingWriters, log: list | None = None) -> str:
    study = Study(root)
    store = Store(study.db_path)
    try:
        outputs, _ = write_cohort_outputs(
            study,
            store,
            writers.results,
            writers.report,
            only_if_changed=True,
            log=(log if log is not None else []).append,
        )
    finally:
        store.close()
    return outputs


def _audit(root: Path, action: str, sample_id: str = "") -> None:
    store = Store(root / "immunomon.db")
    try:
        AuditLog(store.conn).append("ana", action, "checked the gates", "test", sample_id)
    finally:
        store.close()


def _sql(root: Path, statement: str, *parameters) -> None:
    conn = sqlite3.connect(root / "immunomon.db")
    with conn:
        conn.execute(statement, parameters)
    conn.close()


def test_an_unchanged_second_write_leaves_the_outputs_as_they_are(study):
    writers = CountingWriters()
    first = _write(study, writers)
    assert writers.calls == 1 and first.startswith("wrote the cohort report")
    assert (study / WRITTEN_FROM).is_file()
    report = (study / "reports" / "cohort_report.pdf").stat().st_mtime_ns
    second = _write(study, writers)
    assert writers.calls == 1
    assert second.startswith("left the cohort report") and "nothing they are made from" in second
    assert (study / "reports" / "cohort_report.pdf").stat().st_mtime_ns == report
    # What a pass itself adds (its audit entry, a file seen again) is no change.
    _audit(study, "pass")
    _sql(study, "UPDATE files SET last_seen='2099-01-01T00:00:00+00:00'")
    assert _write(study, writers).startswith("left") and writers.calls == 1


def _approve(root: Path) -> None:
    _audit(root, "approve", "P01_BL_BCELL")


def _edit_clinical(root: Path) -> None:
    path = root / "clinical" / "visits.csv"
    lines = path.read_text().splitlines()
    head, first = lines[0].split(","), lines[1].split(",")
    column = head.index("lymphocytes_per_ul")
    first[column] = str(float(first[column]) + 1)
    path.write_text("\n".join([lines[0], ",".join(first), *lines[2:]]) + "\n")


def _edit_plan(root: Path) -> None:
    with open(root / "study.yaml", "a") as fh:
        fh.write("# the analysis plan reviewed\nqc_reports: all\n")


def _regate(root: Path) -> None:
    _sql(root, "UPDATE populations SET count=count+1 WHERE population='cd19_b'")


def _delete_report(root: Path) -> None:
    (root / "reports" / "cohort_report.pdf").unlink()


def _alter_statistics(root: Path) -> None:
    (root / "results" / "statistics.csv").write_text("analysis,p\nmine,0.001\n")


def _signed_override(root: Path) -> None:
    """What a signed override leaves: the sample re-gated (a new current result) and the
    override in the trail."""
    _sql(root, "UPDATE gates SET note='manual' WHERE gate='t_cd27'")
    _audit(root, "override", "P01_BL_BCELL")


def _tamper_with_a_pass_entry(root: Path) -> None:
    """A pass's own entry is no change, but editing it by hand breaks the trail, which voids
    the approvals the report counts."""
    _audit(root, "pass")
    _sql(root, "UPDATE audit SET reason='nothing happened' WHERE action='pass'")


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (_approve, "store audit"),
        (_edit_clinical, "clinical/visits.csv"),
        (_edit_plan, "study.yaml"),
        (_regate, "store populations"),
        (_delete_report, "reports/cohort_report.pdf missing or altered"),
        (_alter_statistics, "results/statistics.csv missing or altered"),
        (_signed_override, "store audit, store gates"),
        (_tamper_with_a_pass_entry, "audit trail check"),
    ],
)
def test_a_changed_input_or_output_writes_them_again(study, change, named):
    writers = CountingWriters()
    _write(study, writers)
    change(study)
    log: list[str] = []
    outputs = _write(study, writers, log)
    assert writers.calls == 2 and outputs.startswith("wrote the cohort report")
    assert len(log) == 1 and named in log[0], log
    assert (study / "results" / "statistics.csv").read_text() == "write 2\n"
    assert _write(study, writers).startswith("left") and writers.calls == 2  # recorded again


def test_every_writer_anchors_the_report_it_writes(study):
    """The pass's and the report command's writer (``write_cohort_outputs``) and the
    review's publish (``update_outputs``) were two copies of one write, and only the publish
    anchored the trail beside the study as a report was written; now both are one write,
    and the pass's report is anchored too (README: every cohort report is)."""
    from cohort.audit import anchors_path, read_anchors, verify_study_trail

    _audit(study, "approve", "P01_BL_BCELL")
    _write(study, CountingWriters())
    anchors, bad = read_anchors(anchors_path(study))
    store = Store(study / "immunomon.db")
    try:
        head = AuditLog(store.conn).entries()[-1]
        check = verify_study_trail(store.conn, study)
    finally:
        store.close()
    assert bad == [] and [(a.seq, a.hash) for a in anchors] == [(head.seq, head.hash)]
    assert check.problems == [] and check.warnings == []


def test_a_write_that_left_something_out_is_written_again_next_pass(study):
    """A broken clinical file: what it feeds is left out, so no record is kept and the next
    pass writes everything again (and says again what it leaves out)."""
    _write(study, CountingWriters())
    _edit_clinical(study)
    broken = CountingWriters(error="relapses.csv, line 3: not a date")
    _write(study, broken)
    assert broken.calls == 1 and not (study / WRITTEN_FROM).exists()
    _write(study, broken)
    assert broken.calls == 2


def test_a_changed_source_file_changes_the_code_digest(tmp_path):
    from reports.outputs import CODE_PACKAGES, code_digest

    for package in CODE_PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "module.py").write_text("X = 1\n")
    before = code_digest(tmp_path)
    (tmp_path / "stats" / "module.py").write_text("X = 2\n")
    assert code_digest(tmp_path) != before
    (tmp_path / "stats" / "__pycache__").mkdir()
    changed = code_digest(tmp_path)
    (tmp_path / "stats" / "__pycache__" / "module.pyc").write_bytes(b"compiled")
    assert code_digest(tmp_path) == changed  # compiled files are not the code


@pytest.mark.slow  # the real statistics and report: ~50 s on the shared host
def test_the_real_writers_outputs_are_those_recorded_and_a_publish_is_recorded(study):
    """update_outputs (the review's publish, the report command's writers) writes exactly
    COHORT_OUTPUTS and records them: the pass after it leaves them as they are."""
    from reports.outputs import output_inputs, update_outputs

    s = Study(study)
    store = Store(s.db_path)
    try:
        assert update_outputs(s, store) == ""
        inputs = output_inputs(s, store)
    finally:
        store.close()
    written = {
        str(p.relative_to(study))
        for folder in ("results", "reports")
        for p in (study / folder).glob("*")
        if p.is_file() and p.name != Path(WRITTEN_FROM).name
    }
    assert written == set(COHORT_OUTPUTS)
    assert changed_inputs(study, inputs) == []


def test_cohort_scale_bench_counts_processing_and_writing_apart():
    """bench/cohort_scale.py counted a first pass minus an unchanged second as processing;
    since an unchanged pass writes nothing, that took the results and the report in too. Now
    each is its stages' CPU, and the QC PDFs' cost is a difference of processing alone (a
    slower start-up of one run does not enter it)."""
    from bench.cohort_scale import cost_lines

    def measure(startup, intake, processing, results, report, total):
        stages = {
            "start-up": startup,
            "intake": intake,
            "processing": processing,
            "results and statistics": results,
            "cohort report": report,
            "stopping": 1.0,
        }
        return {"cpu_by_stage": stages, "cpu_by_process": {"flow process": total}}

    results = [
        {
            "scale": 1,
            "qc_reports": "none",
            "first": measure(30.0, 2.0, 18.0, 5.0, 20.0, 76.0),
            "second": measure(29.0, 2.0, 0.5, 0.0, 0.0, 32.5),
        },
        {"scale": 1, "qc_reports": "all", "first": measure(60.0, 2.0, 23.0, 5.0, 20.0, 111.0)},
    ]
    lines = cost_lines(results)
    assert lines[1] == (
        "1x, QC PDFs none, first pass: processing 20.0 CPU-s, writing 25.0, start-up and "
        "stopping 31.0; unchanged second pass 32.5 CPU-s, of it writing 0.0"
    )
    assert lines[0].startswith("1x, QC PDFs all, first pass: processing 25.0 CPU-s")
    assert lines[2] == (
        "1x: QC PDFs for every sample add 5.0 CPU-s to processing's 20.0 = 0.25x "
        "(goal: at most 0.5x)"
    )
