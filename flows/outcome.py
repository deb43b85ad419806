"""What a pass did, in the words the terminal, Prefect's state and the summary artifact share.

No Prefect here: ``immunomon report`` says the same without importing it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cohort.clinical import FEEDS
from panels.errors import ImmunomonError

if TYPE_CHECKING:
    from cohort.store import Store
    from cohort.study import Study
    from reports.outputs import CohortResults


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
    outputs: str = ""  # what the cohort step wrote and what it left out (``cohort_outputs``)

    @property
    def quarantined_total(self) -> int:
        """Files sitting in quarantine after this pass: new ones and earlier ones."""
        return self.quarantined + self.still_quarantined

    def problems(self) -> str:
        """Why the pass ends Failed ('' when it does not): files that failed, then what the
        cohort step wrote and left out."""
        problems = []
        if self.failed:
            problems.append(
                f"{self.failed} file(s) failed to process: {', '.join(self.failed_files)}"
            )
        if self.cohort_error:
            problems.append(self.outputs)
        return "; ".join(problems)


class PassIncomplete(ImmunomonError):
    """A finished pass that left something out: the Failed state's data, so Prefect's engine
    re-raises our message (a RunSummary there is 'Unexpected result for failed state')."""

    def __init__(self, message: str, summary: RunSummary | None = None):
        super().__init__(message)
        self.summary = summary

    def __reduce__(self):  # picklable, for a result store or a process boundary
        return (PassIncomplete, (str(self), self.summary))


def cohort_outputs(study: Study, results: CohortResults | None, error: str) -> str:
    """One sentence of what the cohort step wrote and, with a broken clinical file, what it
    left out and why: the state message, the summary artifact and the terminal say it."""
    results_dir, report = study.results_dir, study.reports_dir / "cohort_report.pdf"
    if results is None:
        written = (
            f"wrote samples.csv, populations.csv and mfi.csv in {results_dir}; left out: "
            f"statistics.csv and the cohort report, kept as the last pass wrote them"
        )
        return f"{written} ({error})" if error else written
    written = f"wrote the cohort report {report} and the results in {results_dir}"
    if not results.broken_inputs:
        return written
    left_out = "; ".join(
        f"{FEEDS.get(name, name)}, because {problem}"
        for name, problem in results.broken_inputs.items()
    )
    return f"{written}; left out: {left_out}"


@contextmanager
def study_store(
    study: Study, exclusive: bool = False, waiting: Callable[[str], None] | None = None
) -> Iterator[Store]:
    """The study's store, open for the block and closed after it whatever happens. With
    ``exclusive`` the block also holds the study's lock (not while a pass is writing results;
    ``waiting`` is told who holds it while this waits)."""
    from cohort.store import Store

    with study.exclusive(waiting=waiting) if exclusive else nullcontext():
        store = Store(study.db_path)
        try:
            yield store
        finally:
            store.close()


def write_cohort_outputs(
    study: Study,
    store: Store,
    write_results: Callable,
    write_report: Callable,
    *,
    only_if_changed: bool,
    after_results: Callable[[], None] = lambda: None,
    report_arguments: tuple = (),
    log: Callable[[str], None] = lambda line: None,
) -> tuple[str, str]:
    """The results and the cohort report written from the store (``reports.outputs.
    write_outputs``: with ``only_if_changed`` left as they are when nothing they are made from
    changed). Returns the sentence of what was written and left out (``cohort_outputs``) and
    the error, '' when nothing was left out."""
    from reports.outputs import write_outputs

    done = write_outputs(
        study,
        store,
        write_results,
        write_report,
        only_if_changed=only_if_changed,
        after_results=after_results,
        report_arguments=report_arguments,
        log=log,
    )
    if not done.written:
        return unchanged_outputs_sentence(study), ""
    return cohort_outputs(study, done.results, done.error), done.error


def unchanged_outputs_sentence(study: Study) -> str:
    """What a pass that left the outputs as they were says instead of ``cohort_outputs``."""
    from reports.written_from import written_at

    return (
        f"left the cohort report {study.reports_dir / 'cohort_report.pdf'} and the results in "
        f"{study.results_dir} as written at {written_at(study.root)}: nothing they are made "
        "from changed"
    )


def rewrite_cohort_outputs(
    study: Study,
    write_results: Callable | None = None,
    write_report: Callable | None = None,
    waiting: Callable[[str], None] | None = None,
) -> tuple[str, str]:
    """The results and the cohort report rewritten from the store, nothing processed, under
    the study's lock (a pass in progress is waited for, ``waiting`` told who holds it): what
    ``immunomon report`` and the served report deployment both do, whether or not anything
    changed. ``write_results`` and ``write_report`` default to ``reports.outputs``'s (the
    flow passes them as its tasks). Returns the sentence of what was written and left out
    (``cohort_outputs``) and the error, '' when nothing was left out."""
    if write_results is None or write_report is None:
        from reports import outputs

        write_results = write_results or outputs.write_results
        write_report = write_report or outputs.write_report
    with study_store(study, exclusive=True, waiting=waiting) as store:
        return write_cohort_outputs(
            study, store, write_results, write_report, only_if_changed=False
        )
