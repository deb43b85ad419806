"""Prefect's API, brought up ahead of the first flow run of a command."""

from __future__ import annotations

import contextvars
import datetime as dt
import inspect
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path

from flows.lifetime import die_with_parent
from panels.errors import ImmunomonError

# Seconds for a temporary server to answer while it lives: creating a new database (Prefect's
# migrations, once per PREFECT_HOME) took 79 s at load 15 on 2 cores; a start is ~5 s after.
STARTUP_TIMEOUT = 300.0
# Prefect keeps a study's runs this long (the study's store and audit trail keep every pass
# for good; Prefect's copy is the operations view). IMMUNOMON_PREFECT_RETENTION_DAYS changes it.
RETENTION_DAYS = 30.0
_own_server: subprocess.Popen | None = None  # the temporary server of this command, if any


class PrefectApiError(ImmunomonError):
    """Prefect's API did not answer; the message says which one and what to check."""


@contextmanager
def prefect_api_starting() -> Iterator[None]:
    """Bring Prefect's API up in a background thread while the block runs; when the block ends
    the API answers, or ``PrefectApiError`` is raised here.

    With no PREFECT_API_URL set, Prefect runs a temporary server in a subprocess, about 4 s of
    one core to start; a command overlaps that with loading its own code. Start no flow inside
    the block: a second caller of Prefect's start-up returns before the server answers.
    """
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        # The temporary server's module (~1.6 s) is imported here, not in the thread, so the
        # two threads do not import the same modules at once.
        import prefect.server.api.server  # noqa: F401

    failures: list[Exception] = []

    def start() -> None:
        # Our own temporary server takes a few seconds to listen: wait for it while it lives.
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            try:
                with get_client(sync_client=True) as client:
                    client.hello()
                return
            except Exception as error:  # handed to the caller's thread below
                starting = _own_server is not None and _own_server.poll() is None
                if not starting or time.monotonic() > deadline:
                    failures.append(error)
                    return
                time.sleep(0.1)

    # In the caller's context, so settings made for this block (a test harness) hold there.
    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(start,), name="prefect-api-start")
    thread.daemon = True
    thread.start()
    try:
        yield
    finally:
        thread.join()
    if failures:
        if url and _own_server is None:
            where = f"the Prefect server at {url}"
            advice = (
                "start it or check the address, "
                "or unset PREFECT_API_URL to use a temporary local one"
            )
        else:
            where = "Prefect's temporary local server"
            advice = "check that PREFECT_HOME (default ~/.prefect) is writable and has free space"
        raise PrefectApiError(f"{where} did not answer ({failures[0]}); {advice}") from failures[0]


@contextmanager
def prefect_api_running() -> Iterator[None]:
    """Prefect's API for the whole command: the server at PREFECT_API_URL, or else a temporary
    local one started here (``temporary_prefect_server``)."""
    from prefect.settings import PREFECT_API_URL

    with ExitStack() as stack:
        if not PREFECT_API_URL.value():
            stack.enter_context(temporary_prefect_server())
        yield


def retention() -> dt.timedelta:
    """How long Prefect keeps a study's runs (``RETENTION_DAYS`` unless the environment's
    IMMUNOMON_PREFECT_RETENTION_DAYS says otherwise)."""
    days = os.environ.get("IMMUNOMON_PREFECT_RETENTION_DAYS", "")
    try:
        return dt.timedelta(days=float(days) if days else RETENTION_DAYS)
    except ValueError:
        raise PrefectApiError(
            f"IMMUNOMON_PREFECT_RETENTION_DAYS={days!r}: give a number of days, e.g. 30"
        ) from None


def prune_study_runs(study_folder: str, keep: dt.timedelta, limit: int = 200) -> int:
    """Delete the study's flow runs (named ``FOLDER-YYYY-MM-DD``) that ended more than ``keep``
    ago, with their artifacts; their task runs and states go with them. Returns how many."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterEndTime,
        FlowRunFilterName,
    )

    own = re.compile(rf"^{re.escape(study_folder)}-\d{{4}}-\d\d-\d\d$")
    cutoff = dt.datetime.now(dt.UTC) - keep
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                name=FlowRunFilterName(like_=f"{study_folder}-"),
                end_time=FlowRunFilterEndTime(before_=cutoff),
            ),
            limit=limit,
        )
        old = [run for run in runs if own.match(run.name)]
        if old:
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[run.id for run in old])
                )
            )
            for artifact in artifacts:
                client.delete_artifact(artifact.id)
        for run in old:
            client.delete_flow_run(run.id)
    return len(old)


def sqlite_database() -> Path | None:
    """The SQLite file behind a temporary server (PREFECT_HOME/prefect.db by default)."""
    from prefect.settings import get_current_settings

    url = str(get_current_settings().server.database.connection_url.get_secret_value())
    prefix = "sqlite+aiosqlite:///"
    return Path(url.removeprefix(prefix)) if url.startswith(prefix) else None


def compact_database(path: Path) -> None:
    """After the temporary server stopped: drop the logs of deleted runs (Prefect's API has no
    call for it) and give the freed pages back to the file system."""
    import sqlite3

    if not path.is_file():
        return
    try:
        with sqlite3.connect(path, timeout=10) as db:
            db.execute(
                "DELETE FROM log WHERE flow_run_id IS NOT NULL "
                "AND flow_run_id NOT IN (SELECT id FROM flow_run)"
            )
            free, pages = (db.execute(f"PRAGMA {p}").fetchone()[0] for p in FREE_AND_ALL)
        db.close()
        if free > pages / 4:  # a quarter of the file unused: worth rewriting it
            with sqlite3.connect(path, timeout=10, isolation_level=None) as db:
                db.execute("VACUUM")
            db.close()
    except sqlite3.Error:  # another Prefect version's schema, or busy: pruning runs did most
        pass


FREE_AND_ALL = ("freelist_count", "page_count")


@contextmanager
def temporary_prefect_server() -> Iterator[str]:
    """A temporary Prefect server for this command, owned by it; yields its API URL.

    Prefect would start one by itself, but as a plain child process: a command killed with -9
    left it running, and one stopped with SIGTERM hung at exit while Prefect's log and event
    services waited for a server that had already received the same signal. This one is in
    its own session (a signal to the command's process group does not reach it), dies with the
    command's main thread (parent-death signal), and is stopped only after those services have
    sent what they hold.

    Each pass prunes its study's old runs (``prune_study_runs``); when the server has stopped,
    its database drops their logs and is compacted (``compact_database``).
    """
    import prefect
    from prefect.context import _temporary_global_settings_context, get_settings_context
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        **get_current_settings().to_environment_variables(exclude_unset=True),
    }
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--app-dir",
        str(prefect.__module_path__.parent),
        "--factory",
        "prefect.server.api.server:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "error",
        "--lifespan",
        "on",
    ]
    server = subprocess.Popen(
        command,
        env=env,
        start_new_session=True,
        preexec_fn=partial(die_with_parent, os.getpid(), signal.SIGTERM),
    )
    url = f"http://127.0.0.1:{port}/api"
    global _own_server
    _own_server = server
    finished = False  # compact only after a command that ended normally, never while stopping
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            with _temporary_global_settings_context(get_settings_context()):
                try:
                    yield url
                finally:
                    _drain_prefect_services()
        finished = True
    finally:
        _own_server = None
        _stop(server)
        database = sqlite_database() if finished else None
        if database is not None:
            compact_database(database)


def _drain_prefect_services(timeout: float = 10.0) -> None:
    """Send Prefect's queued logs and events while the server is still there."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        for result in (APILogWorker.drain_all(timeout=timeout), EventsWorker.drain_all(timeout)):
            if inspect.isawaitable(result):
                await result

    try:
        run_coro_as_sync(drain())
    except Exception:  # nothing queued, or a worker never started: nothing to send
        pass


def _stop(server: subprocess.Popen, grace: float = 5.0) -> None:
    if server.poll() is None:
        server.terminate()
        deadline = time.monotonic() + grace
        while server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if server.poll() is None:
            server.kill()
    server.wait()
