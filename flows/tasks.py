"""Work on one sample file, as a plain function and as a Prefect task (one task per file).

Parallelism has one layer: Prefect runs the tasks in threads, and each task hands the CPU work
to a process pool owned by the flow. Prefect's own subprocess runner would start an ephemeral
API per worker on the same SQLite file ('database is locked'); this way only the flow process
talks to Prefect.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from cohort.store import SampleRecord
from cohort.study import SampleName
from gating.apply import AnyStrategy, gate_file
from gating.pipeline import PIPELINE_VERSION
from panels.resolve import Panel
from reports.qc_report import write_sample_qc_report

SERIOUS_FLAGS = ("qc_removed", "low_count", "default_gate")


def needs_review(flags: list[str]) -> bool:
    """Flags a reviewer must look at (a default threshold inside bounds is routine)."""
    return any(f.startswith(SERIOUS_FLAGS) for f in flags)


def process_sample_file(
    path: str | Path,
    sha256: str,
    name: SampleName,
    panel: Panel,
    strategy: AnyStrategy,
    qc_report_dir: str | None = None,
    qc_reports: str = "none",
) -> SampleRecord:
    """Read, gate and count one file; returns plain data for the store (no store access).

    With ``qc_reports`` 'all' (or 'flagged' and the sample needs review) the sample's QC PDF is
    written to ``qc_report_dir`` while its events and masks are in memory (YAML strategies;
    a FlowJo workspace's gates are reviewed in FlowJo).
    """
    gated = gate_file(path, panel, strategy)
    gating, data = gated.gating, gated.data
    notes = data.header.notes if data is not None else []
    flags = list(gating.flags) + [f"reader:{note}" for note in notes]
    record = SampleRecord(
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
    wanted = qc_reports == "all" or (qc_reports == "flagged" and needs_review(flags))
    if qc_report_dir and wanted and data is not None:
        write_sample_qc_report(
            Path(qc_report_dir) / f"{name.sample_id}.pdf",
            sample_id=name.sample_id,
            file_name=Path(path).name,
            sha256=sha256,
            gates=gating.gates,
            masks=gating.masks,
            dims=gating.space,
            data_channel=data.channel,
            qc_steps=record.qc_steps,
            populations=record.populations,
            flags=flags,
            software=f"strategy {strategy.name} sha256 {strategy.sha256[:12]}",
        )
    return record


_pool: Executor | None = None


def _one_thread_per_worker() -> None:
    # Each worker is one core: BLAS/OpenMP threads on top oversubscribe (measured 3x slower).
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def local_workers(workers: int | None, dask_address: str | None = None) -> int:
    """Worker processes for a pass: as asked, else one per core; none when Dask does the work."""
    if dask_address:
        return 1
    return workers or os.cpu_count() or 1


@contextmanager
def sample_worker_pool(workers: int) -> Iterator[None]:
    """Run the tasks' CPU work in ``workers`` processes while the block is open.

    The workers start loading at once, in parallel with whatever the caller does next
    (Prefect's start-up). Inside an open pool, a nested call uses the same pool.
    """
    global _pool
    if workers <= 1 or _pool is not None:
        yield
        return
    # 'spawn': forking a process that runs Prefect's event-loop threads can deadlock.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_one_thread_per_worker
    ) as pool:
        for _ in range(workers):
            pool.submit(_loaded)  # starts every worker; each imports this module's imports
        _pool = pool
        try:
            yield
        finally:
            _pool = None


def _loaded() -> None:
    """Nothing: by the time a worker runs it, the gating and report code is imported."""


def is_transient(task, task_run, state) -> bool:
    """Retry I/O errors (a file locked by a copy tool, a full disk), not bad data or bugs."""
    try:
        state.result()
    except OSError:
        return True
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
    args = (path, sha256, name, panel, strategy, qc_report_dir, qc_reports)
    if _pool is None:
        return process_sample_file(*args)
    return _pool.submit(process_sample_file, *args).result()
