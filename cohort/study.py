"""The study folder: study.yaml, its sub-folders, and how a file name identifies a sample."""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import re
import signal
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cohort.identifiers import hidden_character
from panels.config_files import load_yaml_model
from panels.errors import ImmunomonError
from panels.fcs import not_a_regular_file
from panels.resolve import Panel, load_panel
from stats.plan import AnalysisPlan

if TYPE_CHECKING:
    from gating.apply import AnyStrategy

REFERENCE_FOLDER = "references"  # study references of registered thresholds


class StudyError(ImmunomonError):
    """study.yaml or the study folder is not usable; the message says what to fix."""


class StudyConfig(BaseModel):
    """The contents of study.yaml (an unknown key is an error, with the nearest valid one)."""

    model_config = ConfigDict(extra="forbid")

    study: str
    visits: dict[str, float]
    baseline: str
    filename_pattern: str
    panels: dict[str, str]
    # dual_platform: cells/uL from the clinical lymphocyte count (visits.csv); none: no cells/uL.
    # Single-platform bead counting is not implemented, so 'beads' is refused, not ignored.
    absolute_counts: Literal["dual_platform", "none"] = "dual_platform"
    schedule: str = "0 2 * * *"
    timezone: str = "UTC"
    qc_reports: Literal["all", "flagged", "none"] = "all"  # per-sample QC PDFs to write
    # A pass on this host that shows no progress (no sample committed, no stage finished) for
    # this long is taken for hung: the next pass stops it and takes the study over.
    stale_lock_minutes: float = Field(default=240.0, gt=0)
    analysis: AnalysisPlan = Field(default_factory=AnalysisPlan)  # groups, endpoints, tests

    @field_validator("filename_pattern")
    @classmethod
    def _pattern_has_groups(cls, value: str) -> str:
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression ({exc})") from None
        missing = {"patient", "visit", "panel"} - set(compiled.groupindex)
        if missing:
            raise ValueError(f"needs named groups (?P<...>) for: {', '.join(sorted(missing))}")
        return value

    @field_validator("absolute_counts", mode="before")
    @classmethod
    def _no_beads_yet(cls, value: object) -> object:
        if value == "beads":
            raise ValueError(
                "'beads' (single-platform counting with counting beads) is not implemented; "
                "use 'dual_platform' (lymphocytes_per_ul in clinical/visits.csv) or 'none'"
            )
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r}: use an IANA name such as 'Europe/Paris' or 'UTC'"
            ) from None
        return value

    @model_validator(mode="after")
    def _baseline_is_a_visit(self) -> StudyConfig:
        if self.baseline not in self.visits:
            raise ValueError(f"baseline {self.baseline!r} is not one of the visits")
        return self


@dataclass(frozen=True)
class SampleName:
    """What a file name says: patient, visit and panel token."""

    patient_id: str
    visit: str
    panel_token: str

    @property
    def sample_id(self) -> str:
        return f"{self.patient_id}_{self.visit}_{self.panel_token}"


@dataclass(frozen=True)
class InboxEntry:
    """One name in inbox/, as the folder holds it (a link is not followed)."""

    path: Path
    kind: str = ""  # '' for a regular file, else what it is: 'a symbolic link', 'a folder'...


@dataclass(frozen=True)
class StudyLease:
    """The held study lock. ``renew`` records progress, so a waiting pass does not take this
    one for hung."""

    path: Path

    def renew(self) -> None:
        os.utime(self.path)


def _lock_holder(text: str) -> tuple[int | None, str]:
    """pid and host from the lock file's 'at T by pid P on HOST'."""
    match = re.search(r"by pid (\d+) on (\S+)", text)
    return (int(match[1]), match[2]) if match else (None, "")


class Study:
    """A study folder on disk. Creates its output folders; never writes to inbox/."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        path = self.root / "study.yaml"
        if not path.is_file():
            raise StudyError(f"{path} not found: is {self.root} a study folder?")
        self.config, _ = load_yaml_model(path, StudyConfig, StudyError)
        self._pattern = re.compile(self.config.filename_pattern)

    inbox = property(lambda self: self.root / "inbox")
    clinical_dir = property(lambda self: self.root / "clinical")
    quarantine_dir = property(lambda self: self.root / "quarantine")
    results_dir = property(lambda self: self.root / "results")
    reports_dir = property(lambda self: self.root / "reports")
    db_path = property(lambda self: self.root / "immunomon.db")
    qc_reports_dir = property(lambda self: self.root / "reports" / "qc")

    @contextmanager
    def exclusive(
        self, wait: bool = True, waiting: Callable[[str], None] | None = None
    ) -> Iterator[StudyLease]:
        """Hold the study's lock: one processing pass at a time (watcher, nightly, manual),
        so no file is claimed twice. Released on exit or when the holder dies (flock: the
        kernel frees it, so a killed pass never leaves the study locked).

        The lock file says who holds it (pid, host, start) and its modification time is the
        holder's last progress (``StudyLease.renew``). A holder on this host silent for more
        than ``stale_lock_minutes`` is hung: it is stopped (SIGTERM, then SIGKILL after 10 s)
        and the lock taken over. Otherwise, with ``wait``, ``waiting`` is told who holds the
        lock and the call blocks until it is free; without, StudyError."""
        path = self.root / ".immunomon.lock"
        stale_after = self.config.stale_lock_minutes * 60.0
        with open(path, "a+") as fh:
            told = stopping_since = None
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    pass
                fh.seek(0)
                holder = fh.read().strip() or "by an unknown process"
                silent = time.time() - os.fstat(fh.fileno()).st_mtime
                pid, host = _lock_holder(holder)
                if silent > stale_after and host == socket.gethostname() and pid:
                    if stopping_since is None:
                        stopping_since = time.monotonic()
                        if waiting:
                            waiting(
                                f"{self.root}: the pass started {holder} has shown no progress "
                                f"for {silent / 60:.1f} min (stale_lock_minutes: "
                                f"{self.config.stale_lock_minutes:g}); stopping it"
                            )
                    hard = time.monotonic() - stopping_since > 10.0
                    with suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL if hard else signal.SIGTERM)
                elif not wait:
                    raise StudyError(
                        f"{self.root}: another pass holds the study (started {holder}); "
                        "try again when it ends, or leave out --no-wait to wait for it"
                    )
                elif told != holder:
                    told = holder
                    if waiting:
                        waiting(f"{self.root}: waiting for the pass started {holder}")
                time.sleep(0.5)
            try:
                fh.seek(0)
                fh.truncate()
                started = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
                fh.write(f"at {started} by pid {os.getpid()} on {socket.gethostname()}\n")
                fh.flush()
                yield StudyLease(path)
            finally:
                fh.seek(0)
                fh.truncate()
                fcntl.flock(fh, fcntl.LOCK_UN)

    def ensure_output_folders(self) -> None:
        for folder in (self.quarantine_dir, self.results_dir, self.reports_dir):
            folder.mkdir(parents=True, exist_ok=True)

    def inbox_entries(self) -> list[InboxEntry]:
        """Every name in inbox/, sorted, hidden and partial-copy ('.name') ones skipped. Each
        says whether it is a regular file; links, FIFOs, devices and folders are listed (to
        be refused with a reason), never followed."""
        if not self.inbox.is_dir():
            raise StudyError(f"{self.inbox} does not exist: create it and drop FCS files there")
        entries = []
        for path in sorted(self.inbox.iterdir()):
            if path.name.startswith("."):
                continue
            try:
                kind = not_a_regular_file(path.lstat().st_mode)
            except FileNotFoundError:  # removed while we looked
                continue
            entries.append(InboxEntry(path, kind))
        return entries

    def inbox_files(self) -> list[Path]:
        """Regular files in inbox/ (not links), sorted by name."""
        return [entry.path for entry in self.inbox_entries() if not entry.kind]

    def parse_name(self, file_name: str) -> SampleName | str:
        """The sample a file name identifies, or the reason it does not identify one.

        A name with an invisible, control or bidirectional character is refused first: it can
        look exactly like another sample's name, and a trailing newline satisfies a pattern's
        ``$``. After that check ``$`` can only match at the very end."""
        if hidden := hidden_character(file_name):
            return (
                f"the file name contains an invisible or control character ({hidden}), so it "
                "can look like another sample's name: rename the file"
            )
        match = self._pattern.match(file_name)
        if not match:
            return (
                f"the file name does not match the study's pattern "
                f"{self.config.filename_pattern!r} (e.g. P01_M3_BCELL.fcs): rename the file"
            )
        name = SampleName(match["patient"], match["visit"], match["panel"])
        if name.visit not in self.config.visits:
            return (
                f"visit {name.visit!r} is not in study.yaml (visits: "
                f"{', '.join(self.config.visits)}): fix the file name or add the visit"
            )
        if name.panel_token not in self.config.panels:
            return (
                f"panel token {name.panel_token!r} is not in study.yaml (panels: "
                f"{', '.join(self.config.panels)}): fix the file name or add the panel"
            )
        return name

    @cached_property
    def panels(self) -> dict[str, Panel]:
        """Panel token -> panel definition."""
        return {t: load_panel(ref, self.root) for t, ref in self.config.panels.items()}

    @cached_property
    def strategies(self) -> dict[str, AnyStrategy]:
        """Panel token -> gating strategy (YAML strategy, with the study's reference for its
        registered thresholds where one was built, or a FlowJo workspace)."""
        # Imported here: the gating stack (scikit-learn) is ~1 s, and a study.yaml mistake
        # should be reported before paying it.
        from gating.apply import load_panel_strategy
        from gating.registration import load_reference, with_reference
        from gating.strategy import Strategy

        strategies = {}
        for token, panel in self.panels.items():
            strategy = load_panel_strategy(panel, self.root)
            if isinstance(strategy, Strategy):
                path = self.reference_path(strategy.name)
                strategy = with_reference(strategy, load_reference(path, strategy))
            strategies[token] = strategy
        return strategies

    def reference_path(self, strategy_name: str) -> Path:
        """Where the study reference of a strategy's registered thresholds is kept."""
        return self.root / REFERENCE_FOLDER / f"{strategy_name}.yaml"

    def visit_month(self, visit: str) -> float:
        return float(self.config.visits[visit])
