"""The nightly flow: intake, one task per new sample file, then results, statistics, report."""

from __future__ import annotations

import datetime as dt
import logging
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.states import Failed, State
from prefect.task_runners import ThreadPoolTaskRunner

from cohort.clinical import (
    ClinicalData,
    ClinicalDataError,
    load_clinical,
    load_lymphocyte_counts,
    patient_windows,
)
from cohort.exports import mfi_table, populations_table, samples_table, write_csv
from cohort.intake import plan_intake
from cohort.store import Store
from cohort.study import Study, StudyError
from flows.tasks import process_sample_task
from flows.worker_pool import WorkerPool, local_workers, open_worker_pool, sample_worker_pool
from gating.pipeline import PIPELINE_VERSION, replay_gates
from gating.space import GatingSpace
from reports.cohort_report import ReportContext, write_cohort_report
from reports.qc_report import write_sample_qc_report
from stats.clinical import clinical_statistics, kaplan_meier_curves
from stats.immuno import wilcoxon_vs_baseline
from stats.tests import STATISTICS_COLUMNS


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    seen: int
    processed: int
    unchanged: int
    quarantined: int
    failed: int
    cohort_error: str = ""
    failed_files: tuple[str, ...] = ()
    still_quarantined: int = 0  # quarantined by an earlier pass, same content and reason


def software_version() -> str:
    """immunomon's version and, when run from a git checkout, the commit."""
    try:
        version = metadata.version("immunomon")
    except metadata.PackageNotFoundError:
        version = "unknown"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "no git"
    return f"immunomon {version} (commit {commit}, pipeline v{PIPELINE_VERSION})"


@dataclass
class CohortResults:
    """What the cohort report is drawn from (every table is also a results/*.csv)."""

    clinical: ClinicalData
    populations: pd.DataFrame
    statistics: pd.DataFrame
    groups: dict[str, str]
    windows: pd.DataFrame


def update_outputs(study: Study, store: Store, pool: WorkerPool | None = None) -> str:
    """Write results/*.csv, statistics and the cohort report from the store; with a worker
    ``pool`` the report's pages are drawn on its processes.

    Returns an error message when the clinical data stop the cohort step (the store and
    samples.csv are still written), else ''.
    """
    results, error = write_results(study, store)
    if results is not None:
        write_report(study, store, results, pool)
    return error


def write_results(study: Study, store: Store) -> tuple[CohortResults | None, str]:
    """results/samples.csv, populations.csv, mfi.csv, and with usable clinical data
    clinical_windows.csv and statistics.csv. Returns the tables, or None and the clinical
    error that stopped the cohort step."""
    study.ensure_output_folders()
    samples = samples_table(store)
    write_csv(samples, study.results_dir / "samples.csv")
    visits = list(study.config.visits)
    counts = None
    try:
        clinical: ClinicalData | None = load_clinical(study.clinical_dir, visits)
        error = ""
    except ClinicalDataError as exc:
        clinical, error = None, str(exc)
        try:  # an error elsewhere (a missing column of patients.csv) leaves cells/uL intact
            counts = load_lymphocyte_counts(study.clinical_dir, visits)
        except ClinicalDataError:
            counts = None
    populations = populations_table(store, study, clinical, counts)
    write_csv(populations, study.results_dir / "populations.csv")
    write_csv(mfi_table(store), study.results_dir / "mfi.csv")
    if clinical is None:
        return None, error
    populations = populations[populations.missing_markers == ""]  # measured rows only
    groups = clinical.group_of()
    windows = patient_windows(clinical)
    write_csv(windows, study.results_dir / "clinical_windows.csv")
    parts = [
        wilcoxon_vs_baseline(populations, groups, study.config.baseline, visits),
        clinical_statistics(windows),
    ]
    statistics = pd.concat([part for part in parts if not part.empty] or parts, ignore_index=True)[
        STATISTICS_COLUMNS
    ]
    write_csv(statistics, study.results_dir / "statistics.csv")
    return CohortResults(clinical, populations, statistics, groups, windows), ""


def write_report(
    study: Study, store: Store, results: CohortResults, pool: WorkerPool | None = None
) -> Path:
    """The cohort report PDF; with a worker ``pool`` its pages are drawn on its processes."""
    path = study.reports_dir / "cohort_report.pdf"
    write_cohort_report(
        path,
        report_context(study, store, results.clinical, results.populations),
        store.files_frame(),
        results.populations,
        results.statistics,
        results.groups,
        results.windows,
        kaplan_meier_curves(results.windows),
        executor=pool.executor if pool else None,
        parts=pool.workers if pool else 1,
    )
    return path


# The flow's stages as Prefect tasks, so the UI shows each with its duration and state. They
# take the study's objects (not hashable): no caching.
intake_task = task(name="intake", cache_policy=NO_CACHE)(plan_intake)
results_task = task(name="results and statistics", cache_policy=NO_CACHE)(write_results)
report_task = task(name="cohort report", cache_policy=NO_CACHE)(write_report)


def write_qc_report_from_store(study: Study, store: Store, sample_id: str) -> Path:
    """Regenerate one sample's QC PDF from its recorded gates (no gate is placed anew)."""
    from panels.fcs import read_events
    from panels.resolve import resolve_panel

    sample = store.current_sample(sample_id)
    if sample is None:
        raise LookupError(f"no processed sample {sample_id!r} in {study.db_path}")
    key = sample["sample_key"]
    gates = store.applied_gates(key)
    if not gates:
        source = study.strategies[sample["panel"]].source
        raise LookupError(f"{sample_id} was gated with the FlowJo workspace {source}: no QC pages")
    data = read_events(study.inbox / sample["file_name"])
    resolved = resolve_panel(study.panels[sample["panel"]], data.header)
    space = GatingSpace.of_sample(data, resolved)
    masks = replay_gates(data, resolved, gates, space)
    pops = store.current_populations()
    pops = pops[pops.sample_key == key]
    qc = store.qc_steps(key).rename(columns={"step": "name"})
    return write_sample_qc_report(
        study.qc_reports_dir / f"{sample_id}.pdf",
        sample_id=sample_id,
        file_name=sample["file_name"],
        sha256=sample["sha256"],
        gates=gates,
        masks=masks,
        dims=space,
        data_channel=data.channel,
        qc_steps=qc[["name", "events_in", "removed", "detail"]].to_dict("records"),
        populations=pops[["population", "parent", "count", "parent_count"]].to_dict("records"),
        flags=[f for f in (sample["qc_flags"] or "").split(";") if f],
        software=f"result {key}, regenerated from the store",
    )


def report_context(
    study: Study, store: Store, clinical: ClinicalData, populations: pd.DataFrame
) -> ReportContext:
    files = store.files_frame()
    stamps = pd.concat([files.first_seen.dropna(), files.processed_at.dropna()])
    clinical_dates = [
        clinical.visits.visit_date.max(),
        clinical.relapses.relapse_date.max(),
        clinical.patients.last_follow_up_date.max(),
    ]
    known = set(clinical.patients.patient_id)
    unknown = sorted(set(populations.patient_id) - known)
    cfg = study.config
    return ReportContext(
        study=cfg.study,
        visits=list(cfg.visits),
        baseline=cfg.baseline,
        panels={t: p.title for t, p in study.panels.items()},
        strategy_hashes={t: s.sha256 for t, s in study.strategies.items()},
        software=software_version(),
        data_as_of=stamps.max() if not stamps.empty else "no data",
        clinical_cut=str(max(d for d in clinical_dates if pd.notna(d)).date()),
        unknown_patients=unknown,
        methods=methods_text(study),
    )


def methods_text(study: Study) -> list[str]:
    cfg = study.config
    lines = [
        "Processing of each FCS file (one Prefect task per file):",
        "  - events read from the DATA segment as the TEXT keywords declare; compensation with",
        "    the file's own $SPILLOVER/$SPILL matrix; logicle transform (T = channel $PnR, W, M,",
        "    A from the panel) for markers, scatter scaled to its range;",
        "  - QC: saturated (margin) events, time bins whose flow rate or mean signal jumps",
        "    (robust z-score), doublets (FSC-A/FSC-H ratio at the density valley), debris",
        "    (FSC-A at the density valley);",
        "  - gates placed per sample within the bounds of the panel's strategy: thresholds at",
        "    density valleys, lymphocytes by a Gaussian mixture on FSC-A/SSC-A; where the data",
        "    show no valley the strategy's default is used and the sample is flagged.",
        "",
        "Measures: % of parent; % of lymphocytes; cells/µL = % of lymphocytes x the visit's",
        f"lymphocyte count from clinical/visits.csv ({cfg.absolute_counts}).",
        "",
        f"Statistics: each visit against baseline ({cfg.baseline}) with a two-sided paired",
        "Wilcoxon signed-rank test (scipy.stats.wilcoxon defaults: zero differences dropped,",
        "no continuity correction; exact distribution for n <= 50 without ties, else normal",
        "approximation), on patients with both samples. Benjamini-Hochberg adjustment over all",
        "tests of one group and one measure. Groups: all patients, children, adults.",
        "Samples of patients missing from patients.csv are excluded from statistics.",
        "",
        "Clinical windows: the 365 days before the first infusion and the 365 days after,",
        "the latter censored at last_follow_up_date (a shortened window is named in the",
        "method of each row). Relapse counts and cumulative prednisone (summed day by day",
        "from the dose intervals) are compared per 365 days of observation, so missing",
        "months are never counted as relapse-free or steroid-free. Drugs are counted on the",
        "infusion day and at +365 days (patients not followed that long are left out).",
        "Relapse-free survival: Kaplan-Meier per window; Cox proportional hazards",
        "(lifelines, Efron ties, Wald test) with the window as covariate, unmatched and",
        "stratified by patient. Drug use: Fisher's exact test per drug, two-sided.",
    ]
    for token, strategy in study.strategies.items():
        lines.append(f"Strategy {token}: {strategy.source} (sha256 {strategy.sha256[:12]}).")
    return lines


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
) -> RunSummary | State:
    """One pass over a study: intake, process new samples, write results and the report.

    The per-sample tasks run on a local pool of ``workers`` processes, or on the Dask cluster
    at ``dask_address``. Passes over one study never overlap (the study lock), so a file is
    never processed twice by the watcher and the nightly schedule.

    The run ends Failed (what a Prefect automation watches) when the cohort step stopped or a
    file failed to process; everything that could be committed is, and the summary is the
    state's data."""
    study = Study(study_root)
    logger = get_run_logger()
    with study.exclusive(wait, waiting=logger.warning):
        summary = _one_pass(study, workers, frozenset(hold or ()), dask_address)
    problems = []
    if summary.failed:
        problems.append(
            f"{summary.failed} file(s) failed to process: {', '.join(summary.failed_files)}"
        )
    if summary.cohort_error:
        problems.append(f"cohort step stopped: {summary.cohort_error}")
    return Failed(message="; ".join(problems), data=summary) if problems else summary


@contextmanager
def per_sample_runner(workers: int, dask_address: str | None) -> Iterator:
    """Where the per-sample tasks run; yields ``submit(parameters) -> future``.

    Locally the flow's task threads hand the CPU work to a pool of ``workers`` processes. With
    ``dask_address`` the tasks go to that Dask cluster (prefect-dask); its workers read the
    inbox, which must be on a shared path, and return plain records: only this process
    writes the store.
    """
    if dask_address:
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError:
            raise StudyError(
                "--dask needs the dask extra: pip install 'immunomon[dask]' (in .venv: "
                ".venv/bin/pip install -e '.[dask]')"
            ) from None

        with DaskTaskRunner(address=dask_address) as runner:
            yield lambda parameters: runner.submit(process_sample_task, parameters)
    else:
        with sample_worker_pool(workers):
            yield lambda parameters: process_sample_task.submit(**parameters)


def _one_pass(
    study: Study, workers: int, hold: frozenset[str], dask_address: str | None
) -> RunSummary:
    logger = get_run_logger()
    study.ensure_output_folders()
    store = Store(study.db_path)
    run_id = uuid.uuid4().hex[:12]
    store.start_run(run_id)
    current = {t: (s.sha256, PIPELINE_VERSION) for t, s in study.strategies.items()}
    plan = intake_task(study, store, current, hold)
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
    progress = RunProgress(len(plan.ready))
    with per_sample_runner(workers if len(plan.ready) > 1 else 1, dask_address) as submit:
        outcomes = _process_ready(plan.ready, study, store, run_id, logger, submit, progress)
        results, error = results_task(study, store)
        if results is not None:
            # The local pool, if one is open, draws the report's pages too.
            report_task(study, store, results, open_worker_pool())
    if error:
        logger.error("cohort step stopped: %s", error)
    failed_files = tuple(o["file"] for o in outcomes if o["status"] == "failed")
    processed = sum(o["status"] == "processed" for o in outcomes)
    counts = {
        "seen": plan.seen,
        "processed": processed,
        "quarantined": len(plan.quarantined),
        "failed": len(failed_files),
    }
    store.finish_run(run_id, counts, "error" if error else "ok", error)
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


PROGRESS_LOGGER = "immunomon.progress"  # the terminal's progress lines (flows.cli shows them)


class RunProgress:
    """The pass's progress: a Prefect progress artifact the UI shows while it runs, and a line
    per file (done of total, rate, time left) for the terminal."""

    def __init__(self, total: int):
        from prefect.artifacts import create_progress_artifact

        self.total, self.done, self.started = total, 0, time.monotonic()
        self.artifact_id = create_progress_artifact(
            progress=0.0 if total else 100.0,
            description=f"samples processed of {total} to process in this pass",
        )

    def step(self, file_name: str, status: str) -> None:
        from prefect.artifacts import update_progress_artifact

        self.done += 1
        update_progress_artifact(self.artifact_id, progress=100.0 * self.done / self.total)
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
    verdict = (
        f"**cohort step stopped:** {summary.cohort_error}"
        if summary.cohort_error
        else f"Report: `{study.reports_dir / 'cohort_report.pdf'}`"
    )
    failed = (
        "\n\nFailed to process (retried next run): " + ", ".join(summary.failed_files)
        if summary.failed_files
        else ""
    )
    create_markdown_artifact(
        key=f"{key}-summary",
        markdown=(
            f"# {study.config.study}: run {summary.run_id}\n\n"
            f"| seen | processed | unchanged | quarantined | failed |\n|---|---|---|---|---|\n"
            f"| {summary.seen} | {summary.processed} | {summary.unchanged} | "
            f"{summary.quarantined} | {summary.failed} |\n\n{verdict}{failed}\n\n"
            f"Results: `{study.results_dir}`"
        ),
        description="The pass's outcome",
    )


def _process_ready(
    ready, study: Study, store: Store, run_id: str, logger, submit, progress: RunProgress
) -> list[dict]:
    """Submit one task per file; store each result, in its own transaction, as it completes.
    Returns a row per file: file, status (processed | failed), reason, flags."""
    futures = {
        submit(
            {
                "path": str(d.path),
                "sha256": d.sha256,
                "name": d.name,
                "panel": study.panels[d.name.panel_token],
                "strategy": study.strategies[d.name.panel_token],
                "qc_report_dir": str(study.qc_reports_dir),
                "qc_reports": study.config.qc_reports,
            }
        ): d
        for d in ready
    }
    outcomes = []
    for done, future in enumerate(as_completed(list(futures)), start=1):
        decision = futures[future]
        stat = decision.path.stat()
        try:
            record = future.result()
        except Exception as exc:  # one bad file never stops the others
            reason = f"processing failed: {type(exc).__name__}: {exc}. It will be retried next run"
            store.record_rejection(
                decision.path.name,
                decision.sha256,
                stat.st_size,
                stat.st_mtime_ns,
                "failed",
                reason,
            )
            logger.error("%s: %s", decision.path.name, reason)
            outcomes.append(
                {"file": decision.path.name, "status": "failed", "reason": reason, "flags": ""}
            )
            continue
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
            result=record,
            run_id=run_id,
            replaces=decision.replaces,
        )
        outcomes.append(
            {
                "file": decision.path.name,
                "status": "processed",
                "reason": "",
                "flags": ";".join(record.flags),
            }
        )
        logger.info("processed %d/%d %s", done, len(futures), decision.path.name)
        progress.step(decision.path.name, "processed")
    return outcomes


def run_study(
    study_root: str | Path,
    workers: int | None = None,
    hold: list[str] | None = None,
    dask_address: str | None = None,
    wait: bool = True,
) -> RunSummary:
    """Run the nightly flow once: per-sample work on a local pool sized to the machine, or on
    the Dask cluster at ``dask_address``."""
    root = str(Path(study_root).resolve())
    workers = local_workers(workers, dask_address)
    configured = nightly_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=workers))
    # Opened before the flow, so the workers load while Prefect starts; the flow reuses it.
    with sample_worker_pool(workers):
        state = configured(root, workers, hold, dask_address, wait, return_state=True)
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, BaseException):  # a bug or an unusable study, not a finished pass
        raise outcome
    return outcome


@flow(name="immunomon-report", log_prints=True)
def report_flow(study_root: str) -> str:
    """Rewrite results and the cohort report from the store, without processing anything."""
    study = Study(study_root)
    with study.exclusive():
        store = Store(study.db_path)
        try:
            return update_outputs(study, store)
        finally:
            store.close()
