"""Work on one sample file, as a plain function and as a Prefect task (one task per file).

Parallelism has one layer: Prefect runs the tasks in threads, and each task hands the CPU work
to a process pool owned by the flow. Prefect's own subprocess runner would start an ephemeral
API per worker on the same SQLite file ('database is locked'); this way only the flow process
talks to Prefect.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from cohort.store import SampleRecord
from cohort.study import SampleName
from gating.pipeline import PIPELINE_VERSION, gate_sample
from gating.strategy import Strategy
from panels.fcs import read_events
from panels.resolve import Panel, resolve_panel


def process_sample_file(
    path: str | Path, sha256: str, name: SampleName, panel: Panel, strategy: Strategy
) -> SampleRecord:
    """Read, gate and count one file; returns plain data for the store (no store access)."""
    data = read_events(path)
    resolved = resolve_panel(panel, data.header)
    gating = gate_sample(data, resolved, strategy)
    flags = list(gating.flags) + [f"reader:{note}" for note in data.header.notes]
    return SampleRecord(
        sample_id=name.sample_id,
        sha256=sha256,
        patient_id=name.patient_id,
        visit=name.visit,
        panel=name.panel_token,
        events=gating.n_events,
        strategy_sha256=strategy.sha256,
        pipeline_version=PIPELINE_VERSION,
        populations=[
            {
                "population": p.population,
                "parent": p.parent,
                "count": p.count,
                "parent_count": p.parent_count,
            }
            for p in gating.populations
        ],
        qc_steps=[asdict(q) for q in gating.qc_steps],
        gates=[asdict(g) for g in gating.gates],
        flags=flags,
    )


_pool: Executor | None = None


def _one_thread_per_worker() -> None:
    # Each worker is one core: BLAS/OpenMP threads on top oversubscribe (measured 3x slower).
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


@contextmanager
def sample_worker_pool(workers: int) -> Iterator[None]:
    """Run the tasks' CPU work in ``workers`` processes while the block is open."""
    global _pool
    if workers <= 1:
        yield
        return
    # 'spawn': forking a process that runs Prefect's event-loop threads can deadlock.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_one_thread_per_worker
    ) as pool:
        _pool = pool
        try:
            yield
        finally:
            _pool = None


# Results live in the study store, so Prefect neither caches nor persists them.
@task(
    name="process-sample",
    cache_policy=NO_CACHE,
    persist_result=False,
    task_run_name="process {name.sample_id}",
)
def process_sample_task(
    path: str, sha256: str, name: SampleName, panel: Panel, strategy: Strategy
) -> SampleRecord:
    """Prefect task: one sample file, on the worker pool when one is open."""
    if _pool is None:
        return process_sample_file(path, sha256, name, panel, strategy)
    return _pool.submit(process_sample_file, path, sha256, name, panel, strategy).result()
