"""The study's audit trail: an append-only log in the store, each entry chained to the one
before it by sha256, so an edited or deleted entry is found by recomputing the chain.

Every processing pass, threshold override, approval, exclusion and undo is an entry: who,
when (UTC), what (sample, gate, old and new values, counts before and after), why, and the
software version. An undo is a new entry naming the one it reverses; nothing is deleted.

The chain alone cannot tell a trail cut at its end, or rewritten with every hash recomputed,
from a whole one: both verify. So each person's action, and each report, also writes an
*anchor* (entry number and hash) to an append-only file beside the study
(``audit_anchors.jsonl``) and the report's PDF quotes one; ``verify_trail`` checks the trail
against every anchor it is given."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from cohort.spreadsheet import safe_cell
from panels.errors import ImmunomonError

AUDIT_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    who TEXT NOT NULL,
    action TEXT NOT NULL,
    sample_id TEXT NOT NULL,
    detail TEXT NOT NULL,
    reason TEXT NOT NULL,
    software TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
"""
GENESIS = "0" * 64
# sign_in_failed: written by versions before the bounded sign-in log; still read.
ACTIONS = (
    "pass",
    "override",
    "approve",
    "exclude",
    "undo",
    "sign_in_failed",
    "user_added",
    "user_removed",
    "template",  # an expert study template set or changed (cohort.templates)
    "reference",  # a study reference built (immunomon reference build): the panel re-gates
    "publish",  # results and report rewritten from the store, asked for in review
)
# Each one is anchored as it is written.
PERSON_ACTIONS = ("override", "approve", "exclude", "undo", "template", "reference")
# Accounts added or removed (cohort.accounts) are anchored too once they name the account
# (entries of earlier versions do not, bind nothing and were never anchored).
ACCOUNT_ACTIONS = ("user_added", "user_removed")
ANCHORS_FILE = "audit_anchors.jsonl"
MAX_FIELD = 4000  # characters of a name or reason: a trail entry is read by a person
EXPORT_COLUMNS = [
    "seq",
    "at",
    "who",
    "action",
    "sample_id",
    "detail",
    "reason",
    "software",
    "prev_hash",
    "hash",
]


class AuditError(ImmunomonError):
    """An audit entry that cannot be written or read as asked (no name, no reason, malformed)."""


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    at: str
    who: str
    action: str
    sample_id: str
    detail: dict
    reason: str
    software: str
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class Anchor:
    """A trail position written outside the database: entry ``seq`` had hash ``hash``."""

    seq: int
    hash: str
    at: str = ""
    why: str = ""
    source: str = ""  # where it was read: file and line, or the command line

    def describe(self) -> str:
        when = f" of {self.at[:19]}" if self.at else ""
        why = f" ({self.why})" if self.why else ""
        return f"the anchor{when}{why} from {self.source}"


@dataclass
class TrailCheck:
    """What ``verify_trail`` found: entries read, the head, and every problem named."""

    entries: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS
    anchors: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def entry_hash(
    prev_hash: str,
    seq: int,
    at: str,
    who: str,
    action: str,
    sample_id: str,
    detail: str,
    reason: str,
    software: str,
) -> str:
    """sha256 over the previous entry's hash and this entry's fields, as stored."""
    payload = json.dumps(
        [prev_hash, seq, at, who, action, sample_id, detail, reason, software],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def anchors_path(study_root: str | Path) -> Path:
    """The study's append-only anchor file."""
    return Path(study_root) / ANCHORS_FILE


def write_anchor(path: str | Path, seq: int, digest: str, why: str) -> Anchor:
    """Append one anchor line (opened for appending only, flushed to disk)."""
    at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    line = json.dumps({"seq": seq, "hash": digest, "at": at, "why": why[:200]}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return Anchor(seq, digest, at, why, str(path))


def anchor_head(study_root: str | Path, conn: sqlite3.Connection, why: str) -> Anchor | None:
    """Anchor the trail's last entry beside the study (as a report is written), unless the
    file's last anchor names it already; None for an empty trail."""
    conn.executescript(AUDIT_SCHEMA)
    last = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    if last is None or not isinstance(last[1], str):
        return None
    path = anchors_path(study_root)
    if path.exists():
        with open(path, "rb") as fh:
            fh.seek(max(0, path.stat().st_size - 4096))
            tail = fh.read().decode("utf-8", errors="replace").strip().splitlines()
        try:
            previous = json.loads(tail[-1]) if tail else {}
        except ValueError:
            previous = {}
        if isinstance(previous, dict) and previous.get("seq") == last[0]:
            return None
    return write_anchor(path, int(last[0]), last[1], why)


def read_anchors(path: str | Path) -> tuple[list[Anchor], list[str]]:
    """The anchors of a file, and a problem per line that is not one (named by line)."""
    anchors, problems = [], []
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            anchor = Anchor(
                int(item["seq"]),
                str(item["hash"]),
                str(item.get("at", "")),
                str(item.get("why", "")),
                f"{path} line {number}",
            )
        except (ValueError, KeyError, TypeError):
            problems.append(f"{path} line {number} is not an anchor (edited by hand?): {line[:80]}")
            continue
        anchors.append(anchor)
    return anchors, problems


def parse_anchor(text: str) -> Anchor:
    """``SEQ:HASH`` as the report prints it (``--anchor 12:ab34...``)."""
    seq, _, digest = text.strip().lstrip("#").partition(":")
    if not seq.isdigit() or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise AuditError(
            f"--anchor {text!r}: expected ENTRY:SHA256 as the report prints it "
            f"(e.g. 12:{'ab' * 32})"
        )
    return Anchor(int(seq), digest, source="the command line")


class AuditLog:
    """The audit table of a study store (the store's own SQLite connection). With
    ``anchors`` (a file path), each person's action also appends an anchor line there."""

    def __init__(self, conn: sqlite3.Connection, anchors: str | Path | None = None):
        self.conn = conn
        self.anchors = Path(anchors) if anchors else None
        conn.executescript(AUDIT_SCHEMA)

    def append(
        self,
        who: str,
        action: str,
        reason: str,
        software: str,
        sample_id: str = "",
        detail: dict | None = None,
    ) -> AuditEntry:
        """Add an entry at the end of the chain (in the caller's transaction, if any; else in
        its own immediate one, so appends from several processes queue instead of colliding)."""
        if not who.strip():
            raise AuditError("an audit entry needs the name of the person acting")
        if action not in ACTIONS:
            raise AuditError(f"unknown audit action {action!r}")
        if action in PERSON_ACTIONS and not reason.strip():
            raise AuditError(f"{action} needs a reason in words")
        if len(who) > MAX_FIELD or len(reason) > MAX_FIELD:
            raise AuditError(f"a name or reason is limited to {MAX_FIELD} characters")
        text = json.dumps(detail or {}, sort_keys=True, ensure_ascii=False)
        at = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
        own = not self.conn.in_transaction
        if own:  # take the write lock before reading the last entry
            self.conn.execute("BEGIN IMMEDIATE")
        try:
            last = self.conn.execute(
                "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
            digest = entry_hash(prev, seq, at, who, action, sample_id, text, reason, software)
            self.conn.execute(
                "INSERT INTO audit VALUES (?,?,?,?,?,?,?,?,?,?)",
                (seq, at, who, action, sample_id, text, reason, software, prev, digest),
            )
            if own:
                self.conn.commit()
        except BaseException:
            if own:
                self.conn.rollback()
            raise
        if self.anchors is not None and action in PERSON_ACTIONS:
            write_anchor(self.anchors, seq, digest, f"{action} {sample_id} by {who}")
        return AuditEntry(
            seq, at, who, action, sample_id, detail or {}, reason, software, prev, digest
        )

    def entries(self) -> list[AuditEntry]:
        """Every entry in order; AuditError naming the first one that is not as written."""
        out = []
        for row in self._rows():
            problem = _malformed(row)
            if problem:
                raise AuditError(f"{problem}: run immunomon audit verify")
            r = row
            out.append(
                AuditEntry(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7], r[8], r[9])
            )
        return out

    def _rows(self) -> sqlite3.Cursor:
        return self.conn.execute(f"SELECT {', '.join(EXPORT_COLUMNS)} FROM audit ORDER BY seq")

    def head(self) -> str:
        """The hash of the last entry (what a report quotes to pin the trail)."""
        last = self.conn.execute("SELECT hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        return last[0] if last else GENESIS

    def verify(self) -> str:
        """'' when the chain is whole; else its first problem (no anchors: see verify_trail)."""
        problems = verify_trail(self.conn, []).problems
        return problems[0] if problems else ""

    def export_csv(self, path: str | Path) -> int:
        """Write the trail as CSV (one row per entry, columns as stored, formula-leading text
        neutralised); returns the count."""
        with open(path, "w", newline="", encoding="utf-8") as fh:
            return self.write_csv(fh)

    def write_csv(self, fh) -> int:
        """The CSV of ``export_csv`` to an open text file; returns the count."""
        writer = csv.writer(fh)
        writer.writerow(EXPORT_COLUMNS)
        count = 0
        for row in self._rows():
            writer.writerow([safe_cell(v) for v in row])
            count += 1
        return count


TEXT_COLUMNS = EXPORT_COLUMNS[1:]


def _malformed(row: tuple) -> str:
    """Why a stored row is not an entry immunomon wrote ('' when it is one)."""
    seq = row[0]
    if not isinstance(seq, int):
        return f"an entry's number {seq!r} is not an integer"
    for name, value in zip(TEXT_COLUMNS, row[1:], strict=True):
        if not isinstance(value, str):
            kind = "a blob" if isinstance(value, bytes) else type(value).__name__
            return f"entry {seq}: its {name} is {kind}, not text (written outside immunomon)"
    try:
        detail = json.loads(row[5])
    except ValueError:
        return f"entry {seq}: its detail is not JSON (written outside immunomon)"
    if not isinstance(detail, dict):
        return f"entry {seq}: its detail is not a JSON object (written outside immunomon)"
    return ""


def _named(detail: str) -> str:
    """The account an account entry names ('' for any other)."""
    item = json.loads(detail)
    return str(item.get("name", "")) if isinstance(item, dict) else ""


def _anchored(action: str, detail: str) -> bool:
    """Whether an entry of ``action`` is anchored as it is written (so one without its own
    anchor after the first was added outside immunomon)."""
    return action in PERSON_ACTIONS or (action in ACCOUNT_ACTIONS and bool(_named(detail)))


def verify_trail(conn: sqlite3.Connection, anchors: list[Anchor]) -> TrailCheck:
    """Recompute the chain and check it against ``anchors``: each names an entry that must
    exist with that hash (so a cut end or a rewritten, re-hashed trail is found), and each
    person's action after the first anchor must have its own anchor (so an approval added
    to the database by hand is found). Every problem is named; none raises."""
    conn.executescript(AUDIT_SCHEMA)
    check = TrailCheck(anchors=len(anchors))
    hashes: dict[int, str] = {}
    person: list[tuple[int, str]] = []
    prev, expected_seq, chain_ok = GENESIS, 1, True
    rows = conn.execute(f"SELECT {', '.join(EXPORT_COLUMNS)} FROM audit ORDER BY seq")
    for row in rows:
        check.entries += 1
        problem = _malformed(row)
        if problem:
            check.problems.append(problem)
            chain_ok = False
            if isinstance(row[0], int):
                expected_seq = row[0] + 1
            continue
        seq, at, who, action, sample_id, detail, reason, software, prev_hash, digest = row
        hashes[seq] = digest
        check.head_seq, check.head_hash = seq, digest
        if _anchored(action, detail):
            person.append(
                (seq, f"{action} {sample_id or _named(detail)} by {who[:60]} at {at[:19]}")
            )
        if chain_ok:
            if seq != expected_seq:
                check.problems.append(f"entry {expected_seq} is missing (the next entry is {seq})")
                chain_ok = False
            elif prev_hash != prev:
                check.problems.append(
                    f"entry {seq} does not follow entry {seq - 1} (its previous hash differs)"
                )
                chain_ok = False
            elif (
                entry_hash(prev, seq, at, who, action, sample_id, detail, reason, software)
                != digest
            ):
                check.problems.append(
                    f"entry {seq} was altered after it was written "
                    f"({action} {sample_id} by {who[:60]})"
                )
                chain_ok = False
        prev, expected_seq = digest, seq + 1
    beyond = [a for a in anchors if a.seq > check.head_seq]
    if beyond:  # the end was cut: one problem, named by the furthest anchor
        last = max(beyond, key=lambda a: a.seq)
        check.problems.append(
            f"the trail ends at entry {check.head_seq} but {last.describe()} names entry "
            f"{last.seq} ({len(beyond)} anchor(s) past the end): entries "
            f"{check.head_seq + 1}-{last.seq} (at least) were deleted"
        )
    for anchor in anchors:
        if anchor.seq > check.head_seq:
            continue
        if anchor.seq not in hashes:
            check.problems.append(f"entry {anchor.seq}, named by {anchor.describe()}, is missing")
        elif hashes[anchor.seq] != anchor.hash:
            check.problems.append(
                f"entry {anchor.seq} is not the one {anchor.describe()} names (hash "
                f"{hashes[anchor.seq][:12]} instead of {anchor.hash[:12]}): the trail was rewritten"
            )
    anchored = {a.seq for a in anchors}
    first = min(anchored, default=None)
    if first is None:
        if person:
            check.warnings.append(
                "no anchors given or found: a trail cut at its end, or rewritten with its "
                "hashes recomputed, cannot be told from a whole one"
            )
    else:
        for seq, what in person:
            if seq > first and seq not in anchored:
                check.problems.append(
                    f"entry {seq} ({what}) has no anchor: every action taken in review or on "
                    "accounts writes one, so it was added outside immunomon (or anchor lines "
                    "were removed)"
                )
    return check


def trail_mark(conn: sqlite3.Connection) -> tuple:
    """The trail's row count and last stored row (as 'seq:hash'): an entry appended or
    removed since a verification changes it (an entry edited in place does not)."""
    conn.executescript(AUDIT_SCHEMA)
    return conn.execute(
        "SELECT COUNT(*), (SELECT seq || ':' || hash FROM audit ORDER BY rowid DESC LIMIT 1) "
        "FROM audit"
    ).fetchone()


def verify_study_trail(
    conn: sqlite3.Connection,
    study_root: str | Path,
    anchors: list[Anchor] | None = None,
    files: list[str | Path] | None = None,
) -> TrailCheck:
    """``verify_trail`` against ``anchors`` and those of ``files`` (default: the study's own
    anchor file, when there is one); a named file that is missing or not read is a problem."""
    found, problems = list(anchors or []), []
    for path in [Path(f) for f in files or []] or [anchors_path(study_root)]:
        if path.is_file():
            more, bad = read_anchors(path)
            found += more
            problems += bad
        elif files:
            problems.append(f"{path}: no such anchor file")
    check = verify_trail(conn, found)
    check.problems = problems + check.problems
    return check
