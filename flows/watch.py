"""The watched inbox: process each new file once its copy is complete, in batches.

A file is complete when its size has not changed for the settle time and its header's
declared DATA segment fits inside it. Files already present at start are scanned (watchdog
raises no event for them). Lab shares (NFS/SMB) deliver no inotify events: use polling there.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from cohort.study import Study
from panels.fcs import FcsReadError, FcsTruncatedError, scan_header


@dataclass
class _Seen:
    size: int
    stable_since: float
    first_seen: float


@dataclass
class CopyTracker:
    """Decides, from repeated looks at the inbox, which files are complete."""

    settle_seconds: float = 10.0
    incomplete_timeout: float = 3600.0
    seen: dict[Path, _Seen] = field(default_factory=dict)

    def look(self, paths: list[Path], now: float) -> tuple[list[Path], list[Path]]:
        """Returns (ready, still_copying). A file past the timeout is handed over as ready,
        so the run quarantines it as truncated instead of waiting forever."""
        ready, waiting = [], []
        for path in paths:
            try:
                size = path.lstat().st_size
            except FileNotFoundError:
                self.seen.pop(path, None)
                continue
            entry = self.seen.get(path)
            if entry is None or entry.size != size:
                first = entry.first_seen if entry else now
                self.seen[path] = entry = _Seen(size, now, first)
            settled = now - entry.stable_since >= self.settle_seconds
            if settled and self._header_fits(path):
                ready.append(path)
            elif now - entry.first_seen >= self.incomplete_timeout:
                ready.append(path)
            else:
                waiting.append(path)
        return ready, waiting

    @staticmethod
    def _header_fits(path: Path) -> bool:
        try:
            scan_header(path)
        except FcsTruncatedError:
            return False
        except FcsReadError:
            return True  # complete but bad: let intake quarantine it with its reason
        return True

    def forget(self, paths: list[Path]) -> None:
        for path in paths:
            self.seen.pop(path, None)


class _Nudge(FileSystemEventHandler):
    def __init__(self, wake: threading.Event):
        self.wake = wake

    def on_any_event(self, event) -> None:
        self.wake.set()


def watch_inbox(
    study_root: str | Path,
    run: Callable[[list[str]], object],
    *,
    settle_seconds: float = 10.0,
    incomplete_timeout: float = 3600.0,
    polling: bool = False,
    poll_interval: float = 2.0,
    stop: threading.Event | None = None,
) -> None:
    """Watch inbox/ until ``stop`` is set; call ``run(hold)`` once per batch of complete
    files, ``hold`` naming files still being copied (to be left alone by that run).

    ``run`` must pass the same settle time and timeout to intake (``CopyWindow``): a file
    that starts arriving after this look is judged again when the pass has the study. A file
    is taken as handled only once the store records it as it is now; one the pass left
    (still arriving) is looked at again. Links, FIFOs and folders have no copy to wait for:
    they are handed to the pass at once, which lists them with a reason."""
    study = Study(study_root)
    stop = stop or threading.Event()
    wake = threading.Event()
    observer = PollingObserver(timeout=poll_interval) if polling else Observer()
    observer.schedule(_Nudge(wake), str(study.inbox), recursive=False)
    observer.start()
    tracker = CopyTracker(settle_seconds, incomplete_timeout)
    handled: dict[Path, tuple[int, int]] = {}
    try:
        while not stop.is_set():
            # scan: also finds files present before we started
            entries = study.inbox_entries()
            fresh = [e for e in entries if handled.get(e.path) != _signature(e.path)]
            # A file another pass (the nightly run) already processed or quarantined, as it is
            # now, is not a copy in progress.
            for path in _decided(study, [e.path for e in fresh], ("processed", "quarantined")):
                handled[path] = _signature(path)
                tracker.forget([path])
            fresh = [e for e in fresh if handled.get(e.path) != _signature(e.path)]
            ready, waiting = tracker.look([e.path for e in fresh if not e.kind], time.monotonic())
            ready += [e.path for e in fresh if e.kind]
            if ready:
                run(sorted(p.name for p in waiting))
                for path in _decided(study, ready, ("processed", "quarantined", "failed")):
                    handled[path] = _signature(path)
                tracker.forget(ready)
            # Events only shorten the wait; the scan decides.
            wake.wait(timeout=min(poll_interval, max(settle_seconds / 4, 0.05)))
            wake.clear()
    finally:
        observer.stop()
        observer.join()


def _decided(study: Study, paths: list[Path], statuses: tuple[str, ...]) -> list[Path]:
    """Of ``paths``, those the store records, at their current size and time, with one of
    ``statuses``."""
    if not paths or not study.db_path.exists():
        return []
    from cohort.store import Store

    store = Store(study.db_path)
    try:
        decided = []
        for path in paths:
            size, mtime_ns = _signature(path)
            sha = store.known_sha256(path.name, size, mtime_ns)
            record = store.file_record(path.name, sha) if sha is not None else None
            if record is not None and record["status"] in statuses:
                decided.append(path)
        return decided
    finally:
        store.close()


def _signature(path: Path) -> tuple[int, int]:
    """Size and modification time of the inbox entry itself (a link's, not its target's)."""
    try:
        stat = path.lstat()
    except FileNotFoundError:
        return (-1, -1)
    return (stat.st_size, stat.st_mtime_ns)
