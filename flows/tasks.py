"""The Prefect task for one sample file (one task per file, not per population).

Parallelism has one layer: Prefect runs the tasks in threads, and each task hands the CPU work
to the flow's process pool (``flows.worker_pool``). Prefect's own subprocess runner would start
an ephemeral API per worker on the same SQLite file ('database is locked'); this way only the
flow process talks to Prefect.
"""

from __future__ import annotations

import errno

from prefect import task
from prefect.cache_policies import NO_CACHE

from cohort.store import SampleRecord
from cohort.study import SampleName
from flows.sample_work import process_sample_file
from flows.worker_pool import run_in_worker_pool
from gating.apply import AnyStrategy
from panels.resolve import Panel

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


def is_transient(task, task_run, state) -> bool:
    """Retry I/O errors that can pass, not bad data or bugs (retried every night in vain)."""
    try:
        state.result()
    except OSError as error:
        return error.errno in TRANSIENT_ERRNOS
    except Exception:
        return False
    return False


# Results live in the study store, so Prefect neither caches nor persists them.
@task(
    name="process-sample",
    cache_policy=NO_CACHE,
    persist_result=False,
    task_run_name="process {name.sample_id}",
    retries=3,
    retry_delay_seconds=[5, 30, 120],
    retry_condition_fn=is_transient,
)
def process_sample_task(
    path: str,
    sha256: str,
    name: SampleName,
    panel: Panel,
    strategy: AnyStrategy,
    qc_report_dir: str | None = None,
    qc_reports: str = "none",
) -> SampleRecord:
    """Prefect task: one sample file, on the worker pool when one is open."""
    return run_in_worker_pool(
        process_sample_file, path, sha256, name, panel, strategy, qc_report_dir, qc_reports
    )
