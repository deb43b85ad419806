"""Inputs that used to corrupt a study (issue 23 item 4, issue 25's data items), each replayed
as an attack that must now fail: one sample, one file; nothing in inbox/ followed or left out;
absurd headers refused before allocating; invisible characters refused; quarantine/ never
overwritten or stale; the watcher and a pass agree on which copies are complete."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cohort.clinical import ClinicalDataError, load_clinical
from cohort.intake import plan_intake
from cohort.store import SCHEMA, SampleRecord, Store
from cohort.study import Study
from panels.fcs import FcsReadError, read_events, scan_header
from simulate.fcs_writer import write_fcs
from tests.conftest import write_simulated

REPO = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def _study_template(tmp_path_factory):
    from simulate.demo import DemoOptions, simulate_study

    root = tmp_path_factory.mktemp("template") / "study"
    simulate_study(root, DemoOptions(events_per_file=1000, include_bad_files=False))
    shutil.rmtree(root / "inbox")
    (root / "inbox").mkdir()
    return root


@pytest.fixture()
def study_copy(_study_template, tmp_path):
    """conftest's empty demo study, simulated once for this module and copied per test."""
    return Path(shutil.copytree(_study_template, tmp_path / "study"))


def _plan(root: Path, **options):
    study = Study(root)
    store = Store(study.db_path)
    keys = {t: (s.sha256, "1") for t, s in study.strategies.items()}
    return study, store, plan_intake(study, store, keys, **options)


def _commit(study: Study, store: Store, plan, count: int = 150) -> None:
    """Stand in for processing: a result per ready file, as the flow would store it."""
    for d in plan.ready:
        strategy = study.strategies[d.name.panel_token]
        stat = d.path.stat()
        record = SampleRecord(
            d.name.sample_id,
            d.sha256,
            d.name.patient_id,
            d.name.visit,
            d.name.panel_token,
            1000,
            strategy.sha256,
            "1",
            populations=[
                {"population": "cd19_b", "parent": "lymph", "count": count, "parent_count": 1000}
            ],
        )
        store.record_sample(
            file_name=d.path.name,
            size=stat.st_size,
            mtime_ns=stat.st_mtime_ns,
            result=record,
            run_id="test",
            replaces=d.replaces,
        )


def _variant(source: Path, target: Path, tag: bytes) -> Path:
    """The same tube with other content: bytes after the DATA segment change the sha256 only."""
    target.write_bytes(source.read_bytes() + tag)
    return target


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.iterdir()
        if p.is_file() and not p.is_symlink()
    }


# -- one sample, one file name ------------------------------------------------------------------


def test_two_extension_cases_for_one_sample_are_a_named_conflict_not_two_rows(study_copy):
    inbox = study_copy / "inbox"
    good, _ = write_simulated(inbox / "P01_BL_BCELL.fcs", "BCELL", n_events=2000)
    _variant(good, inbox / "P01_BL_BCELL.FCS", b"other")
    study, store, plan = _plan(study_copy)
    assert plan.ready == []  # neither is taken: which one is right is the lab's call
    reasons = {d.path.name: d.reason for d in plan.quarantined}
    for name in ("P01_BL_BCELL.fcs", "P01_BL_BCELL.FCS"):
        assert "2 files name sample P01_BL_BCELL" in reasons[name]
        assert "P01_BL_BCELL.fcs" in reasons[name] and "P01_BL_BCELL.FCS" in reasons[name]
    store.close()

    # The lab removes one: the other is processed; then the second name comes back.
    (inbox / "P01_BL_BCELL.FCS").rename(study_copy / "aside.FCS")
    study, store, plan = _plan(study_copy)
    assert [d.path.name for d in plan.ready] == ["P01_BL_BCELL.fcs"]
    assert not (study.quarantine_dir / "files" / "P01_BL_BCELL.fcs").exists()  # released
    _commit(study, store, plan)
    store.close()
    shutil.copy2(study_copy / "aside.FCS", inbox / "P01_BL_BCELL.FCS")
    study, store, plan = _plan(study_copy)
    assert plan.unchanged == [inbox / "P01_BL_BCELL.fcs"] and plan.ready == []
    (refused,) = plan.quarantined
    assert "already comes from P01_BL_BCELL.fcs" in refused.reason
    current = store.current_populations()
    assert len(current[current.population == "cd19_b"]) == 1
    # Only the current refusal is listed: the first pass's row of this name is not kept.
    rows = store.files_frame()
    assert rows.groupby("file").size().max() == 1, rows
    store.close()


def test_a_sample_under_a_new_name_replaces_the_old_result_once_the_old_file_is_gone(
    study_copy,
):
    inbox = study_copy / "inbox"
    good, _ = write_simulated(inbox / "P01_BL_BCELL.fcs", "BCELL", n_events=2000)
    study, store, plan = _plan(study_copy)
    _commit(study, store, plan, count=150)
    store.close()
    _variant(good, inbox / "P01_BL_BCELL.FCS", b"re-export")
    good.unlink()
    study, store, plan = _plan(study_copy)
    (decision,) = plan.ready
    assert decision.replaces  # named as the acquisition it replaces
    _commit(study, store, plan, count=54)
    current = store.current_populations()
    assert current.set_index("population")["count"].to_dict() == {"cd19_b": 54}
    frame = store.files_frame().set_index("file")
    assert frame.loc["P01_BL_BCELL.fcs", "status"] == "superseded"
    assert "P01_BL_BCELL.FCS" in frame.loc["P01_BL_BCELL.fcs", "reason"]
    store.close()


def test_a_name_ending_in_a_newline_is_refused_not_a_second_sample(study_copy):
    inbox = study_copy / "inbox"
    good, _ = write_simulated(inbox / "P01_BL_BCELL.fcs", "BCELL", n_events=2000)
    _variant(good, inbox / "P01_BL_BCELL.fcs\n", b"x")
    _variant(good, inbox / "P01\u200b_BL_BCELL.fcs", b"y")  # looks exactly like P01_BL_BCELL
    _variant(good, inbox / "P\u202e10_BL_BCELL.fcs", b"z")  # right-to-left override
    study, store, plan = _plan(study_copy)
    assert [d.path.name for d in plan.ready] == ["P01_BL_BCELL.fcs"]
    reasons = {d.path.name: d.reason for d in plan.quarantined}
    assert "U+000A" in reasons["P01_BL_BCELL.fcs\n"]
    assert "U+200B ZERO WIDTH SPACE at position 4" in reasons["P01\u200b_BL_BCELL.fcs"]
    assert "U+202E RIGHT-TO-LEFT OVERRIDE" in reasons["P\u202e10_BL_BCELL.fcs"]
    assert all("invisible or control character" in r for r in reasons.values())
    store.close()


# -- nothing in inbox/ followed, nothing left out -----------------------------------------------


def test_links_fifos_and_folders_are_listed_with_a_reason_never_followed(study_copy, tmp_path):
    inbox = study_copy / "inbox"
    outside, _ = write_simulated(tmp_path / "elsewhere.fcs", "BCELL", n_events=2000)
    os.symlink("/etc/passwd", inbox / "P01_BL_BCELL.fcs")
    os.symlink(outside, inbox / "P02_BL_BCELL.fcs")  # an FCS file outside the study
    os.symlink(tmp_path / "gone.fcs", inbox / "P03_BL_BCELL.fcs")  # dangling
    os.mkfifo(inbox / "P04_BL_BCELL.fcs")
    (inbox / "P05_BL_BCELL.fcs").mkdir()
    before = sorted(os.listdir(inbox))

    result: dict = {}

    def intake() -> None:
        study, store, plan = _plan(study_copy)
        store.close()
        result["plan"] = study, plan

    worker = threading.Thread(target=intake)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "intake hung on the FIFO"
    study, plan = result["plan"]
    store = Store(study.db_path)
    assert plan.ready == []
    reasons = {d.path.name: d.reason for d in plan.quarantined}
    assert "symbolic link (to /etc/passwd)" in reasons["P01_BL_BCELL.fcs"]
    assert f"symbolic link (to {outside})" in reasons["P02_BL_BCELL.fcs"]
    assert "symbolic link" in reasons["P03_BL_BCELL.fcs"]
    assert "named pipe (FIFO)" in reasons["P04_BL_BCELL.fcs"]
    assert "a folder" in reasons["P05_BL_BCELL.fcs"]
    copies = study.quarantine_dir / "files"
    assert not copies.exists() or not any(copies.iterdir())  # nothing followed and copied
    for name in reasons:
        assert (study.quarantine_dir / f"{name}.reason.txt").is_file()
    # Each one is in samples.csv's table, with its reason.
    listed = store.files_frame().set_index("file")
    assert set(reasons) <= set(listed.index)
    assert (listed.loc[list(reasons), "status"] == "quarantined").all()
    assert sorted(os.listdir(inbox)) == before
    store.close()

    _, store, again = _plan(study_copy)  # the next pass: as before, not anew
    assert again.quarantined == [] and len(again.still_quarantined) == 5
    store.close()


def test_inspect_and_process_refuse_a_fifo_instead_of_hanging(tmp_path):
    fifo = tmp_path / "pipe.fcs"
    os.mkfifo(fifo)
    for argv in (["inspect", str(fifo)], ["process", str(fifo), "--panel", "bcell"]):
        done = subprocess.run(  # the timeout fails the test if it hangs
            [sys.executable, "-m", "flows.cli", *argv],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
        )
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2, (argv, done.stderr[-1500:])
        assert len(lines) == 1 and "named pipe (FIFO)" in lines[0], (argv, done.stderr)


# -- absurd headers, damaged DATA ---------------------------------------------------------------


def _with_keyword(tmp_path: Path, name: str, old: bytes, new: bytes, events=None) -> Path:
    events = np.arange(300, dtype=np.float64).reshape(100, 3) if events is None else events
    pad = b"x" * 40
    path = write_fcs(
        tmp_path / name, events, ["FSC-A", "SSC-A", "Time"], keywords={"$ZPAD": pad.decode()}
    )
    raw = path.read_bytes()
    assert old in raw
    raw = raw.replace(old, new, 1).replace(pad, pad[: len(pad) - (len(new) - len(old))], 1)
    path.write_bytes(raw)
    return path


@pytest.mark.parametrize("n_par", ["20000000", "1000000000"])
def test_a_par_the_text_cannot_back_is_refused_before_allocating(tmp_path, n_par):
    path = _with_keyword(tmp_path, "par.fcs", b"|$PAR|3|", f"|$PAR|{n_par}|".encode())
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(FcsReadError) as refused:
        scan_header(path)
    took = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert (
        f"keyword $PAR={n_par}" in refused.value.reason
        and "describes only 3" in refused.value.reason
    )
    assert took < 2.0 and peak < 20e6, (took, peak)  # was 30 s and 1.7 GB for 2e7


def test_data_that_is_all_nan_or_random_bytes_is_quarantined_not_processed(study_copy):
    inbox = study_copy / "inbox"
    good, _ = write_simulated(inbox / "P01_BL_BCELL.fcs", "BCELL", n_events=2000)
    header = scan_header(good)
    raw = bytearray(good.read_bytes())
    data = slice(header.data_start, header.data_end + 1)
    nan = raw.copy()
    nan[data] = np.full(header.data_bytes_expected // 4, np.nan, "<f4").tobytes()
    (inbox / "P02_BL_BCELL.fcs").write_bytes(bytes(nan))
    noise = raw.copy()
    noise[data] = np.random.default_rng(5).bytes(header.data_bytes_expected)
    (inbox / "P03_BL_BCELL.fcs").write_bytes(bytes(noise))
    study, store, plan = _plan(study_copy)
    assert [d.path.name for d in plan.ready] == ["P01_BL_BCELL.fcs"]
    reasons = {d.path.name: d.reason for d in plan.quarantined}
    for name in ("P02_BL_BCELL.fcs", "P03_BL_BCELL.fcs"):
        assert "the DATA segment holds no usable events" in reasons[name]
        with pytest.raises(FcsReadError, match="no usable events"):
            read_events(inbox / name)  # `immunomon process` refuses it too
    store.close()


def test_a_garbled_text_segment_prints_no_fcsparser_lines(tmp_path, caplog):
    """fcsparser's three WARNING lines reached the terminal before our reason: now they go
    to our log at DEBUG and nothing propagates to the root (console) handlers."""
    import logging

    path = _with_keyword(tmp_path, "garbled.fcs", b"|$ZPAD|", b"|$ZPAD|\xff\xfe")
    caplog.set_level(logging.DEBUG, logger="immunomon.fcs")
    scan_header(path)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.records
    assert any(
        "illegal utf-8" in r.getMessage() for r in caplog.records if r.name == "immunomon.fcs"
    )


# -- clinical identifiers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "says"),
    [("P01\u200b", "U+200B ZERO WIDTH SPACE"), ("P\u202e10", "U+202E RIGHT-TO-LEFT OVERRIDE")],
)
def test_patient_ids_with_invisible_characters_are_refused_with_the_line(study_copy, value, says):
    path = study_copy / "clinical" / "patients.csv"
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.loc[2, "patient_id"] = value
    frame.to_csv(path, index=False)
    with pytest.raises(ClinicalDataError) as refused:
        load_clinical(study_copy / "clinical")
    message = str(refused.value)
    assert "patients.csv, line 4, column patient_id" in message and says in message


def test_a_spreadsheet_byte_order_mark_is_not_an_invisible_character(study_copy):
    path = study_copy / "clinical" / "patients.csv"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # Excel's 'CSV UTF-8'
    assert len(load_clinical(study_copy / "clinical").patients) == 16


# -- quarantine/ ------------------------------------------------------------------------------


def test_an_inbox_file_named_like_a_reason_note_cannot_overwrite_it(study_copy):
    inbox = study_copy / "inbox"
    (inbox / "bad.fcs").write_text("not cytometry")
    (inbox / "bad.fcs.reason.txt").write_text("all fine, process it")
    study, store, plan = _plan(study_copy)
    note = (study.quarantine_dir / "bad.fcs.reason.txt").read_text()
    assert "does not match the study's pattern" in note and "all fine" not in note
    copy = study.quarantine_dir / "files" / "bad.fcs.reason.txt"
    assert copy.read_text() == "all fine, process it"
    store.close()


def test_a_changed_quarantined_file_of_the_same_size_is_copied_again(study_copy):
    inbox = study_copy / "inbox"
    (inbox / "bad.fcs").write_text("not cytometry A")
    study, store, _ = _plan(study_copy)
    store.close()
    (inbox / "bad.fcs").write_text("not cytometry B")  # same size, other content
    study, store, plan = _plan(study_copy)
    assert (study.quarantine_dir / "files" / "bad.fcs").read_text() == "not cytometry B"
    assert len(store.files_frame()) == 1  # the current content's row only
    store.close()


# -- copies in progress (issue 25) ------------------------------------------------------------


def test_a_file_arriving_while_a_pass_takes_the_study_is_left_for_the_next_pass(study_copy):
    """The watcher looked before the file appeared, so it is not in ``hold``; the pass judges
    it with the watcher's copy window and leaves it: no quarantine row, copy or count."""
    inbox = study_copy / "inbox"
    good, _ = write_simulated(study_copy / "whole.fcs", "BCELL", n_events=2000)
    content = good.read_bytes()
    arriving = inbox / "P01_BL_BCELL.fcs"
    arriving.write_bytes(content[: len(content) // 3])  # a third copied, just now
    study, store, plan = _plan(study_copy, copy_window=(0.5, 3600.0))
    assert plan.arriving == [arriving] and plan.quarantined == [] and plan.ready == []
    assert store.files_frame().empty and not (study.quarantine_dir / "files").exists()
    store.close()
    arriving.write_bytes(content)  # the copy completes; it settles
    old = time.time() - 5
    os.utime(arriving, (old, old))
    study, store, plan = _plan(study_copy, copy_window=(0.5, 3600.0))
    assert [d.path for d in plan.ready] == [arriving]
    store.close()


def test_a_half_copy_quarantined_by_the_nightly_pass_leaves_nothing_once_processed(study_copy):
    inbox = study_copy / "inbox"
    good, _ = write_simulated(study_copy / "whole.fcs", "BCELL", n_events=2000)
    for name in ("P02_BL_BCELL.fcs", "P03_BL_BCELL.fcs", "P04_BL_BCELL.fcs"):
        (inbox / name).write_text("bad")
    content = good.read_bytes()
    target = inbox / "P01_BL_BCELL.fcs"
    target.write_bytes(content[: len(content) // 3])
    study, store, plan = _plan(study_copy)  # a pass without a watcher: quarantined
    assert "truncated" in {d.path.name: d.reason for d in plan.quarantined}[target.name]
    store.close()
    target.write_bytes(content)
    study, store, plan = _plan(study_copy)
    _commit(study, store, plan)
    assert [d.path.name for d in plan.ready] == [target.name]
    assert not (study.quarantine_dir / "files" / target.name).exists()
    assert not (study.quarantine_dir / f"{target.name}.reason.txt").exists()
    frame = store.files_frame()
    assert frame.groupby("file").size().max() == 1
    assert (frame.status == "quarantined").sum() == 3  # the three bad files, not four
    store.close()


@pytest.mark.slow
def test_watcher_race_a_file_arriving_as_a_pass_starts_is_processed_once(tmp_path, prefect_harness):
    """The race of issue 25, replayed: a copy starts after the watcher looked and before the
    pass has the study. Afterwards: one processed row per file, nothing quarantined."""
    from flows.nightly import run_study
    from flows.watch import watch_inbox
    from tests.test_operations import _small_study

    root = _small_study(tmp_path / "study", keep=("P01",), visits=("BL",))
    late = root / "inbox" / "P01_BL_TREG.fcs"
    content = late.read_bytes()
    late.unlink()
    settle, stop, runs, after_first = 1.0, threading.Event(), [], {}

    def run(hold):
        runs.append(list(hold))
        first = len(runs) == 1
        if first:  # the copy starts after the watcher's look, before the pass has the study
            late.write_bytes(content[: len(content) // 3])
        run_study(root, 1, hold, copy_window=(settle, 3600.0))
        if first:
            after_first["rows"] = pd.read_csv(root / "results" / "samples.csv")
            late.write_bytes(content)  # the copy completes after that pass

    watcher = threading.Thread(
        target=watch_inbox,
        args=(root, run),
        kwargs={"settle_seconds": settle, "poll_interval": 0.2, "stop": stop, "polling": True},
    )
    watcher.start()
    samples = root / "results" / "samples.csv"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if samples.exists() and (pd.read_csv(samples).status == "processed").sum() == 2:
            break
        time.sleep(0.5)
    stop.set()
    watcher.join(timeout=60)
    assert list(after_first["rows"].file) == ["P01_BL_BCELL.fcs"]  # left, not quarantined
    table = pd.read_csv(samples)
    assert sorted(table.file) == ["P01_BL_BCELL.fcs", "P01_BL_TREG.fcs"], table
    assert (table.status == "processed").all()
    assert not (root / "quarantine" / "files" / late.name).exists()
    pops = pd.read_csv(root / "results" / "populations.csv")
    assert pops.groupby(["sample_id", "population"]).size().max() == 1
    assert len(runs) == 2  # the late file came in the next pass


# -- the sha256 index ---------------------------------------------------------------------------


def test_an_existing_store_gets_the_indexes_and_lookups_use_them(tmp_path):
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:  # a store as made before the indexes
        conn.executescript(SCHEMA)
        conn.executemany(
            "INSERT INTO files VALUES (?,?,1,1,'processed','',NULL,'t','t')",
            [(f"F{i}.fcs", f"{i:064x}") for i in range(5000)],
        )
    store = Store(db)
    names = {r[0] for r in store.conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"files_by_sha256", "samples_by_sample_id", "files_by_sample_key"} <= names
    plan = store.conn.execute(
        "EXPLAIN QUERY PLAN SELECT file_name FROM files WHERE sha256=? AND file_name<>? "
        "AND status='processed' ORDER BY first_seen LIMIT 1",
        ("x", "y"),
    ).fetchall()
    assert any("files_by_sha256" in str(row) for row in plan), plan
    assert store.processed_under_other_name("other.fcs", f"{77:064x}") == "F77.fcs"
    store.close()


# -- the property: one sample id never maps to two current rows ----------------------------------

_NAMES = st.builds(
    lambda patient, ext, tail: f"{patient}_BL_BCELL.{ext}{tail}",
    st.sampled_from(["P01", "P02", "P01\u200b", "P\u202e01"]),
    st.sampled_from(["fcs", "FCS", "Fcs"]),
    st.sampled_from(["", "", "\n", " "]),
)


@pytest.fixture(scope="module")
def property_study(_study_template, tmp_path_factory):
    root = Path(shutil.copytree(_study_template, tmp_path_factory.mktemp("property") / "study"))
    tube, _ = write_simulated(root / "tube.fcs", "BCELL", n_events=1500)
    return root, tube.read_bytes()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rounds=st.lists(st.sets(_NAMES, max_size=4), min_size=1, max_size=3))
def test_one_sample_id_never_has_two_current_rows(property_study, rounds):
    root, tube = property_study
    inbox = root / "inbox"
    for path in inbox.iterdir():
        path.unlink()
    for leftover in ("immunomon.db", "immunomon.db-wal", "immunomon.db-shm"):
        (root / leftover).unlink(missing_ok=True)
    shutil.rmtree(root / "quarantine", ignore_errors=True)
    for k, names in enumerate(rounds):  # each round: the inbox as the lab left it, one pass
        for path in inbox.iterdir():
            if path.name not in names:
                path.unlink()
        for name in names:
            if not (inbox / name).exists():
                (inbox / name).write_bytes(tube + f"{name}{k}".encode())
        study, store, plan = _plan(root)
        ready_ids = [d.name.sample_id for d in plan.ready]
        assert len(ready_ids) == len(set(ready_ids)), plan.ready
        _commit(study, store, plan, count=10 + k)
        current = store.current_populations()
        sizes = current.groupby(["sample_id", "population"]).size()
        assert sizes.empty or sizes.max() == 1, current
        assert all("\u200b" not in s and "\u202e" not in s for s in current.sample_id)
        store.close()
