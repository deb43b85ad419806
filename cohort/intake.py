"""Intake: identify each inbox file, check its header against its panel, quarantine the rest.

Nothing here reads events: the header scan (~0.1 ms) decides whether a file is worth
processing, and every rejection carries a reason a lab scientist can act on.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field, replace
from pathlib import Path

from cohort.study import InboxEntry, SampleName, Study
from gating.apply import resolve_for_strategy
from gating.compensate import CompensationError, check_spillover_channels
from panels.fcs import (
    FcsReadError,
    FcsTruncatedError,
    check_events_usable,
    not_a_regular_file,
    not_regular_reason,
    open_regular,
    scan_header,
)
from panels.resolve import PanelError

QUARANTINED_COPIES = "files"  # quarantine/files/NAME: apart from the NAME.reason.txt notes


@dataclass(frozen=True)
class IntakeDecision:
    """What intake concluded about one inbox file."""

    path: Path
    sha256: str
    name: SampleName | None
    ready: bool
    reason: str = ""
    events: int = 0
    replaces: str = ""  # sha256 of an earlier acquisition of the same sample, now replaced
    truncated: bool = False  # the DATA segment runs past the end: maybe a copy in progress


@dataclass(frozen=True)
class CopyWindow:
    """How the watcher judges a copy complete, for intake to judge the same way when the pass
    has the study: a file modified less than ``settle_seconds`` ago, or truncated and
    modified less than ``incomplete_timeout`` ago, is still arriving."""

    settle_seconds: float
    incomplete_timeout: float

    def still_arriving(self, age_seconds: float, truncated: bool = False) -> bool:
        limit = self.incomplete_timeout if truncated else self.settle_seconds
        return age_seconds < limit


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """The content hash of a regular file (a link is not followed: FcsReadError)."""
    digest = hashlib.sha256()
    with open_regular(path, follow_symlinks=False) as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def examine_file(study: Study, path: Path, sha256: str) -> IntakeDecision:
    """Decide whether one file can be processed, reading its name, header and a few thousand
    events spread over its DATA (damaged float data is refused here, not after gating)."""
    parsed = study.parse_name(path.name)
    if isinstance(parsed, str):
        return IntakeDecision(path, sha256, None, False, parsed)
    try:
        header = scan_header(path)
    except FcsReadError as exc:
        truncated = isinstance(exc, FcsTruncatedError)
        return IntakeDecision(path, sha256, parsed, False, exc.reason, truncated=truncated)
    try:
        token = parsed.panel_token
        resolve_for_strategy(study.panels[token], header, study.strategies[token])
        spill = header.spillover()
        if spill is not None:
            check_spillover_channels(spill[0], spill[1], header.pnn)
        check_events_usable(header)
    except (PanelError, FcsReadError, CompensationError) as exc:
        return IntakeDecision(path, sha256, parsed, False, exc.reason, header.n_events)
    return IntakeDecision(path, sha256, parsed, True, "", header.n_events)


def _note_path(study: Study, name: str) -> Path:
    return study.quarantine_dir / f"{name}.reason.txt"


def quarantine_copy(study: Study, path: Path, reason: str, copy: bool = True) -> Path:
    """Copy a rejected file to quarantine/files/ and write quarantine/NAME.reason.txt (copies
    apart from notes, so an inbox file named 'x.fcs.reason.txt' cannot overwrite the note of
    x.fcs). The copy is made anew each time (a changed file of the same size is not left
    stale); with ``copy`` False (a link, FIFO or folder) only the note is written. inbox/ is
    untouched."""
    copies = study.quarantine_dir / QUARANTINED_COPIES
    copies.mkdir(parents=True, exist_ok=True)
    target = copies / path.name
    with suppress(FileNotFoundError):
        target.unlink()  # never write through whatever is there
    if copy:
        with open_regular(path, follow_symlinks=False) as source, open(target, "xb") as out:
            shutil.copyfileobj(source, out)
        stat = os.lstat(path)
        os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    note = _note_path(study, path.name)
    with suppress(FileNotFoundError):
        note.unlink()
    note.write_text(f"{path.name}\n\n{reason}\n")
    return target


def release_from_quarantine(study: Study, name: str) -> None:
    """Remove the quarantine copy and note of ``name``: its current content is processed."""
    for stale in (study.quarantine_dir / QUARANTINED_COPIES / name, _note_path(study, name)):
        with suppress(FileNotFoundError):
            stale.unlink()


@dataclass
class IntakePlan:
    """The outcome of intake over the whole inbox for one run."""

    ready: list[IntakeDecision]
    unchanged: list[Path]
    quarantined: list[IntakeDecision]  # newly, by this pass
    # quarantined before for the same reason (same content): not copied or reported again
    still_quarantined: list[IntakeDecision] = field(default_factory=list)
    # still being copied (by the copy window): left for a later pass, untouched, unrecorded
    arriving: list[Path] = field(default_factory=list)

    @property
    def seen(self) -> int:
        return (
            len(self.ready)
            + len(self.unchanged)
            + len(self.quarantined)
            + len(self.still_quarantined)
        )


@dataclass
class _Look:
    """One regular inbox file as intake found it."""

    path: Path
    stat: os.stat_result
    sha: str
    record: object  # sqlite3.Row | None
    parsed: SampleName | str
    unchanged: bool = False


def _refuse(study: Study, store, plan: IntakePlan, decision: IntakeDecision, stat, copy=True):
    """Quarantine (or keep quarantined, same content and reason) one file."""
    record = store.file_record(decision.path.name, decision.sha256)
    if record is not None and (record["status"], record["reason"]) == (
        "quarantined",
        decision.reason,
    ):
        store.touch_file(decision.path.name, decision.sha256, stat.st_size, stat.st_mtime_ns)
        plan.still_quarantined.append(decision)
        return
    quarantine_copy(study, decision.path, decision.reason, copy)
    store.record_rejection(
        decision.path.name,
        decision.sha256,
        stat.st_size,
        stat.st_mtime_ns,
        "quarantined",
        decision.reason,
    )
    plan.quarantined.append(decision)


def _refuse_entry(study: Study, store, plan: IntakePlan, entry: InboxEntry) -> None:
    """A link, FIFO, device or folder in inbox/: listed with its reason, never opened."""
    stat = os.lstat(entry.path)
    kind = entry.kind
    if os.path.islink(entry.path):
        kind = f"{kind} (to {os.readlink(entry.path)})"
    parsed = study.parse_name(entry.path.name)
    decision = IntakeDecision(
        entry.path, "", None if isinstance(parsed, str) else parsed, False, not_regular_reason(kind)
    )
    _refuse(study, store, plan, decision, stat, copy=False)


def _conflicts(looks: list[_Look]) -> dict[str, str]:
    """File name -> why it is refused: two inbox files naming one sample (P01_BL_BCELL.fcs
    and P01_BL_BCELL.FCS) would give two current results. A file whose result is current is
    kept and the others refused; with none current, all are refused."""
    claims: dict[str, list[_Look]] = {}
    for look in looks:
        if isinstance(look.parsed, SampleName):
            claims.setdefault(look.parsed.sample_id, []).append(look)
    reasons = {}
    for sample_id, claimants in claims.items():
        if len(claimants) < 2:
            continue
        kept = [c.path.name for c in claimants if c.unchanged]
        names = ", ".join(c.path.name for c in claimants)
        for look in claimants:
            if look.unchanged:
                continue
            if kept:
                reasons[look.path.name] = (
                    f"sample {sample_id} already comes from {kept[0]} (processed): one sample, "
                    f"one file; remove this file, or remove {kept[0]} for this one to replace it"
                )
            else:
                reasons[look.path.name] = (
                    f"{len(claimants)} files name sample {sample_id} ({names}): one sample, "
                    "one file; remove or rename all but one"
                )
    return reasons


def plan_intake(
    study: Study,
    store,
    current_keys: dict[str, str],
    hold: frozenset[str] = frozenset(),
    sample_keys: Mapping[str, tuple[str, str]] | None = None,
    copy_window: CopyWindow | tuple[float, float] | None = None,
) -> IntakePlan:
    """Walk inbox/: skip files already processed with the current strategy, quarantine the
    ones that cannot be processed (recording why), and list the rest for processing.

    ``current_keys`` maps panel token -> the strategy/pipeline part of a sample key, so a file
    processed under an older strategy is processed again. Files named in ``hold`` (a copy the
    watcher is still waiting for) are left for a later pass, untouched and unrecorded; with
    ``copy_window`` (the watcher's), so is any file that, judged now that this pass has the
    study, is still arriving: one that started arriving after the watcher looked is not read
    half-copied. Links, FIFOs, devices and folders are listed with a reason, never followed.
    """
    from cohort.store import sample_key  # the store owns key identity

    if copy_window is not None and not isinstance(copy_window, CopyWindow):
        copy_window = CopyWindow(*copy_window)
    plan = IntakePlan([], [], [])
    looks: list[_Look] = []
    for entry in study.inbox_entries():
        if entry.path.name in hold:
            continue
        if entry.kind:
            with suppress(FileNotFoundError):  # removed since the listing
                _refuse_entry(study, store, plan, entry)
            continue
        try:
            stat = os.lstat(entry.path)
            if copy_window and copy_window.still_arriving(time.time() - stat.st_mtime_ns / 1e9):
                plan.arriving.append(entry.path)
                continue
            sha = store.known_sha256(entry.path.name, stat.st_size, stat.st_mtime_ns) or sha256_of(
                entry.path
            )
        except FileNotFoundError:  # removed since the listing
            continue
        except FcsReadError:  # replaced by a link or a FIFO since the listing
            kind = not_a_regular_file(os.lstat(entry.path).st_mode) or "not a regular file"
            _refuse_entry(study, store, plan, InboxEntry(entry.path, kind))
            continue
        look = _Look(
            entry.path,
            stat,
            sha,
            store.file_record(entry.path.name, sha),
            study.parse_name(entry.path.name),
        )
        record, parsed = look.record, look.parsed
        if record is not None and record["status"] == "processed" and not isinstance(parsed, str):
            # A sample with thresholds set in review has its own strategy identity.
            strategy_sha, version = (sample_keys or {}).get(parsed.sample_id) or current_keys[
                parsed.panel_token
            ]
            key = sample_key(sha, strategy_sha, version)
            # A result superseded by another acquisition under this name is not current: the
            # file came back (A, then B, then A again) and is processed as the latest.
            look.unchanged = record["sample_key"] == key and store.is_current(key)
        looks.append(look)

    conflicts = _conflicts(looks)
    shas_this_run: dict[str, str] = {}
    for look in looks:
        path, stat, sha, parsed = look.path, look.stat, look.sha, look.parsed
        if look.unchanged:
            store.touch_file(path.name, sha, stat.st_size, stat.st_mtime_ns)
            plan.unchanged.append(path)
            continue
        reason = ""
        earlier = store.processed_under_other_name(path.name, sha) or shas_this_run.get(sha)
        if isinstance(parsed, str):
            reason = parsed  # the name is the first thing the lab has to fix
        elif earlier and earlier != path.name:
            reason = (
                f"identical content (same sha256) to {earlier}, which is already processed: "
                "the same acquisition was exported twice; remove the extra copy"
            )
        elif path.name in conflicts:
            reason = conflicts[path.name]
        if reason:
            decision = IntakeDecision(
                path, sha, None if isinstance(parsed, str) else parsed, False, reason
            )
        else:
            decision = examine_file(study, path, sha)
            age = time.time() - stat.st_mtime_ns / 1e9
            if copy_window and decision.truncated and copy_window.still_arriving(age, True):
                plan.arriving.append(path)
                continue
            # New content for a sample with a current result (a re-run tube, a re-export,
            # or the same sample under a new name once the old file is gone): processed; the
            # earlier results stay in the store, superseded, and both are named.
            if decision.ready and (
                earlier_sha := store.current_sha_of_sample(decision.name.sample_id, sha)
            ):
                decision = replace(decision, replaces=earlier_sha)
        if decision.ready:
            shas_this_run[sha] = path.name
            release_from_quarantine(study, path.name)  # an earlier content's copy is stale
            plan.ready.append(decision)
            continue
        _refuse(study, store, plan, decision, stat)
    return plan
