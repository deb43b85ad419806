"""The cohort's outputs from the study store: results/*.csv, the statistics and the cohort
report, with the provenance and methods text the report prints.

Plain functions (no Prefect): the nightly flow and ``immunomon report`` call them."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path

import pandas as pd

from cohort.audit import AuditLog, anchor_head
from cohort.clinical import FEEDS, ClinicalData, load_clinical_parts, patient_windows
from cohort.exports import mfi_table, populations_table, samples_table, write_csv
from cohort.review import (
    REVIEW_ACTIONS,
    ReviewStatus,
    TrailVerdict,
    current_review_states,
    describe_override,
    status_frame,
    study_trail_verdict,
    undone,
)
from cohort.store import Store, stored_strategy
from cohort.study import REFERENCE_FOLDER, Study
from cohort.templates import template_methods_lines
from gating.pipeline import PIPELINE_VERSION, replay_gates
from gating.space import GatingSpace
from gating.strategy import Strategy
from reports.cohort_report import ReportContext, report_sections, write_cohort_report
from reports.monitor_pages import (
    MonitorTables,
    disposition_table,
    missing_samples,
    qc_summary,
    table_one,
    visit_deviations,
)
from reports.names import Names
from reports.qc_report import write_sample_qc_report
from reports.written_from import (
    changed_inputs,
    forget_written_from,
    record_written_from,
    sha256_of_file,
)
from stats.clinical import (
    COX_ANALYSES,
    clinical_statistics,
    kaplan_meier_curves,
    kaplan_meier_table,
)
from stats.immuno import wilcoxon_vs_baseline
from stats.tests import STATISTICS_COLUMNS


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
    """What the cohort report is drawn from (every table is also a results/*.csv).

    ``broken_inputs`` maps each unusable clinical file to its error; what it feeds is left
    out of ``statistics``, ``windows`` and the report, whose first page says so."""

    clinical: ClinicalData
    populations: pd.DataFrame
    statistics: pd.DataFrame
    groups: dict[str, str]
    windows: pd.DataFrame
    curves: dict  # Kaplan-Meier fitters by (group, window); empty when relapses are unusable
    review: pd.DataFrame  # review_status and overridden_gates per current sample
    excluded: dict[str, str]  # sample_id -> the reason given, for samples excluded in review
    broken_inputs: dict[str, str] = field(default_factory=dict)
    trail_problem: str = ""  # the audit trail does not verify: no approval is in force


# The clinical analyses (statistics.csv ``analysis``) and window columns each file feeds.
ANALYSES_FED_BY = {
    "relapses.csv": {"relapses_before_after", *COX_ANALYSES, "kaplan_meier_median"},
    "medications.csv": {
        "drugs_baseline_12m",
        "prednisone_before_after",
        "drug_use_fisher",
        "drug_use_mcnemar",
    },
}
WINDOW_COLUMNS_FED_BY = {
    "relapses.csv": ("relapse", "time_to_relapse"),
    "medications.csv": ("drugs", "n_drugs", "prednisone"),
}


def review_table(states: dict[str, ReviewStatus], store: Store) -> pd.DataFrame:
    """review_status and overridden_gates of every current sample."""
    files = store.files_frame()
    current = files[files.status == "processed"].dropna(subset=["sample_id"])
    return status_frame(states, sorted(set(current.sample_id)))


def review_lines(study: Study, store: Store, review: pd.DataFrame) -> list[str]:
    """The report's review appendix: every override and exclusion in force with who, when and
    why, and the sign-off counts per visit and panel."""
    log = AuditLog(store.conn)
    entries = log.entries()
    reversed_ = undone(entries)
    status = dict(zip(review.sample_id, review.review_status, strict=True))
    lines = ["Overrides and exclusions in force (audit entry, UTC time, who, what, why):"]
    shown = 0
    for e in entries:
        if e.seq in reversed_ or e.action not in ("override", "exclude"):
            continue
        if e.action == "exclude" and status.get(e.sample_id) != "excluded":
            continue  # approved again later
        if e.action == "override":
            what = describe_override(e.detail)
        else:
            what = "excluded from the statistics"
        lines.append(f"  #{e.seq} {e.at[:19]} {e.who}: {e.sample_id} {what}; why: {e.reason}")
        shown += 1
    if not shown:
        lines.append("  none")
    lines += [
        "",
        "Sign-off per visit and panel (samples):",
        f"  {'visit':5} {'panel':6} {'approved':>9} {'excluded':>9} {'overridden':>11} "
        f"{'to review':>10}",
    ]
    review = review.assign(
        visit=review.sample_id.str.rsplit("_", n=2).str[1],
        panel=review.sample_id.str.rsplit("_", n=1).str[1],
    )
    for visit in study.config.visits:
        for panel in study.panels:
            block = review[(review.visit == visit) & (review.panel == panel)]
            counts = block.review_status.value_counts()
            lines.append(
                f"  {visit:5} {panel:6} {counts.get('approved', 0):9d} "
                f"{counts.get('excluded', 0):9d} {counts.get('overridden', 0):11d} "
                f"{counts.get('to_review', 0):10d}"
            )
    # The trail up to the last review action: processing passes (entries too) do not change
    # the report, so a pass that finds nothing new leaves it identical.
    review_entries = [e for e in entries if e.action in REVIEW_ACTIONS]
    if review_entries:
        last = review_entries[-1]
        lines += [
            "",
            f"Audit trail: {len(review_entries)} review entries; the last of them "
            f"(#{last.seq}, {last.at[:19]} UTC) anchors it; check the trail against this report:",
            f"immunomon audit verify --study STUDY --anchor {last.seq}:{last.hash}",
        ]
    else:
        lines += ["", "Audit trail: no review entries yet."]
    return lines


def update_outputs(
    study: Study, store: Store, executor: Executor | None = None, parts: int = 1
) -> str:
    """Write results/*.csv, statistics and the cohort report from the store (``write_outputs``,
    whether or not anything changed); with a process ``executor`` the report's pages are drawn
    in ``parts`` runs on it.

    Returns the clinical error(s) that stopped all or part of the cohort step, else ''."""
    return write_outputs(study, store, report_arguments=(executor, parts)).error


def write_results(
    study: Study, store: Store, trail: TrailVerdict | None = None
) -> tuple[CohortResults | None, str]:
    """results/samples.csv, populations.csv, mfi.csv, and, while patients.csv is usable,
    clinical_windows.csv and statistics.csv. ``trail``: the audit trail's verification made
    for this write (``cohort.review.study_trail_verdict``; made here when not given); the
    results carry its problem to the report.

    A broken clinical file blanks only what it feeds (``cohort.clinical.FEEDS``); the tables
    are returned with the errors, or None (nothing grouped: statistics.csv and the report are
    left as the last pass wrote them) when patients.csv itself is broken."""
    study.ensure_output_folders()
    trail = study_trail_verdict(study.root, store.conn, trail)
    states = current_review_states(study, store, trail)
    review = review_table(states, store)
    samples = samples_table(store, study).merge(review, on="sample_id", how="left")
    not_sample = samples.status != "processed"
    samples.loc[not_sample, ["review_status", "overridden_gates"]] = ""
    write_csv(samples, study.results_dir / "samples.csv")
    visits = list(study.config.visits)
    plan = study.config.analysis
    patient_groups = list(dict.fromkeys(g for spec in plan.groups for g in spec.patients))
    loaded = load_clinical_parts(study.clinical_dir, visits, patient_groups)
    error = "; ".join(loaded.broken.values())
    clinical = loaded.data
    populations = populations_table(store, study, clinical, loaded.lymphocyte_counts)
    populations = populations.merge(review, on="sample_id", how="left")
    write_csv(populations, study.results_dir / "populations.csv")
    write_csv(mfi_table(store), study.results_dir / "mfi.csv")
    if clinical is None:
        return None, error
    # Measured rows of samples not excluded in review.
    populations = populations[
        (populations.missing_markers == "") & (populations.review_status != "excluded")
    ]
    groups = clinical.group_of()
    windows = patient_windows(clinical)
    left_out = frozenset().union(*(ANALYSES_FED_BY.get(name, ()) for name in loaded.broken))
    parts = [
        wilcoxon_vs_baseline(populations, groups, study.config.baseline, visits, plan),
        clinical_statistics(windows, plan, left_out),
    ]
    statistics = pd.concat([part for part in parts if not part.empty] or parts, ignore_index=True)[
        STATISTICS_COLUMNS
    ]
    if "visits.csv" in loaded.broken:
        statistics = statistics[statistics.measure != "cells_per_ul"].reset_index(drop=True)
    for name, prefixes in WINDOW_COLUMNS_FED_BY.items():
        if name in loaded.broken:  # a broken file's columns blank, not zero
            windows[[c for c in windows.columns if c.startswith(prefixes)]] = None
    write_csv(windows, study.results_dir / "clinical_windows.csv")
    curves = {} if "relapses.csv" in loaded.broken else kaplan_meier_curves(windows, plan)
    write_csv(kaplan_meier_table(curves), study.results_dir / "km_curves.csv")
    write_csv(statistics, study.results_dir / "statistics.csv")
    excluded = {s: state.reason for s, state in states.items() if state.status == "excluded"}
    results = CohortResults(
        clinical,
        populations,
        statistics,
        groups,
        windows,
        curves,
        review,
        excluded,
        loaded.broken,
        trail.problem,
    )
    return results, error


def cohort_report_sections(
    study: Study, store: Store, results: CohortResults
) -> tuple[ReportContext, list]:
    """The cohort report's context and its sections in page order, as written."""
    context = report_context(study, store, results)
    sections = report_sections(
        context,
        samples_table(store, study),
        results.populations,
        results.statistics,
        results.groups,
        results.windows,
        results.curves,
        monitor_tables(study, store, results),
    )
    return context, sections


def write_report(
    study: Study,
    store: Store,
    results: CohortResults,
    executor: Executor | None = None,
    parts: int = 1,
) -> Path:
    """The cohort report PDF; with a process ``executor`` its pages are drawn in ``parts``
    runs on it."""
    context, sections = cohort_report_sections(study, store, results)
    return write_cohort_report(
        study.reports_dir / "cohort_report.pdf",
        context,
        sections,
        executor=executor,
        parts=parts,
    )


@dataclass(frozen=True)
class OutputsWrite:
    """What ``write_outputs`` did: ``written`` False when it left the outputs as they were;
    the results it wrote (None: patients.csv is broken, statistics and report kept as the
    last write left them) and the clinical error(s), '' when nothing was left out."""

    written: bool
    results: CohortResults | None = None
    error: str = ""


def write_outputs(
    study: Study,
    store: Store,
    results_writer: Callable | None = None,
    report_writer: Callable | None = None,
    *,
    only_if_changed: bool = False,
    after_results: Callable[[], None] = lambda: None,
    report_arguments: tuple = (),
    log: Callable[[str], None] = lambda line: None,
) -> OutputsWrite:
    """The results and the cohort report written from the store: the one write every writer
    (a pass, ``immunomon report``, the review's publish) makes. With ``only_if_changed`` they
    are left as they are when nothing they are made from changed since their last complete
    write (``changed_inputs``; ``log`` is told what changed). The audit trail is verified
    once for the write and its verdict passed on: ``results_writer`` (default
    ``write_results``; the flow passes its task) is called as (study, store, verdict),
    ``report_writer`` (default ``write_report``) as (study, store, results,
    *report_arguments). A complete write records its inputs in results/written_from.json;
    a written report anchors the trail's last entry outside the database, unless the trail
    does not verify (anchoring a forged last entry would vouch for it)."""
    results_writer = results_writer or write_results
    report_writer = report_writer or write_report
    trail = study_trail_verdict(study.root, store.conn)
    inputs = output_inputs(study, store, trail)
    changed = changed_inputs(study.root, inputs)
    if only_if_changed and not changed:
        return OutputsWrite(written=False)
    if only_if_changed:
        log(f"writing the results and the report: changed since last written: {', '.join(changed)}")
    forget_written_from(study.root)
    results, error = results_writer(study, store, trail)
    after_results()
    if results is not None:
        report_writer(study, store, results, *report_arguments)
        if not study_trail_verdict(study.root, store.conn, trail).problem:
            anchor_head(study.root, store.conn, "cohort report written")
    if results is not None and not error:
        record_written_from(study.root, inputs)  # a pass after this leaves them as they are
    return OutputsWrite(True, results, error)


def monitor_tables(study: Study, store: Store, results: CohortResults) -> MonitorTables:
    """Disposition, Table 1, missing samples, visit deviations, QC summary and the gate
    definitions, for the report's monitor pages."""
    cfg = study.config
    clinical = results.clinical
    cut = pd.Timestamp(report_context_cut(clinical))
    disposition = disposition_table(clinical.patients, cut)
    samples = samples_table(store, study)
    visit_months = {v: float(m) for v, m in cfg.visits.items()}
    definitions = []
    for token, panel in study.panels.items():
        strategy = study.strategies[token]
        definitions.append(
            f"Panel {token} ({panel.title}); markers, as the tube may label them: "
            + "; ".join(f"{m} ({'/'.join(names)})" for m, names in panel.markers.items())
        )
        if isinstance(strategy, Strategy):
            definitions += strategy.definitions()
        else:
            definitions.append(f"  gates from the FlowJo workspace {strategy.source}")
        definitions.append("")
    return MonitorTables(
        disposition=disposition,
        table_one=table_one(disposition, {g.name: g.patients for g in cfg.analysis.groups}),
        missing=missing_samples(
            samples,
            clinical.patients,
            visit_months,
            list(cfg.panels),
            results.excluded,
        ),
        deviations=visit_deviations(
            clinical.visits,
            clinical.patients,
            visit_months,
            cfg.baseline,
            cfg.analysis.visit_window_days,
            cfg.analysis.baseline_window_days,
        ),
        qc=qc_summary(
            samples, store.current_qc_steps(), store.current_gates(), study_names(study, store)
        ),
        definitions=definitions,
        visit_window_days=cfg.analysis.visit_window_days,
        baseline_window_days=cfg.analysis.baseline_window_days,
    )


def report_context_cut(clinical: ClinicalData) -> str:
    """The clinical data cut: the latest date in the clinical files."""
    dates = [
        clinical.visits.visit_date.max(),
        clinical.relapses.relapse_date.max(),
        clinical.patients.last_follow_up_date.max(),
    ]
    return str(max(d for d in dates if pd.notna(d)).date())


def report_context(study: Study, store: Store, results: CohortResults) -> ReportContext:
    """What the report says about its own provenance and inputs."""
    review = results.review
    clinical, populations = results.clinical, results.populations
    files = store.files_frame()
    stamps = pd.concat([files.first_seen.dropna(), files.processed_at.dropna()])
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
        clinical_cut=report_context_cut(clinical),
        unknown_patients=unknown,
        methods=methods_text(study),
        broken_inputs=results.broken_inputs,
        preliminary=int(review.review_status.isin(["to_review", "overridden"]).sum()),
        trail_problem=results.trail_problem,  # as the results' review states were judged
        review_lines=review_lines(study, store, review),
        groups=cfg.analysis.group_titles,
        group_patients={g.name: g.patients for g in cfg.analysis.groups},
        figure_4_group=cfg.analysis.figure_4.group,
        figure_4=[
            (part.title, part.panel, part.populations, part.measure)
            for part in cfg.analysis.figure_4.parts
        ],
        left_out=[
            f"{name} is broken, so this report leaves out {FEEDS[name]}"
            for name in results.broken_inputs
        ],
        names=study_names(study, store),
    )


def study_names(study: Study, store: Store | None = None) -> Names:
    """The study's display names: populations from each strategy as run (title, parent,
    thresholds' markers), drugs from the analysis plan. With the ``store``, a current sample
    gated with another strategy than its panel's current one is named from that one (the
    strategy stored with its result; for a result stored before strategies were kept, its
    thresholds' markers from its recorded gates)."""
    strategies = {t: s for t, s in study.strategies.items() if isinstance(s, Strategy)}
    names = Names.of_strategies(strategies, drugs=study.config.analysis.drugs)
    if store is None:
        return names
    return replace(names, gated_with=names_as_gated(names, strategies, store))


def names_as_gated(
    current: Names, strategies: dict[str, Strategy], store: Store
) -> dict[str, Names]:
    """Sample id -> the names of the strategy it was gated with, for each current sample
    gated with another strategy than its panel's current one."""
    rows = store.current_strategies(other_than=[s.sha256 for s in strategies.values()])
    rows = rows[rows.panel.isin(list(strategies))]  # a FlowJo workspace's: no strategy names
    by_document: dict[tuple[str, str], Names] = {}
    thresholds: dict[str, dict[tuple[str, str], str]] = {}
    if (rows.document == "").any():
        gates = store.current_gates()
        for g in gates[gates.kind == "threshold"].itertuples():
            marker = json.loads(g.dimensions)[0]
            thresholds.setdefault(g.sample_id, {})[(g.panel, g.gate)] = marker
    found: dict[str, Names] = {}
    for r in rows.itertuples():
        if r.document:
            key = (r.panel, r.document)
            if key not in by_document:
                then = stored_strategy(r.document, r.strategy_sha256)
                by_document[key] = Names.of_strategies({r.panel: then}, drugs=current.drugs)
            found[r.sample_id] = by_document[key]
            continue
        # Stored before strategies were kept: what its thresholds were placed on is in its
        # gates; its titles are the current ones.
        markers = {**current.markers, **thresholds.get(r.sample_id, {})}
        found[r.sample_id] = replace(current, markers=markers)
    return found


LIBRARIES = ("numpy", "scipy", "pandas", "lifelines", "matplotlib", "flowkit", "prefect")


def library_versions() -> dict[str, str]:
    """The installed versions of the libraries the numbers depend on."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def input_hashes(study: Study) -> dict[str, str]:
    """sha256 of every input the outputs depend on but the FCS files (those are in
    samples.csv): study.yaml, the clinical CSVs, panel and strategy files, study references."""
    paths = [study.root / "study.yaml", *sorted(study.clinical_dir.glob("*.csv"))]
    for token, panel in study.panels.items():
        strategy = study.strategies[token]
        paths += [Path(panel.source), Path(strategy.source)]
    paths += sorted((study.root / REFERENCE_FOLDER).glob("*.yaml"))
    hashes = {}
    for path in paths:
        if path.is_file():
            label = (
                str(path.relative_to(study.root)) if path.is_relative_to(study.root) else str(path)
            )
            hashes[label] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


# The code the outputs are computed and drawn by: every file of these packages.
CODE_PACKAGES = ("cohort", "gating", "panels", "stats", "reports", "flows")
CODE_ROOT = Path(__file__).resolve().parents[1]


def code_digest(root: Path = CODE_ROOT) -> str:
    """sha256 over the packages the outputs are made by (uncommitted edits included), the
    software version the report prints and the libraries' versions."""
    digest = hashlib.sha256(f"{software_version()}|{library_versions()}".encode())
    for package in CODE_PACKAGES:
        for path in sorted((root / package).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(f"{path.relative_to(root)}|{sha256_of_file(path)}\n".encode())
    return digest.hexdigest()


def output_inputs(study: Study, store: Store, trail: TrailVerdict | None = None) -> dict[str, str]:
    """Everything the results and the cohort report are made from, each part as a sha256:
    the store's content (samples, their gates and QC, the review trail), every input file
    (study.yaml with its analysis plan, the clinical CSVs, panels, strategies, references)
    and the code (``code_digest``), and whether the audit trail verifies (a trail edited by hand,
    even in a pass's entry, voids every approval the report counts). ``trail``: the trail's
    verification made for this write (made here when not given)."""
    check = study_trail_verdict(study.root, store.conn, trail).problem
    return {
        **store.content_digests(),
        **input_hashes(study),
        "code": code_digest(),
        "audit trail check": hashlib.sha256(check.encode()).hexdigest(),
    }


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
        "  - gates placed per sample within the bounds of the panel's strategy. A threshold takes",
        "    the first method that finds a boundary: a 2-D Gaussian mixture on the marker pair",
        "    that defines the population, a deep density valley, a 1-D mixture, a shallow",
        "    valley; registered thresholds are placed once on the study's pooled, landmark-",
        "    aligned samples (references/). Lymphocytes by a Gaussian mixture on FSC-A/SSC-A.",
        "    A threshold left at the strategy's default sets needs_review on the sample.",
        *(f"  - {line}" for line in template_methods_lines(study)),
        "",
        "Measures: % of parent; % of lymphocytes; cells/µL = % of lymphocytes x the visit's",
        f"lymphocyte count from clinical/visits.csv ({cfg.absolute_counts}).",
        "",
        f"Statistics (analysis plan of study.yaml): each visit against baseline ({cfg.baseline}),",
        "paired, on the patients with both samples. Samples of patients missing from",
        "patients.csv are excluded from statistics.",
        *(f"  - {line}" for line in cfg.analysis.describe()),
        "",
        "Clinical windows: the 365 days before the first infusion and the 365 days after,",
        "the latter censored at last_follow_up_date (a shortened window is named in the",
        "method of each row). Relapse counts and cumulative prednisone (summed day by day",
        "from the dose intervals) are compared per 365 days of observation, so missing",
        "months are never counted as relapse-free or steroid-free. Drugs are counted on the",
        "infusion day and at +365 days (patients not followed that long are left out).",
        "The before-window is [infusion - 365 d, infusion), the after-window [infusion,",
        "infusion + 365 d), or [infusion, last follow-up date] when follow-up ends earlier",
        "(the last follow-up day was observed and is inside it); a relapse on the infusion",
        "day counts after.",
        "Relapse-free survival: time from each window's start to its first relapse, censored",
        "at the window's end (only the first relapse of a window enters the survival analyses;",
        "every relapse enters the rate comparisons: the paired Wilcoxon of rates and the",
        "patient-stratified (conditional) Poisson rate ratio with each window's days as",
        "exposure, exact CI and p; no time-to-each-relapse model such as Andersen-Gill or PWP",
        "is fitted). Kaplan-Meier per window (results/km_curves.csv;",
        "pointwise 95% limits exponential Greenwood, log(-log); numbers at risk under the",
        "curves); median with its Brookmeyer-Crowley 95% CI. Cox proportional hazards",
        "(lifelines, Efron ties) with the window as covariate, unmatched (Wald and likelihood-",
        "ratio p; the two windows of a patient are taken as independent, so its p ignores the",
        "pairing) and stratified by patient, the conditional model of each patient's pair",
        "(Wald, likelihood-ratio, and the exact conditional p: a binomial test on the pairs",
        "whose first relapse is in one window while the other is still at risk), each with",
        "Firth's penalised estimate. Drug use per drug, two-sided: Fisher's exact test (as the",
        "trial's report; treats the two dates as independent) and the exact McNemar test",
        "(paired) with the paired odds ratio b/c and its exact interval. Clinical p-values",
        "are not adjusted for multiplicity.",
        "",
        "Software: "
        + ", ".join(f"{name} {version}" for name, version in library_versions().items()),
        "",
        "Inputs (sha256):",
    ]
    lines += [f"  {digest}  {name}" for name, digest in input_hashes(study).items()]
    return lines


def strategy_gated_with(study: Study, store: Store, sample: dict):
    """The strategy a stored result (``sample``: a ``Store.current_sample`` row) was gated
    with: its panel's current one when their sha256 agree, else the one stored with it (an
    older version, or with a study template or overrides), so its gates are replayed with
    their own placement. A result stored before strategies were kept: the current one."""
    current = study.strategies[sample["panel"]]
    if sample["strategy_sha256"] == current.sha256:
        return current
    document = store.strategy_document(sample["strategy_sha256"])
    return stored_strategy(document, sample["strategy_sha256"]) if document else current


def replay_current(study: Study, store: Store, sample_id: str):
    """A sample's current result replayed on its events: (sample row, gates, masks, gating
    space, events). Nothing is placed anew."""
    from panels.fcs import read_events
    from panels.resolve import resolve_panel

    sample = store.current_sample(sample_id)
    if sample is None:
        raise LookupError(f"no processed sample {sample_id!r} in {study.db_path}")
    gates = store.applied_gates(sample["sample_key"])
    strategy = strategy_gated_with(study, store, sample)
    if not gates:
        raise LookupError(
            f"{sample_id} was gated with the FlowJo workspace {strategy.source}: no gates"
        )
    if isinstance(strategy, Strategy):  # each gate drawn over the events it was placed on
        gates = strategy.with_placement(gates)
    data = read_events(study.inbox / sample["file_name"])
    resolved = resolve_panel(study.panels[sample["panel"]], data.header)
    space = GatingSpace.of_sample(data, resolved)
    masks = replay_gates(data, resolved, gates, space)
    return sample, gates, masks, space, data


def write_qc_report_from_store(study: Study, store: Store, sample_id: str) -> Path:
    """Regenerate one sample's QC PDF from its recorded gates (no gate is placed anew)."""
    sample, gates, masks, space, data = replay_current(study, store, sample_id)
    key = sample["sample_key"]
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
