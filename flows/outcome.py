"""What a pass did, in the words the terminal, Prefect's state and the summary artifact share.

No Prefect here: ``immunomon report`` says the same without importing it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
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


# What the cohort step writes, relative to the study: a second pass leaves them as they are when
# nothing they are made from changed (``outputs_unchanged``).
COHORT_OUTPUTS = (
    "results/samples.csv",
    "results/populations.csv",
    "results/mfi.csv",
    "results/clinical_windows.csv",
    "results/km_curves.csv",
    "results/statistics.csv",
    "reports/cohort_report.pdf",
)
# Beside the outputs: the digests of what they were written from, and their own sha256.
WRITTEN_FROM = "results/written_from.json"
# The store's tables the outputs read. ``runs`` and the accounts are left out, and so are the
# files' size, mtime and last_seen (a touched or re-seen file) and the audit trail's 'pass'
# entries: no output prints them, so a pass that finds nothing new is no change.
STORE_CONTENT = {
    "files": "SELECT file_name, sha256, status, reason, sample_key, first_seen "
    "FROM files ORDER BY file_name, sha256",
    "samples": "SELECT * FROM samples ORDER BY sample_key",
    "populations": "SELECT * FROM populations ORDER BY sample_key, population",
    "qc_steps": "SELECT * FROM qc_steps ORDER BY sample_key, rowid",
    "gates": "SELECT * FROM gates ORDER BY sample_key, rowid",
    "not_measured": "SELECT * FROM not_measured ORDER BY sample_key, population",
    "medians": "SELECT * FROM medians ORDER BY sample_key, population, marker",
    "audit": "SELECT * FROM audit WHERE action <> 'pass' ORDER BY seq",
}
# The code the outputs are computed and drawn by: every file of these packages.
CODE_PACKAGES = ("cohort", "gating", "panels", "stats", "reports", "flows")


def _sha256_of_rows(rows) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(repr(tuple(row)).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _sha256_of_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def code_digest() -> str:
    """sha256 over the source of the packages the outputs are made by (uncommitted edits
    included), the software version the report prints and the libraries' versions."""
    from reports.outputs import library_versions, software_version

    digest = hashlib.sha256(f"{software_version()}|{library_versions()}".encode())
    root = Path(__file__).resolve().parents[1]
    for package in CODE_PACKAGES:
        for path in sorted((root / package).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(f"{path.relative_to(root)}|{_sha256_of_file(path)}\n".encode())
    return digest.hexdigest()


def output_inputs(study: Study, store: Store) -> dict[str, str]:
    """What the results and the cohort report are made from, each part as a sha256: the
    store's content (samples, their gates and QC, the review trail), every input file
    (study.yaml with its analysis plan, the clinical CSVs, panels, strategies, references:
    ``reports.outputs.input_hashes``) and the code."""
    from reports.outputs import input_hashes

    parts = {
        f"store {table}": _sha256_of_rows(store.conn.execute(query))
        for table, query in STORE_CONTENT.items()
    }
    parts.update(input_hashes(study))
    parts["code"] = code_digest()
    return parts


def _written_from(study: Study) -> dict:
    try:
        record = json.loads((study.root / WRITTEN_FROM).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def changed_inputs(study: Study, inputs: dict[str, str]) -> list[str]:
    """Why the outputs must be written again ([] when they need not): the inputs that
    changed since they were last written completely, or the outputs missing or altered
    since. No record (never written, or the last write left something out): everything."""
    record = _written_from(study)
    before, outputs = record.get("inputs"), record.get("outputs")
    if not isinstance(before, dict) or not isinstance(outputs, dict):
        return ["no record of a complete write"]
    changed = sorted(
        name for name in set(before) | set(inputs) if before.get(name) != inputs.get(name)
    )
    for name in COHORT_OUTPUTS:
        path = study.root / name
        if not path.is_file() or outputs.get(name) != _sha256_of_file(path):
            changed.append(f"{name} missing or altered")
    return changed


def forget_written_from(study: Study) -> None:
    """Drop the record before the outputs are rewritten: a write that stops half way leaves
    no record, so the next pass writes them again."""
    (study.root / WRITTEN_FROM).unlink(missing_ok=True)


def record_written_from(study: Study, inputs: dict[str, str]) -> None:
    """After a complete write: the inputs' digests and the outputs' own sha256."""
    record = {
        "written_at": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        "inputs": inputs,
        "outputs": {
            name: _sha256_of_file(study.root / name)
            for name in COHORT_OUTPUTS
            if (study.root / name).is_file()
        },
    }
    path = study.root / WRITTEN_FROM
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(record, indent=1, sort_keys=True))
    temporary.replace(path)  # whole or not at all


def unchanged_outputs_sentence(study: Study) -> str:
    """What a pass that left the outputs as they were says instead of ``cohort_outputs``."""
    when = _written_from(study).get("written_at", "before")
    return (
        f"left the cohort report {study.reports_dir / 'cohort_report.pdf'} and the results in "
        f"{study.results_dir} as written at {when}: nothing they are made from changed"
    )


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
    """The results and the cohort report written from the store; with ``only_if_changed``
    left as they are when nothing they are made from changed since their last complete
    write (``changed_inputs``; ``log`` is told what changed). A complete write records its
    inputs in results/written_from.json. Returns the sentence of what was written and left
    out (``cohort_outputs``) and the error, '' when nothing was left out."""
    inputs = output_inputs(study, store)
    changed = changed_inputs(study, inputs)
    if only_if_changed and not changed:
        return unchanged_outputs_sentence(study), ""
    if only_if_changed:
        log(f"writing the results and the report: changed since last written: {', '.join(changed)}")
    forget_written_from(study)
    results, error = write_results(study, store)
    after_results()
    if results is not None:
        write_report(study, store, results, *report_arguments)
    if results is not None and not error:
        record_written_from(study, inputs)
    return cohort_outputs(study, results, error), error


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
