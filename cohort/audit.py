"""The study's audit trail: an append-only log in the store, each entry chained to the one
before it by sha256, so an edited or deleted entry is found by recomputing the chain.

Every processing pass, threshold override, approval, exclusion and undo is an entry: who,
when (UTC), what (sample, gate, old and new values, counts before and after), why, and the
software version. An undo is a new entry naming the one it reverses; nothing is deleted."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

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
ACTIONS = (
    "pass",
    "override",
    "approve",
    "exclude",
    "undo",
    "sign_in_failed",
    "user_added",
    "template",  # an expert study template set or changed (cohort.templates)
)
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
    """An audit entry that cannot be written as asked (no name, no reason)."""


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


class AuditLog:
    """The audit table of a study store (the store's own SQLite connection)."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
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
        """Add an entry at the end of the chain (in the caller's transaction, if any)."""
        if not who.strip():
            raise AuditError("an audit entry needs the name of the person acting")
        if action not in ACTIONS:
            raise AuditError(f"unknown audit action {action!r}")
        if action in ("override", "approve", "exclude", "undo") and not reason.strip():
            raise AuditError(f"{action} needs a reason in words")
        text = json.dumps(detail or {}, sort_keys=True, ensure_ascii=False)
        at = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
        with self.conn:
            last = self.conn.execute(
                "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
            digest = entry_hash(prev, seq, at, who, action, sample_id, text, reason, software)
            self.conn.execute(
                "INSERT INTO audit VALUES (?,?,?,?,?,?,?,?,?,?)",
                (seq, at, who, action, sample_id, text, reason, software, prev, digest),
            )
        return AuditEntry(
            seq, at, who, action, sample_id, detail or {}, reason, software, prev, digest
        )

    def entries(self) -> list[AuditEntry]:
        rows = self.conn.execute(f"SELECT {', '.join(EXPORT_COLUMNS)} FROM audit ORDER BY seq")
        return [
            AuditEntry(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7], r[8], r[9])
            for r in rows
        ]

    def head(self) -> str:
        """The hash of the last entry (what a report quotes to pin the trail)."""
        last = self.conn.execute("SELECT hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        return last[0] if last else GENESIS

    def verify(self) -> str:
        """'' when the chain is whole; else the first entry that was altered or is missing."""
        rows = self.conn.execute(f"SELECT {', '.join(EXPORT_COLUMNS)} FROM audit ORDER BY seq")
        prev, expected_seq = GENESIS, 1
        for seq, at, who, action, sample_id, detail, reason, software, prev_hash, digest in rows:
            if seq != expected_seq:
                return f"entry {expected_seq} is missing (the next entry is {seq})"
            if prev_hash != prev:
                return f"entry {seq} does not follow entry {seq - 1} (its previous hash differs)"
            recomputed = entry_hash(prev, seq, at, who, action, sample_id, detail, reason, software)
            if recomputed != digest:
                return (
                    f"entry {seq} was altered after it was written ({action} {sample_id} by {who})"
                )
            prev, expected_seq = digest, seq + 1
        return ""

    def export_csv(self, path: str | Path) -> int:
        """Write the trail as CSV (one row per entry, columns as stored); returns the count."""
        rows = self.conn.execute(f"SELECT {', '.join(EXPORT_COLUMNS)} FROM audit ORDER BY seq")
        count = 0
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(EXPORT_COLUMNS)
            for row in rows:
                writer.writerow(row)
                count += 1
        return count
