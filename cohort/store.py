"""The study's SQLite store: the source of truth for files, samples, QC, gates and runs.

Only the flow process writes here (workers return results). Each sample's results go in one
transaction, so a run killed at any point leaves either all of a sample's rows or none.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from cohort.audit import AuditLog
from gating.records import AppliedGate

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    file_name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER, mtime_ns INTEGER,
    status TEXT NOT NULL,             -- processed | quarantined | failed
    reason TEXT NOT NULL DEFAULT '',
    sample_key TEXT,
    first_seen TEXT NOT NULL, last_seen TEXT NOT NULL,
    PRIMARY KEY (file_name, sha256)
);
CREATE TABLE IF NOT EXISTS samples (
    sample_key TEXT PRIMARY KEY,      -- sha256:strategy_sha256:pipeline_version
    sample_id TEXT NOT NULL, file_name TEXT NOT NULL, sha256 TEXT NOT NULL,
    patient_id TEXT, visit TEXT, panel TEXT,
    events INTEGER, qc_flags TEXT NOT NULL DEFAULT '',
    strategy_sha256 TEXT NOT NULL, pipeline_version TEXT NOT NULL,
    processed_at TEXT NOT NULL, run_id TEXT,
    superseded_by TEXT
);
CREATE TABLE IF NOT EXISTS populations (
    sample_key TEXT NOT NULL, population TEXT NOT NULL, parent TEXT NOT NULL,
    count INTEGER NOT NULL, parent_count INTEGER NOT NULL,
    PRIMARY KEY (sample_key, population)
);
CREATE TABLE IF NOT EXISTS qc_steps (
    sample_key TEXT NOT NULL, step TEXT NOT NULL, events_in INTEGER, removed INTEGER, detail TEXT
);
CREATE TABLE IF NOT EXISTS gates (
    sample_key TEXT NOT NULL, gate TEXT NOT NULL, parent TEXT, kind TEXT, dimensions TEXT,
    parameters TEXT, from_data INTEGER, note TEXT
);
CREATE TABLE IF NOT EXISTS not_measured (
    sample_key TEXT NOT NULL, population TEXT NOT NULL, parent TEXT NOT NULL,
    missing_markers TEXT NOT NULL,
    PRIMARY KEY (sample_key, population)
);
CREATE TABLE IF NOT EXISTS medians (
    sample_key TEXT NOT NULL, population TEXT NOT NULL, marker TEXT NOT NULL,
    channel TEXT NOT NULL, median REAL, median_logicle REAL, n INTEGER NOT NULL,
    PRIMARY KEY (sample_key, population, marker)
);
-- The strategy each result was gated with, as it was then (its sha256 is the samples'): a
-- result keeps its own gates' names and titles when the study's strategy moves on.
CREATE TABLE IF NOT EXISTS strategies (
    strategy_sha256 TEXT PRIMARY KEY, name TEXT NOT NULL, version INTEGER NOT NULL,
    document TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, started_at TEXT, finished_at TEXT, files_seen INTEGER,
    processed INTEGER, quarantined INTEGER, failed INTEGER, status TEXT, message TEXT
);
"""
# The tables the cohort's outputs are made from, in a stable order (``Store.content_digests``).
# ``runs`` and the accounts are left out, and so are the files' size, mtime and last_seen (a
# touched or re-seen file) and the audit trail's 'pass' entries: no output prints them, so a
# pass that finds nothing new is no change.
OUTPUT_CONTENT = {
    "files": "SELECT file_name, sha256, status, reason, sample_key, first_seen FROM files "
    "ORDER BY file_name, sha256",
    "samples": "SELECT * FROM samples ORDER BY sample_key",
    "populations": "SELECT * FROM populations ORDER BY sample_key, population",
    "qc_steps": "SELECT * FROM qc_steps ORDER BY sample_key, rowid",
    "gates": "SELECT * FROM gates ORDER BY sample_key, rowid",
    "not_measured": "SELECT * FROM not_measured ORDER BY sample_key, population",
    "medians": "SELECT * FROM medians ORDER BY sample_key, population, marker",
    "audit": "SELECT * FROM audit WHERE action <> 'pass' ORDER BY seq",
}
# Lookups intake and record_sample make once per file: without these each is a scan of the
# table, so a pass is quadratic in the study's files. Created on open: a store made before
# them gets them the first time it is opened (IF NOT EXISTS: a no-op afterwards).
INDEXES = """
CREATE INDEX IF NOT EXISTS files_by_sha256 ON files(sha256);
CREATE INDEX IF NOT EXISTS files_by_sample_key ON files(sample_key);
CREATE INDEX IF NOT EXISTS samples_by_sample_id ON samples(sample_id);
CREATE INDEX IF NOT EXISTS samples_by_sha256 ON samples(sha256);
CREATE INDEX IF NOT EXISTS qc_steps_by_sample_key ON qc_steps(sample_key);
CREATE INDEX IF NOT EXISTS gates_by_sample_key ON gates(sample_key);
"""


@dataclass(frozen=True)
class SampleRecord:
    """One processed sample as the store keeps it; plain data, cheap to send between processes."""

    sample_id: str
    sha256: str
    patient_id: str
    visit: str
    panel: str
    events: int
    strategy_sha256: str
    pipeline_version: str
    populations: list[dict] = field(default_factory=list)
    qc_steps: list[dict] = field(default_factory=list)
    gates: list[dict] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    # reported populations the tube cannot give: population, parent, missing_markers ('+')
    not_measured: list[dict] = field(default_factory=list)
    medians: list[dict] = field(default_factory=list)  # gating.records.MarkerMedian fields
    # The strategy as gated (JSON of its file's content; '' for a FlowJo workspace's gates).
    strategy_document: str = ""
    strategy_name: str = ""
    strategy_version: int = 0

    @property
    def sample_key(self) -> str:
        return sample_key(self.sha256, self.strategy_sha256, self.pipeline_version)


def sample_key(sha256: str, strategy_sha256: str, pipeline_version: str) -> str:
    """A result's identity: the file's content, the strategy and the pipeline version."""
    return f"{sha256[:16]}:{strategy_sha256[:12]}:v{pipeline_version}"


def strategy_as_stored(strategy) -> dict:
    """A YAML strategy's name, version and file content (JSON) as a SampleRecord keeps them,
    so the result's names and titles stay those it was gated with; none for a FlowJo
    workspace's gates (those are recorded with the result)."""
    from gating.strategy import Strategy, StrategyFile

    if not isinstance(strategy, Strategy):
        return {}
    content = StrategyFile(
        name=strategy.name,
        version=strategy.version,
        qc=strategy.qc,
        thresholds=strategy.thresholds,
        gates=list(strategy.gates),
    )
    return {
        "strategy_document": content.model_dump_json(),
        "strategy_name": strategy.name,
        "strategy_version": strategy.version,
    }


def stored_strategy(document: str, strategy_sha256: str):
    """``strategy_as_stored``'s inverse: the strategy a result was gated with, for its names
    (the offsets of a study reference and a reviewer's overrides are in its gates)."""
    from gating.strategy import StrategyFile, strategy_from_model

    parsed = StrategyFile.model_validate_json(document)
    return strategy_from_model(parsed, f"stored with the results of {strategy_sha256[:12]}")


def now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


class Store:
    """Thin typed access to the study database."""

    def __init__(self, path: str | Path, shared_between_threads: bool = False):
        """``shared_between_threads``: the connection is used from several threads, one at a
        time under the caller's lock (the review server)."""
        self.path = Path(path)
        self.conn = sqlite3.connect(
            self.path, timeout=60, check_same_thread=not shared_between_threads
        )
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.conn.executescript(SCHEMA + INDEXES)

    def close(self) -> None:
        self.conn.close()

    def content_digests(self) -> dict[str, str]:
        """'store TABLE' -> sha256 of the rows the cohort's outputs are made from."""
        AuditLog(self.conn)  # the audit table exists, as in every study the flow has run
        digests = {}
        for table, query in OUTPUT_CONTENT.items():
            digest = hashlib.sha256()
            for row in self.conn.execute(query):
                digest.update(repr(row).encode() + b"\n")
            digests[f"store {table}"] = digest.hexdigest()
        return digests

    # files ---------------------------------------------------------------------------------
    def known_sha256(self, file_name: str, size: int, mtime_ns: int) -> str | None:
        """The hash recorded for an unchanged file (same name, size and mtime), if any."""
        row = self.conn.execute(
            "SELECT sha256 FROM files WHERE file_name=? AND size=? AND mtime_ns=? "
            "ORDER BY last_seen DESC LIMIT 1",
            (file_name, size, mtime_ns),
        ).fetchone()
        return row[0] if row else None

    def file_record(self, file_name: str, sha256: str) -> sqlite3.Row | None:
        self.conn.row_factory = sqlite3.Row
        try:
            return self.conn.execute(
                "SELECT * FROM files WHERE file_name=? AND sha256=?", (file_name, sha256)
            ).fetchone()
        finally:
            self.conn.row_factory = None

    def processed_under_other_name(self, file_name: str, sha256: str) -> str | None:
        row = self.conn.execute(
            "SELECT file_name FROM files WHERE sha256=? AND file_name<>? AND status='processed' "
            "ORDER BY first_seen LIMIT 1",
            (sha256, file_name),
        ).fetchone()
        return row[0] if row else None

    def current_sha_of_sample(self, sample_id: str, sha256: str) -> str | None:
        """The content (sha256) other than ``sha256`` whose results for ``sample_id`` are
        current, if any: the acquisition a new file of that sample replaces."""
        row = self.conn.execute(
            "SELECT s.sha256 FROM samples s JOIN files f ON f.sample_key=s.sample_key "
            "AND f.status='processed' WHERE s.sample_id=? AND s.sha256<>? "
            "AND s.superseded_by IS NULL ORDER BY s.processed_at DESC LIMIT 1",
            (sample_id, sha256),
        ).fetchone()
        return row[0] if row else None

    def _upsert_file(self, file_name, sha256, size, mtime_ns, status, reason, sample_key) -> None:
        stamp = now()
        self.conn.execute(
            "INSERT INTO files VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(file_name, sha256) DO UPDATE "
            "SET size=excluded.size, mtime_ns=excluded.mtime_ns, status=excluded.status, "
            "reason=excluded.reason, sample_key=excluded.sample_key, last_seen=excluded.last_seen",
            (file_name, sha256, size, mtime_ns, status, reason, sample_key, stamp, stamp),
        )

    def _forget_earlier_rejections(self, file_name: str, sha256: str) -> None:
        """Rejections of other contents under this name are stale: the inbox holds one file
        per name (a half-copied file quarantined, then processed once complete, leaves no
        quarantined row behind)."""
        self.conn.execute(
            "DELETE FROM files WHERE file_name=? AND sha256<>? "
            "AND status IN ('quarantined', 'failed')",
            (file_name, sha256),
        )

    def record_rejection(
        self, file_name: str, sha256: str, size: int, mtime_ns: int, status: str, reason: str
    ) -> None:
        with self.conn:
            self._forget_earlier_rejections(file_name, sha256)
            self._upsert_file(file_name, sha256, size, mtime_ns, status, reason, None)

    def touch_file(self, file_name: str, sha256: str, size: int, mtime_ns: int) -> None:
        with self.conn:
            self.conn.execute(
                "UPDATE files SET size=?, mtime_ns=?, last_seen=? WHERE file_name=? AND sha256=?",
                (size, mtime_ns, now(), file_name, sha256),
            )

    # samples -------------------------------------------------------------------------------
    def is_current(self, sample_key: str) -> bool:
        """Whether a result exists and no newer result has superseded it."""
        row = self.conn.execute(
            "SELECT superseded_by IS NULL FROM samples WHERE sample_key=?", (sample_key,)
        ).fetchone()
        return bool(row and row[0])

    def has_sample(self, sample_key: str) -> bool:
        return (
            self.conn.execute("SELECT 1 FROM samples WHERE sample_key=?", (sample_key,)).fetchone()
            is not None
        )

    def record_sample(
        self,
        *,
        file_name: str,
        size: int,
        mtime_ns: int,
        result: SampleRecord,
        run_id: str,
        replaces: str = "",
    ) -> None:
        """Write one processed sample (file row, sample, populations, QC, gates) atomically.

        Any other current result of the same sample (an earlier acquisition, under this name
        or another) or of the same content is marked superseded by this one: never two
        current rows for a sample. ``replaces``: the sha256 of the acquisition intake found
        this one replacing, named in this file's row (the replaced row names this one).
        """
        key = result.sample_key
        with self.conn:
            self.conn.execute("DELETE FROM populations WHERE sample_key=?", (key,))
            self.conn.execute("DELETE FROM qc_steps WHERE sample_key=?", (key,))
            self.conn.execute("DELETE FROM gates WHERE sample_key=?", (key,))
            self.conn.execute("DELETE FROM not_measured WHERE sample_key=?", (key,))
            self.conn.execute("DELETE FROM medians WHERE sample_key=?", (key,))
            self.conn.execute(
                "INSERT OR REPLACE INTO samples VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,NULL)",
                (
                    key,
                    result.sample_id,
                    file_name,
                    result.sha256,
                    result.patient_id,
                    result.visit,
                    result.panel,
                    result.events,
                    ";".join(result.flags),
                    result.strategy_sha256,
                    result.pipeline_version,
                    now(),
                    run_id,
                ),
            )
            # One current result per sample: older results of the same acquisition (another
            # strategy) or of the same sample (another acquisition) stay, marked superseded.
            replaced = self.conn.execute(
                "SELECT file_name, sha256 FROM samples WHERE (sha256=? OR sample_id=?) "
                "AND sample_key<>? AND superseded_by IS NULL",
                (result.sha256, result.sample_id, key),
            ).fetchall()
            self.conn.execute(
                "UPDATE samples SET superseded_by=? WHERE (sha256=? OR sample_id=?) "
                "AND sample_key<>? AND superseded_by IS NULL",
                (key, result.sha256, result.sample_id, key),
            )
            if result.strategy_document:
                self.conn.execute(
                    "INSERT OR IGNORE INTO strategies VALUES (?,?,?,?)",
                    (
                        result.strategy_sha256,
                        result.strategy_name,
                        result.strategy_version,
                        result.strategy_document,
                    ),
                )
            self.conn.executemany(
                "INSERT INTO populations VALUES (?,?,?,?,?)",
                [
                    (key, p["population"], p["parent"], p["count"], p["parent_count"])
                    for p in result.populations
                ],
            )
            self.conn.executemany(
                "INSERT INTO not_measured VALUES (?,?,?,?)",
                [
                    (key, n["population"], n["parent"], n["missing_markers"])
                    for n in result.not_measured
                ],
            )
            self.conn.executemany(
                "INSERT INTO medians VALUES (?,?,?,?,?,?,?)",
                [
                    (
                        key,
                        m["population"],
                        m["marker"],
                        m["channel"],
                        m["median"],
                        m["median_logicle"],
                        m["n"],
                    )
                    for m in result.medians
                ],
            )
            self.conn.executemany(
                "INSERT INTO qc_steps VALUES (?,?,?,?,?)",
                [
                    (key, q["name"], q["events_in"], q["removed"], q["detail"])
                    for q in result.qc_steps
                ],
            )
            self.conn.executemany(
                "INSERT INTO gates VALUES (?,?,?,?,?,?,?,?)",
                [
                    (
                        key,
                        g["name"],
                        g["parent"],
                        g["kind"],
                        json.dumps(g["dimensions"]),
                        json.dumps(g["parameters"]),
                        int(g["from_data"]),
                        g["note"],
                    )
                    for g in result.gates
                ],
            )
            stamp, note = now(), ""
            if replaces:
                note = (
                    f"new acquisition of sample {result.sample_id}: replaces sha256 "
                    f"{replaces[:12]}... (its results are kept, superseded)"
                )
            for old_name, old_sha in replaced:
                if old_sha == result.sha256:
                    continue  # the same acquisition under an older strategy
                self.conn.execute(
                    "UPDATE files SET reason=? WHERE file_name=? AND sha256=?",
                    (
                        f"replaced on {stamp} by a new acquisition of this sample ({file_name}, "
                        f"sha256 {result.sha256[:12]}...); results kept, superseded",
                        old_name,
                        old_sha,
                    ),
                )
            self._forget_earlier_rejections(file_name, result.sha256)
            self._upsert_file(file_name, result.sha256, size, mtime_ns, "processed", note, key)

    # runs ----------------------------------------------------------------------------------
    def start_run(self, run_id: str) -> None:
        with self.conn:
            self.conn.execute(
                "INSERT OR REPLACE INTO runs (run_id, started_at, status) VALUES (?,?,?)",
                (run_id, now(), "running"),
            )

    def finish_run(self, run_id: str, counts: dict[str, int], status: str, message: str = ""):
        with self.conn:
            self.conn.execute(
                "UPDATE runs SET finished_at=?, files_seen=?, processed=?, quarantined=?, "
                "failed=?, status=?, message=? WHERE run_id=?",
                (
                    now(),
                    counts.get("seen", 0),
                    counts.get("processed", 0),
                    counts.get("quarantined", 0),
                    counts.get("failed", 0),
                    status,
                    message,
                    run_id,
                ),
            )

    # exports -------------------------------------------------------------------------------
    def files_frame(self) -> pd.DataFrame:
        return pd.read_sql_query(
            "SELECT f.file_name AS file, f.sha256, s.sample_id, s.patient_id, s.visit, s.panel, "
            # An earlier acquisition replaced under the same name is not a second result.
            "CASE WHEN f.status='processed' AND s.superseded_by IS NOT NULL "
            "THEN 'superseded' ELSE f.status END AS status, "
            "f.reason, s.events, s.processed_at, s.qc_flags, f.first_seen "
            "FROM files f LEFT JOIN samples s ON s.sample_key=f.sample_key "
            "ORDER BY f.file_name, f.first_seen",
            self.conn,
        )

    def current_populations(self) -> pd.DataFrame:
        """Population counts of current (not superseded) results of processed files."""
        return pd.read_sql_query(
            "SELECT s.sample_key, s.sample_id, s.patient_id, s.visit, s.panel, s.qc_flags, "
            "s.strategy_sha256, p.population, p.parent, p.count, p.parent_count "
            "FROM samples s JOIN populations p ON p.sample_key=s.sample_key "
            "JOIN files f ON f.sample_key=s.sample_key AND f.status='processed' "
            "WHERE s.superseded_by IS NULL ORDER BY s.sample_id, p.rowid",
            self.conn,
        )

    def current_not_measured(self) -> pd.DataFrame:
        """Reported populations that current results could not measure, with the markers."""
        return self._current_rows(
            "n.population, n.parent, n.missing_markers",
            "not_measured n ON n.sample_key=s.sample_key",
        )

    def current_medians(self) -> pd.DataFrame:
        """Median fluorescence per population and marker of current results."""
        return self._current_rows(
            "m.population, m.marker, m.channel, m.median, m.median_logicle, m.n",
            "medians m ON m.sample_key=s.sample_key",
        )

    def _current_rows(self, columns: str, join: str) -> pd.DataFrame:
        return pd.read_sql_query(
            "SELECT s.sample_key, s.sample_id, s.patient_id, s.visit, s.panel, s.qc_flags, "
            f"{columns} FROM samples s JOIN {join} "
            "JOIN files f ON f.sample_key=s.sample_key AND f.status='processed' "
            "WHERE s.superseded_by IS NULL ORDER BY s.sample_id",
            self.conn,
        )

    def current_qc_steps(self) -> pd.DataFrame:
        """QC steps of every current result (sample_id, step, events_in, removed)."""
        return self._current_rows(
            "q.step, q.events_in, q.removed", "qc_steps q ON q.sample_key=s.sample_key"
        )

    def current_gates(self) -> pd.DataFrame:
        """Gates of every current result: how each was placed (from_data, note) and where
        (dimensions and parameters, JSON)."""
        return self._current_rows(
            "g.gate, g.kind, g.from_data, g.note, g.dimensions, g.parameters",
            "gates g ON g.sample_key=s.sample_key",
        )

    def qc_steps(self, sample_key: str | None = None) -> pd.DataFrame:
        query = "SELECT * FROM qc_steps" + (" WHERE sample_key=?" if sample_key else "")
        return pd.read_sql_query(query, self.conn, params=(sample_key,) if sample_key else None)

    def applied_gates(self, sample_key: str) -> list[AppliedGate]:
        """The gates recorded for a result, in the order they were applied."""
        rows = self.conn.execute(
            "SELECT gate, parent, kind, dimensions, parameters, from_data, note FROM gates "
            "WHERE sample_key=? ORDER BY rowid",
            (sample_key,),
        ).fetchall()
        return [
            AppliedGate.from_record(
                name,
                parent,
                kind,
                tuple(json.loads(dims)),
                json.loads(params),
                bool(from_data),
                note,
            )
            for name, parent, kind, dims, params, from_data, note in rows
        ]

    def current_strategies(self, other_than: Collection[str] = ()) -> pd.DataFrame:
        """The strategy each current result was gated with, for the results gated with none
        of the strategies ``other_than`` (sha256): sample_id, panel, strategy_sha256 and its
        document (empty for results stored before documents were kept, and for a FlowJo
        workspace's gates)."""
        marks = ",".join("?" * len(other_than))
        return pd.read_sql_query(
            "SELECT s.sample_id, s.panel, s.strategy_sha256, COALESCE(t.document, '') AS "
            "document FROM samples s JOIN files f ON f.sample_key=s.sample_key AND "
            "f.status='processed' LEFT JOIN strategies t ON t.strategy_sha256=s.strategy_sha256 "
            f"WHERE s.superseded_by IS NULL AND s.strategy_sha256 NOT IN ({marks}) "
            "ORDER BY s.sample_id",
            self.conn,
            params=tuple(other_than),
        )

    def strategy_document(self, strategy_sha256: str) -> str:
        """The content (JSON) of the strategy results were gated with, kept with them; ''
        for a result stored before documents were kept, or a FlowJo workspace's gates."""
        row = self.conn.execute(
            "SELECT document FROM strategies WHERE strategy_sha256=?", (strategy_sha256,)
        ).fetchone()
        return row[0] if row else ""

    def current_sample(self, sample_id: str) -> dict | None:
        """The current (not superseded) processed result of a sample id, if any."""
        self.conn.row_factory = sqlite3.Row
        try:
            row = self.conn.execute(
                "SELECT s.* FROM samples s JOIN files f ON f.sample_key=s.sample_key "
                "AND f.status='processed' WHERE s.sample_id=? AND s.superseded_by IS NULL "
                "ORDER BY s.processed_at DESC LIMIT 1",
                (sample_id,),
            ).fetchone()
        finally:
            self.conn.row_factory = None
        return dict(row) if row else None

    def runs(self) -> pd.DataFrame:
        return pd.read_sql_query("SELECT * FROM runs ORDER BY started_at", self.conn)
