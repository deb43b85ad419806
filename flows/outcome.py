"""What a pass did, in the words the terminal, Prefect's state and the summary artifact share.

No Prefect here: ``immunomon report`` says the same without importing it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from cohort.clinical import FEEDS
from panels.errors import ImmunomonError

if TYPE_CHECKING:
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
