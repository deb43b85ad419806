"""Intake: identify each inbox file, check its header against its panel, quarantine the rest.

Nothing here reads events: the header scan (~0.1 ms) decides whether a file is worth
processing, and every rejection carries a reason a lab scientist can act on.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from cohort.study import SampleName, Study
from gating.apply import resolve_for_strategy
from gating.compensate import CompensationError, check_spillover_channels
from panels.fcs import FcsReadError, scan_header
from panels.resolve import PanelError


@dataclass(frozen=True)
class IntakeDecision:
    """What intake concluded about one inbox file."""

    path: Path
    sha256: str
    name: SampleName | None
    ready: bool
    reason: str = ""
    events: int = 0
    replaces: str = ""  # sha256 of an earlier acquisition processed under the same name


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def examine_file(study: Study, path: Path, sha256: str) -> IntakeDecision:
    """Decide whether one file can be processed, reading its name and header only."""
    parsed = study.parse_name(path.name)
    if isinstance(parsed, str):
        return IntakeDecision(path, sha256, None, False, parsed)
    try:
        header = scan_header(path)
    except FcsReadError as exc:
        return IntakeDecision(path, sha256, parsed, False, exc.reason)
    try:
        token = parsed.panel_token
        resolve_for_strategy(study.panels[token], header, study.strategies[token])
        spill = header.spillover()
        if spill is not None:
            check_spillover_channels(spill[0], spill[1], header.pnn)
    except (PanelError, FcsReadError, CompensationError) as exc:
        return IntakeDecision(path, sha256, parsed, False, exc.reason, header.n_events)
    return IntakeDecision(path, sha256, parsed, True, "", header.n_events)


def quarantine_copy(study: Study, path: Path, reason: str) -> Path:
    """Copy a rejected file to quarantine/ with NAME.reason.txt beside it. inbox/ is untouched."""
    study.quarantine_dir.mkdir(parents=True, exist_ok=True)
    target = study.quarantine_dir / path.name
    if not target.exists() or target.stat().st_size != path.stat().st_size:
        shutil.copy2(path, target)
    note = study.quarantine_dir / f"{path.name}.reason.txt"
    note.write_text(f"{path.name}\n\n{reason}\n")
    return target


@dataclass
class IntakePlan:
    """The outcome of intake over the whole inbox for one run."""

    ready: list[IntakeDecision]
    unchanged: list[Path]
    quarantined: list[IntakeDecision]  # newly, by this pass
    # quarantined before for the same reason (same content): not copied or reported again
    still_quarantined: list[IntakeDecision] = field(default_factory=list)

    @property
    def seen(self) -> int:
        return (
            len(self.ready)
            + len(self.unchanged)
            + len(self.quarantined)
            + len(self.still_quarantined)
        )


def plan_intake(
    study: Study,
    store,
    current_keys: dict[str, str],
    hold: frozenset[str] = frozenset(),
    sample_keys: Mapping[str, tuple[str, str]] | None = None,
) -> IntakePlan:
    """Walk inbox/: skip files already processed with the current strategy, quarantine the
    ones that cannot be processed (recording why), and list the rest for processing.

    ``current_keys`` maps panel token -> the strategy/pipeline part of a sample key, so a file
    processed under an older strategy is processed again. Files named in ``hold`` (a copy the
    watcher is still waiting for) are left for a later pass, untouched and unrecorded.
    """
    from cohort.store import sample_key  # the store owns key identity

    plan = IntakePlan([], [], [])
    shas_this_run: dict[str, str] = {}
    for path in study.inbox_files():
        if path.name in hold:
            continue
        stat = path.stat()
        sha = store.known_sha256(path.name, stat.st_size, stat.st_mtime_ns) or sha256_of(path)
        record = store.file_record(path.name, sha)
        parsed = study.parse_name(path.name)
        if record is not None and record["status"] == "processed" and not isinstance(parsed, str):
            # A sample with thresholds set in review has its own strategy identity.
            strategy_sha, version = (sample_keys or {}).get(parsed.sample_id) or current_keys[
                parsed.panel_token
            ]
            key = sample_key(sha, strategy_sha, version)
            # A result superseded by another acquisition under this name is not current: the
            # file came back (A, then B, then A again) and is processed as the latest.
            if record["sample_key"] == key and store.is_current(key):
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
        if reason:
            decision = IntakeDecision(
                path, sha, None if isinstance(parsed, str) else parsed, False, reason
            )
        else:
            decision = examine_file(study, path, sha)
            # Same name, new content: a new acquisition (a re-run tube, a re-export). It is
            # processed; the earlier results stay in the store, superseded, and both are named.
            if decision.ready and (earlier_sha := store.current_sha_of_name(path.name, sha)):
                decision = replace(decision, replaces=earlier_sha)
        if decision.ready:
            shas_this_run[sha] = path.name
            plan.ready.append(decision)
            continue
        if record is not None and (record["status"], record["reason"]) == (
            "quarantined",
            decision.reason,
        ):
            store.touch_file(path.name, sha, stat.st_size, stat.st_mtime_ns)
            plan.still_quarantined.append(decision)
            continue
        quarantine_copy(study, path, decision.reason)
        store.record_rejection(
            path.name, sha, stat.st_size, stat.st_mtime_ns, "quarantined", decision.reason
        )
        plan.quarantined.append(decision)
    return plan
