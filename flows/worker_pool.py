"""The pool that does a pass's per-sample CPU work: local processes, or a Dask cluster.

This module imports nothing heavy, so a command can start the workers first and let them load
the gating and report code while it imports Prefect and starts Prefect's API. The workers
never import Prefect: only the flow process talks to it. With ``--dask`` the pool is the
cluster's executor: the Prefect tasks still run in the flow process and hand each file to a
Dask worker, which runs plain functions. Running Prefect's task engine on the Dask workers
(prefect-dask) cost each worker Prefect's import and an API client before its first file and
every task a round of API calls from the worker (issue 25: 41 s between connecting and the
first task).
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

# What a worker runs (samples, then report pages); each worker imports it as it starts.
WORKER_MODULES = ("flows.sample_work", "reports.cohort_report")

Result = TypeVar("Result")


@dataclass(frozen=True)
class WorkerPool:
    """An open pool: its executor, how many files it works on at once, and whether its
    workers are processes of this machine (the cohort report's pages are drawn only there:
    they are written to this machine's temporary folder)."""

    executor: Executor
    workers: int
    local: bool = True


_pool: WorkerPool | None = None


def _prepare_worker(parent_pid: int) -> None:
    from flows.lifetime import die_with_parent

    # A worker must not outlive the command, even one killed with -9 (the pool is created in
    # the command's main thread, which is the thread the kernel watches).
    die_with_parent(parent_pid)
    for module in WORKER_MODULES:
        importlib.import_module(module)
    # Each worker is one core: BLAS/OpenMP threads on top oversubscribe (measured 3x slower).
    # threadpoolctl limits the libraries loaded so far, hence after the import.
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def _prepare_dask_worker() -> None:
    """On each Dask worker as the pass connects: load the sample code now, while the flow
    process starts Prefect and takes the inbox in, not when the first file arrives."""
    importlib.import_module(WORKER_MODULES[0])
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)  # each of a worker's threads is one core, as in the local pool


def local_workers(workers: int | None, dask_address: str | None = None) -> int:
    """Worker processes for a pass: as asked, else one per core; none when Dask does the work."""
    if dask_address:
        return 1
    return workers or os.cpu_count() or 1


@contextmanager
def sample_worker_pool(workers: int) -> Iterator[None]:
    """Run the per-sample CPU work in ``workers`` processes while the block is open.

    The workers start loading at once, in parallel with whatever the caller does next.
    Inside an open pool, a nested call uses the same pool.
    """
    global _pool
    if workers <= 1 or _pool is not None:
        yield
        return
    # 'spawn': forking a process that runs Prefect's event-loop threads can deadlock.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_prepare_worker, initargs=(os.getpid(),)
    ) as pool:
        for _ in range(workers):
            pool.submit(os.getpid)  # each submit while none is idle starts one more worker
        _pool = WorkerPool(pool, workers)
        try:
            yield
        except BaseException:
            # Stopping (Ctrl-C, SIGTERM) or failing: do not wait for samples in flight; their
            # results are never committed, and the next pass does them again.
            processes = list((getattr(pool, "_processes", None) or {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for process in processes:
                process.terminate()
            raise
        finally:
            _pool = None


DASK_CONNECT_SECONDS = 30


@contextmanager
def dask_worker_pool(address: str) -> Iterator[None]:
    """Run the per-sample CPU work on the Dask cluster whose scheduler is at ``address`` while
    the block is open (a nested call uses the pool already open).

    Its workers need immunomon installed and the study at the same path; they get plain
    arguments and return plain records. A cluster that does not answer within
    ``DASK_CONNECT_SECONDS`` is one line naming the address (exit code 2)."""
    global _pool
    if _pool is not None:
        yield
        return
    from cohort.study import StudyError

    try:
        from distributed import Client, fire_and_forget
    except ImportError:
        raise StudyError(
            "--dask needs the dask extra: pip install 'immunomon[dask]' "
            "(in .venv: .venv/bin/pip install -e '.[dask]')"
        ) from None
    try:
        client = Client(address, set_as_default=False, timeout=DASK_CONNECT_SECONDS)
    except (OSError, TimeoutError) as error:
        raise StudyError(
            f"--dask {address}: no Dask scheduler answered ({error}); check the address "
            "and that the scheduler runs (dask scheduler; dask worker ADDRESS)"
        ) from None
    try:
        for worker in client.nthreads():  # one each, ahead of the files, run meanwhile
            fire_and_forget(client.submit(_prepare_dask_worker, workers=[worker], pure=False))
        threads = sum(client.nthreads().values()) or 1
        _pool = WorkerPool(client.get_executor(pure=False), threads, local=False)
        yield
    finally:
        _pool = None
        client.close()  # the files in flight are given up with it; the next pass does them


def run_in_worker_pool(function: Callable[..., Result], *args: object) -> Result:
    """``function(*args)`` on a worker of the open pool, or in this process if none is open."""
    if _pool is None:
        return function(*args)
    return _pool.executor.submit(function, *args).result()


def open_worker_pool() -> WorkerPool | None:
    """The pool open in this process, if any (for other work that splits across processes)."""
    return _pool
