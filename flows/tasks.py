"""The Prefect task for a batch of sample files.

Parallelism has one layer: Prefect runs the tasks in threads, and each task hands each file's
CPU work to the flow's pool (``flows.worker_pool``: local processes, or with ``--dask`` the
cluster's executor, so no Prefect task runs on a Dask worker). Prefect's own subprocess runner
would start an ephemeral API per worker on the same SQLite file ('database is locked'); this way
only the flow process talks to Prefect.

A task costs Prefect a task run, its state changes and their events: going from 182 tasks to 8
saved ~0.12 CPU-s a task between the flow process and the server (bench/cohort_scale.py, 1x),
about what gating a 5,000-event file costs. So a task takes a batch of files
(``sample_batches``), and each file is still a row of the run's files table and a line of its
log.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from cohort.store import SampleRecord
from flows.sample_work import process_sample_file_noting_warnings
from flows.worker_pool import run_in_worker_pool

Item = TypeVar("Item")

# I/O errors that can pass: a file locked by a copy tool or antivirus, a full disk, a share
# that hiccups. Not EINVAL (a header asking for an impossible seek), ENOENT or EISDIR.
TRANSIENT_ERRNOS = frozenset(
    {
        errno.EAGAIN,
        errno.EBUSY,
        errno.EACCES,
        errno.EINTR,
        errno.EIO,
        errno.ENOSPC,
        errno.ESTALE,
        errno.ETIMEDOUT,
        errno.ENOLCK,
    }
)
RETRY_DELAYS = (5.0, 30.0, 120.0)  # seconds before each retry of a transient I/O error
# Files per task: enough that Prefect's per-task cost is small beside the work, few enough
# that the workers finish together and results reach the store as the pass goes.
BATCH_FILES = 40
BATCHES_PER_WORKER = 4


def is_transient(error: BaseException) -> bool:
    """Retry I/O errors that can pass, not bad data or bugs (retried every night in vain)."""
    return isinstance(error, OSError) and error.errno in TRANSIENT_ERRNOS


def sample_batches(items: Sequence[Item], workers: int) -> list[list[Item]]:
    """Consecutive batches of at most ``BATCH_FILES``, about ``BATCHES_PER_WORKER`` per
    worker: 185 files on 2 workers are 8 tasks, 1,850 files 47; one file is one task."""
    if not items:
        return []
    count = max(-(-len(items) // BATCH_FILES), min(len(items), BATCHES_PER_WORKER * workers))
    size = -(-len(items) // count)
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def process_with_retries(
    parameters: dict, sleep: Callable[[float], None] = time.sleep
) -> tuple[SampleRecord, list[str]]:
    """One file on the worker pool (or here when none is open), transient I/O errors retried
    after 5 s, 30 s and 2 min; its record and the library warnings it raised."""
    for delay in (*RETRY_DELAYS, None):
        try:
            return run_in_worker_pool(process_sample_file_noting_warnings, *_arguments(parameters))
        except OSError as error:
            if delay is None or not is_transient(error):
                raise
            sleep(delay)
    raise AssertionError("unreachable")


def _arguments(p: dict) -> tuple:
    return (
        p["path"],
        p["sha256"],
        p["name"],
        p["panel"],
        p["strategy"],
        p.get("qc_report_dir"),
        p.get("qc_reports", "none"),
    )


# Results live in the study store, so Prefect neither caches nor persists them.
@task(
    name="process-samples",
    cache_policy=NO_CACHE,
    persist_result=False,
    task_run_name="process {label}",
)
def process_batch_task(batch: list[dict], label: str) -> list[SampleRecord | str]:
    """Prefect task: each file of ``batch`` in turn; per file its record, or the reason it
    failed (one bad file never stops the others)."""
    logger = get_run_logger()
    outcomes: list[SampleRecord | str] = []
    for parameters in batch:
        try:
            record, notes = process_with_retries(parameters)
        except Exception as exc:
            outcomes.append(f"processing failed: {type(exc).__name__}: {exc}")
            continue
        for note in notes:  # the log's, not the terminal's (INFO: shown with -v)
            logger.info("%s: library warning: %s", parameters["name"].sample_id, note)
        outcomes.append(record)
    return outcomes
