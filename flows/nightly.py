"""The nightly flow: intake, new sample files in batches of tasks, results, statistics, report."""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.states import Failed, State
from prefect.task_runners import ThreadPoolTaskRunner

from cohort.audit import AuditLog
from cohort.intake import plan_intake
from cohort.review import overrides_in_force, panel_of, reviewer_name
from cohort.store import Store
from cohort.study import Study, StudyLease
from flows.outcome import PassIncomplete, RunSummary, cohort_outputs, rewrite_cohort_outputs
from flows.prefect_api import prune_study_runs, retention
from flows.tasks import process_batch_task, sample_batches
from flows.worker_pool import (
    dask_worker_pool,
    local_workers,
    open_worker_pool,
    sample_worker_pool,
)
from gating.pipeline import PIPELINE_VERSION
from reports.outputs import input_hashes, software_version, write_report, write_results


class _OurOutcomeIsNoEngineError(logging.Filter):
    """A served run (``python -m prefect.engine``) re-raises a Failed state's exception and
    logs it as 'Engine execution exited with unexpected exception' with a traceback. For a
    PassIncomplete that is no crash: the run already logged the message at ERROR and ends
    Failed with it, so an automation on ERROR logs fires once, on ours."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (isinstance(error, PassIncomplete) and "unexpected exception" in record.msg)


for _name in ("prefect.flow_runs", "prefect.engine"):
    logging.getLogger(_name).addFilter(_OurOutcomeIsNoEngineError())


# The flow's stages as Prefect tasks, so the UI shows each with its duration and state. They
# take the study's objects (not hashable): no caching.
intake_task = task(name="intake", cache_policy=NO_CACHE)(plan_intake)
results_task = task(name="results and statistics", cache_policy=NO_CACHE)(write_results)
report_task = task(name="cohort report", cache_policy=NO_CACHE)(write_report)


def _run_name() -> str:
    """Flow runs are named after the study folder and the day: ``STUDY-YYYY-MM-DD``."""
    from prefect.runtime import flow_run

    folder = Path(flow_run.parameters.get("study_root", "study")).name
    return f"{folder}-{dt.datetime.now(dt.UTC).date().isoformat()}"


@flow(name="immunomon-nightly", log_prints=True, flow_run_name=_run_name)
def nightly_flow(
    study_root: str,
    workers: int = 1,
    hold: list[str] | None = None,
    dask_address: str | None = None,
    wait: bool = True,
    copy_window: tuple[float, float] | None = None,
) -> RunSummary | State:
    """One pass over a study: intake, process new samples, write results and the report.

    The per-sample tasks run on a local pool of ``workers`` processes, or on the Dask cluster
    at ``dask_address``. Passes over one study never overlap (the study lock), so a file is
    never processed twice by the watcher and the nightly schedule.

    The run ends Failed (what a Prefect automation watches) when the cohort step stopped or a
    file failed to process; everything that could be committed is, and the summary is the
    state's data.

    ``copy_window`` (the watcher's settle time and incomplete timeout): files still arriving
    when this pass has the study are left for a later one (``cohort.intake.CopyWindow``)."""
    study = Study(study_root)
    logger = get_run_logger()
    with warnings_to_log(logger), study.exclusive(wait, waiting=logger.warning) as lease:
        summary = _one_pass(study, lease, workers, frozenset(hold or ()), dask_address, copy_window)
    problems = summary.problems()
    if problems:
        return Failed(message=problems, data=PassIncomplete(problems, summary))
    return summary


@contextmanager
def warnings_to_log(logger) -> Iterator[None]:
    """Warnings libraries raise in this process (pandas, lifelines, matplotlib, Prefect) go to
    the run's log at INFO, each once, instead of the terminal, where only our warnings (the
    quarantines) belong; the worker processes return theirs with each file's record."""

    def to_log(message, category, filename, lineno, file=None, line=None) -> None:
        logger.info(
            "library warning: %s: %s (%s:%d)",
            category.__name__,
            message,
            Path(filename).name,
            lineno,
        )

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = to_log
        yield


@contextmanager
def per_sample_runner(workers: int, dask_address: str | None) -> Iterator:
    """Where the per-sample tasks run; yields ``submit(parameters) -> future``.

    The flow's task threads hand each file's CPU work to a pool: ``workers`` local processes,
    or, with ``dask_address``, that Dask cluster (``flows.worker_pool.dask_worker_pool``),
    whose workers read the inbox, which must be on a shared path, and return plain records:
    only this process talks to Prefect and writes the store.
    """
    pool = dask_worker_pool(dask_address) if dask_address else sample_worker_pool(workers)
    with pool:
        yield lambda parameters: process_batch_task.submit(**parameters)


def _one_pass(
    study: Study,
    lease: StudyLease,
    workers: int,
    hold: frozenset[str],
    dask_address: str | None,
    copy_window: tuple[float, float] | None = None,
) -> RunSummary:
    logger = get_run_logger()
    study.ensure_output_folders()
    store = Store(study.db_path)
    run_id = uuid.uuid4().hex[:12]
    store.start_run(run_id)
    current = {t: (s.sha256, PIPELINE_VERSION) for t, s in study.strategies.items()}
    audit = AuditLog(store.conn)
    # Thresholds set by hand in review, under the panels' current strategies, stay applied.
    manual = overrides_in_force(audit.entries(), {t: s.sha256 for t, s in study.strategies.items()})
    strategy_of = {
        sample_id: study.strategies[panel_of(sample_id)].with_overrides(values)
        for sample_id, values in manual.items()
    }
    plan = intake_task(
        study,
        store,
        current,
        hold,
        {sample_id: (s.sha256, PIPELINE_VERSION) for sample_id, s in strategy_of.items()},
        copy_window,
    )
    lease.renew()
    logger.info(
        "%d files in inbox: %d to process, %d unchanged, %d newly quarantined, "
        "%d quarantined before",
        plan.seen,
        len(plan.ready),
        len(plan.unchanged),
        len(plan.quarantined),
        len(plan.still_quarantined),
    )
    for decision in plan.quarantined:
        logger.warning("%s quarantined: %s", decision.path.name, decision.reason)
    progress = RunProgress(len(plan.ready), lease)
    with per_sample_runner(workers if len(plan.ready) > 1 else 1, dask_address) as submit:
        pool = open_worker_pool()
        outcomes = _process_ready(
            plan.ready,
            study,
            store,
            run_id,
            logger,
            submit,
            progress,
            strategy_of,
            pool.workers if pool else workers,
        )
        results, error = results_task(study, store)
        lease.renew()
        if results is not None:
            # The local pool, if one is open, draws the report's pages too.
            local = pool if pool and pool.local else None
            report_task(
                study,
                store,
                results,
                local.executor if local else None,
                local.workers if local else 1,
            )
    outputs = cohort_outputs(study, results, error)
    if error:
        logger.error("%s", outputs)
    failed_files = tuple(o["file"] for o in outcomes if o["status"] == "failed")
    processed = sum(o["status"] == "processed" for o in outcomes)
    counts = {
        "seen": plan.seen,
        "processed": processed,
        "quarantined": len(plan.quarantined),
        "failed": len(failed_files),
    }
    store.finish_run(run_id, counts, "error" if error else "ok", error)
    audit.append(
        reviewer_name(),
        "pass",
        error or "scheduled or manual processing pass",
        software_version(),
        # The inputs as this pass read them: a clinical file edited after sign-off shows in
        # the trail as a changed sha256 between two passes (the report lists them too).
        detail={"run_id": run_id, **counts, "inputs": input_hashes(study)},
    )
    store.close()
    summary = RunSummary(
        run_id,
        plan.seen,
        processed,
        len(plan.unchanged),
        len(plan.quarantined),
        len(failed_files),
        error,
        failed_files,
        len(plan.still_quarantined),
        outputs,
    )
    rows = outcomes + [
        {"file": d.path.name, "status": "quarantined", "reason": d.reason, "flags": ""}
        for d in plan.quarantined + plan.still_quarantined
    ]
    rows += [
        {"file": p.name, "status": "unchanged", "reason": "", "flags": ""} for p in plan.unchanged
    ]
    publish_run_artifacts(study, summary, rows)
    return summary


PROGRESS_UPDATE_SECONDS = 2.0
PROGRESS_LOGGER = "immunomon.progress"  # the terminal's progress lines (flows.cli shows them)


class RunProgress:
    """The pass's progress: a Prefect progress artifact the UI shows while it runs, and a line
    per file (done of total, rate, time left) for the terminal."""

    def __init__(self, total: int, lease: StudyLease):
        from prefect.artifacts import create_progress_artifact

        self.total, self.done, self.started, self.lease = total, 0, time.monotonic(), lease
        self.updated = self.started
        self.artifact_id = create_progress_artifact(
            progress=0.0 if total else 100.0,
            description=f"samples processed of {total} to process in this pass",
        )

    def step(self, file_name: str, status: str) -> None:
        from prefect.artifacts import update_progress_artifact

        self.done += 1
        self.lease.renew()  # a committed sample is progress: this pass is not hung
        now = time.monotonic()
        # One update per file was an API call per file; every 2 s is as live in the UI.
        if self.done == self.total or now - self.updated >= PROGRESS_UPDATE_SECONDS:
            update_progress_artifact(self.artifact_id, progress=100.0 * self.done / self.total)
            self.updated = now
        rate = self.done / max(time.monotonic() - self.started, 1e-9)
        left = (self.total - self.done) / rate
        logging.getLogger(PROGRESS_LOGGER).info(
            "%d/%d %s %s (%.1f files/s, %s left)",
            self.done,
            self.total,
            status,
            file_name,
            rate,
            f"{left / 60:.0f} min" if left >= 90 else f"{left:.0f} s",
        )


def publish_run_artifacts(study: Study, summary: RunSummary, rows: list[dict]) -> None:
    """What the lab sees in the Prefect UI for this run: a table of every file the pass saw
    (status, reason, flags), and a summary with where the report is."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    key = re.sub(r"[^a-z0-9-]+", "-", study.root.name.lower()).strip("-") or "study"
    create_table_artifact(
        key=f"{key}-files",
        table=sorted(rows, key=lambda r: (r["status"] == "unchanged", r["file"])),
        description=f"Every file of {study.root / 'inbox'} seen by run {summary.run_id}",
    )
    verdict = f"**{'Incomplete' if summary.cohort_error else 'Written'}:** {summary.outputs}"
    failed = (
        "\n\nFailed to process (retried next run): " + ", ".join(summary.failed_files)
        if summary.failed_files
        else ""
    )
    create_markdown_artifact(
        key=f"{key}-summary",
        markdown=(
            f"# {study.config.study}: run {summary.run_id}\n\n"
            f"| seen | processed | unchanged | in quarantine | failed |\n|---|---|---|---|---|\n"
            f"| {summary.seen} | {summary.processed} | {summary.unchanged} | "
            f"{summary.quarantined_total} ({summary.quarantined} new) | {summary.failed} |\n\n"
            f"{verdict}{failed}\n\nQuarantined files and their reasons: "
            f"`{study.root / 'quarantine'}`"
        ),
        description="The pass's outcome",
    )


def _process_ready(
    ready,
    study: Study,
    store: Store,
    run_id: str,
    logger,
    submit,
    progress: RunProgress,
    strategy_of: dict,
    workers: int,
) -> list[dict]:
    """Submit the files in batches (``flows.tasks.sample_batches``), one task each; store each
    file's result, in its own transaction, as its batch completes. Returns a row per file:
    file, status (processed | failed), reason, flags."""
    futures = {}
    for batch in sample_batches(ready, workers):
        first, last = batch[0].name.sample_id, batch[-1].name.sample_id
        label = first if len(batch) == 1 else f"{len(batch)} files {first}..{last}"
        parameters = [
            {
                "path": str(d.path),
                "sha256": d.sha256,
                "name": d.name,
                "panel": study.panels[d.name.panel_token],
                "strategy": strategy_of.get(d.name.sample_id)
                or study.strategies[d.name.panel_token],
                "qc_report_dir": str(study.qc_reports_dir),
                "qc_reports": study.config.qc_reports,
            }
            for d in batch
        ]
        futures[submit({"batch": parameters, "label": label})] = batch
    outcomes = []
    for future in as_completed(list(futures)):
        batch = futures[future]
        try:
            results = future.result()
        except Exception as exc:  # the task itself failed (a lost Dask worker): all its files
            results = [f"processing failed: {type(exc).__name__}: {exc}"] * len(batch)
        for decision, result in zip(batch, results, strict=True):
            outcomes.append(_store_outcome(decision, result, store, run_id, logger))
            progress.step(decision.path.name, outcomes[-1]["status"])
    return outcomes


def _store_outcome(decision, result, store: Store, run_id: str, logger) -> dict:
    """Commit one file's record (or its failure) and log it; its row of the files table."""
    stat = decision.path.stat()
    if isinstance(result, str):
        reason = f"{result}. It will be retried next run"
        store.record_rejection(
            decision.path.name, decision.sha256, stat.st_size, stat.st_mtime_ns, "failed", reason
        )
        logger.error("%s: %s", decision.path.name, reason)
        return {"file": decision.path.name, "status": "failed", "reason": reason, "flags": ""}
    if decision.replaces:
        logger.warning(
            "%s: new content under an already-processed name; it replaces the acquisition "
            "with sha256 %s..., whose results are kept as superseded",
            decision.path.name,
            decision.replaces[:12],
        )
    store.record_sample(
        file_name=decision.path.name,
        size=stat.st_size,
        mtime_ns=stat.st_mtime_ns,
        result=result,
        run_id=run_id,
        replaces=decision.replaces,
    )
    logger.info("processed %s", decision.path.name)
    return {
        "file": decision.path.name,
        "status": "processed",
        "reason": "",
        "flags": ";".join(result.flags),
    }


def run_study(
    study_root: str | Path,
    workers: int | None = None,
    hold: list[str] | None = None,
    dask_address: str | None = None,
    wait: bool = True,
    copy_window: tuple[float, float] | None = None,
) -> RunSummary:
    """Run the nightly flow once: per-sample work on a local pool sized to the machine, or on
    the Dask cluster at ``dask_address``."""
    root = str(Path(study_root).resolve())
    workers = local_workers(workers, dask_address)
    configured = nightly_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=workers))
    # Opened before the flow, so the workers load while Prefect starts; the flow reuses it.
    with sample_worker_pool(workers):
        state = configured(root, workers, hold, dask_address, wait, copy_window, return_state=True)
    try:  # Prefect keeps a study's runs for the retention period (flows.prefect_api)
        prune_study_runs(Path(root).name, retention())
    except Exception as error:  # the pass is done; pruning is tried again next pass
        logging.getLogger(__name__).warning("old Prefect runs not pruned: %s", error)
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, PassIncomplete) and outcome.summary is not None:
        return outcome.summary  # a finished pass that left something out
    if isinstance(outcome, BaseException):  # a bug or an unusable study, not a finished pass
        raise outcome
    return outcome


@flow(name="immunomon-report", log_prints=True)
def report_flow(study_root: str) -> str | State:
    """Rewrite results and the cohort report from the store, without processing anything.

    Ends Failed, with what was written and left out, when a clinical file is broken (as
    ``immunomon report`` exits 2); the message is also logged at ERROR."""
    study = Study(study_root)
    logger = get_run_logger()
    with warnings_to_log(logger):
        outputs, error = rewrite_cohort_outputs(study, results_task, report_task, logger.warning)
    if error:
        logger.error("%s", outputs)
        return Failed(message=outputs, data=PassIncomplete(outputs))
    logger.info("%s", outputs)
    return outputs
