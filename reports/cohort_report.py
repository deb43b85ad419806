"""The cohort report: one PDF a reviewer can read without rerunning anything.

Everything on its pages comes from the tables the run wrote (samples, populations,
statistics), so every number can be traced to a row of a CSV beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from functools import cache, partial
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_pdf import PdfPages

from gating.records import NEEDS_REVIEW, REVIEW_FLAGS
from reports.context import ReportContext
from reports.figure_checks import is_table_header, is_table_row
from reports.figures import (
    A4_LANDSCAPE,
    A4_PORTRAIT,
    OKABE_ITO,
    boxplot_by_visit,
    completeness_matrix,
    drug_bars,
    paired_dots,
    plt,
)
from reports.monitor_pages import MonitorTables
from reports.names import FLAG_SHORT, Names, flag_short, flag_words
from reports.numbers import format_estimate, format_interval, format_p, format_p_phrase
from reports.paper_figures import figure_2a, figure_2b, figure_3, figure_4, statistic_row
from stats.plan import ANALYSIS_TITLES, TEST_TITLES


def _text_pages(
    pdf: PdfPages,
    title: str,
    lines: list[str],
    *,
    size: float = 7.0,
    landscape: bool = False,
    hang: int = 4,
) -> None:
    """Monospaced text over as many pages as needed, title repeated; lines wrapped and pages
    filled to what the page holds at this size, so no text runs off it."""
    height_in = (A4_LANDSCAPE if landscape else A4_PORTRAIT)[1]
    per_page = int(height_in * 0.86 / _monospace_metrics(size)[1])
    pages = _paginate(_wrap(lines, _line_chars(size, landscape), hang), per_page)
    for k, chunk in enumerate(pages, start=1):
        fig = plt.figure(figsize=A4_LANDSCAPE if landscape else A4_PORTRAIT)
        suffix = f" ({k}/{len(pages)})" if len(pages) > 1 else ""
        fig.text(0.06, 0.96, title + suffix, fontsize=12, weight="bold", va="top")
        fig.text(0.06, 0.93, "\n".join(chunk), family="monospace", fontsize=size, va="top")
        pdf.savefig(fig)
        plt.close(fig)


def _line_chars(size: float, landscape: bool = False) -> int:
    """Characters of monospaced text at ``size`` that fit the text width of a page."""
    width_in = (A4_LANDSCAPE if landscape else A4_PORTRAIT)[0]
    return int(width_in * 0.88 / _monospace_metrics(size)[0])


def _paginate(lines: list[str], per_page: int) -> list[list[str]]:
    """Lines cut into pages of ``per_page``; a table running onto a new page has its column
    headers (and their rule) repeated at the top, so no page shows rows without them."""
    pages: list[list[str]] = [[]]
    header: list[str] = []
    for line in lines:
        if not line.strip():
            header = []
        elif is_table_header(line):
            header = [line]
        elif header and set(line.strip()) == {"-"}:
            header = [*header[:1], line]
        if len(pages[-1]) >= per_page:
            # A heading and column headers never end a page without a row under them.
            tail = []
            if is_table_header(pages[-1][-1]) and len(pages[-1]) > 2:
                tail = pages[-1][-2:] if pages[-1][-2].strip() else pages[-1][-1:]
                del pages[-1][-len(tail) :]
            carried = header[:] if header and is_table_row(line) and not tail else []
            pages.append(tail or carried)
        pages[-1].append(line)
    return pages


@cache
def _monospace_metrics(size: float) -> tuple[float, float]:
    """Width of a character and height of a line of monospaced text at ``size`` points, in
    inches, as matplotlib lays them out (measured: small sizes round up)."""
    fig = plt.figure(figsize=A4_PORTRAIT)
    sample = ("Xg|[(µ" * 9)[:50]  # tall and deep glyphs: lines are as high as their tallest
    probe = fig.text(0, 0.5, "\n".join([sample] * 20), family="monospace", fontsize=size)
    fig.canvas.draw()
    extent = probe.get_window_extent()
    plt.close(fig)
    return extent.width / 50 / fig.dpi, extent.height / 20 / fig.dpi


_fmt_p = format_p  # one rule for every p on every page (reports.numbers)


# A section draws one or more whole pages of the report.
Section = Callable[[PdfPages], None]


def write_cohort_report(
    path: str | Path,
    context: ReportContext,
    sections: list[tuple[float, Section]],
    *,
    executor: Executor | None = None,
    parts: int = 1,
) -> Path:
    """Write the cohort report PDF from its ``sections`` (``report_sections``); returns its
    path.

    With an ``executor`` (processes), the pages are drawn in ``parts`` runs of consecutive
    sections, one per process, and the parts are joined in order: the same pages, in about
    1/parts of the time.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    metadata = {"Title": f"{context.study}: cohort report", "Creator": context.software}
    if executor is None or parts <= 1:
        _write_sections(tmp, metadata, [draw for _, draw in sections])
    else:
        _write_sections_in_parts(tmp, metadata, sections, executor, parts)
    tmp.replace(path)
    return path


def report_sections(
    context: ReportContext,
    samples: pd.DataFrame,
    populations: pd.DataFrame,
    statistics: pd.DataFrame,
    groups: dict[str, str],
    windows: pd.DataFrame | None,
    curves: dict | None,
    monitor: MonitorTables | None = None,
) -> list[tuple[float, Section]]:
    """The report in page order, each section with its drawing cost in seconds as measured on
    the demo cohort (used only to share the work between processes). ``windows`` (per-patient
    clinical windows) and ``curves`` (Kaplan-Meier fitters by group and window) add the
    clinical outcome pages."""
    sections: list[tuple[float, Section]] = [
        (0.02, partial(_title_page, ctx=context, samples=samples, monitor=monitor)),
    ]
    if monitor is not None:
        sections.append((0.02, partial(_disposition_pages, monitor=monitor)))
    sections.append((0.3, partial(_completeness_page, ctx=context, samples=samples)))
    if monitor is not None:
        sections.append((0.03, partial(_monitor_pages, monitor=monitor)))
    clinical = windows is not None and curves is not None
    if clinical:
        if not context.broken_inputs:  # the figures need every clinical file
            sections += [
                (
                    0.4,
                    partial(
                        figure_2a,
                        ctx=context,
                        curves=curves,
                        statistics=statistics,
                        windows=windows,
                    ),
                ),
                (
                    0.5,
                    partial(_clinical_figures, ctx=context, windows=windows, statistics=statistics),
                ),
            ]
        sections.append((0.02, partial(_clinical_table, statistics=statistics, ctx=context)))
    wilcox = statistics[statistics.analysis == "wilcoxon_vs_baseline"]
    data = populations[populations.patient_id.isin(groups)].copy()
    data["group"] = data.patient_id.map(groups)
    for (panel, population), block in data.groupby(["panel", "population"], sort=False):
        tests = wilcox[(wilcox.panel == panel) & (wilcox.population == population)]
        sections.append((0.35, partial(_population_page, ctx=context, block=block, tests=tests)))
    sections.append((0.9, partial(_wilcoxon_tables, ctx=context, data=data, wilcox=wilcox)))
    if clinical and not context.broken_inputs:
        sections += [
            (0.3, partial(figure_2b, ctx=context, windows=windows, statistics=statistics)),
            (0.5, partial(figure_3, ctx=context, windows=windows, statistics=statistics)),
        ]
    members = context.members(data, context.figure_4_group) if context.figure_4_group else None
    for k, (title, panel, populations_4, measure) in enumerate(context.figure_4):
        if members is None or members.empty:
            break
        part = members.copy()
        part.attrs["group"] = context.figure_4_group
        sections.append(
            (
                0.3,
                partial(
                    figure_4,
                    label=f"4{'ABCDEFGH'[k]}",
                    title=title,
                    group_title=context.groups[context.figure_4_group],
                    members=part,
                    specs=[(panel, population) for population in populations_4],
                    measure=measure,
                    visits=context.visits,
                    statistics=statistics,
                    names=context.names,
                ),
            )
        )
    if monitor is not None:
        sections.append(
            (
                0.02,
                partial(
                    _text_pages,
                    title="Populations: gate definitions, from the strategy files as run",
                    lines=[
                        "Populations as this report names them, with what each is a share of "
                        "([panel, code] in results/*.csv):",
                        *context.names.glossary(context.panels),
                        "",
                        *monitor.definitions,
                    ],
                    size=6.5,
                ),
            )
        )
    sections += [
        (
            0.02,
            partial(
                _text_pages,
                title="Methods",
                lines=context.methods or ["(no methods recorded)"],
                size=8,
            ),
        ),
        (0.04, partial(_appendix, samples=samples, visits=context.visits)),
        (
            0.02,
            partial(
                _text_pages,
                title="Review and sign-off",
                lines=context.review_lines or ["(no review recorded)"],
                size=7,
            ),
        ),
    ]
    return sections


def _disposition_pages(pdf: PdfPages, monitor: MonitorTables) -> None:
    d = monitor.disposition
    lines = ["Table 1. Baseline characteristics", "", *monitor.table_one, "", "Disposition", ""]
    lines.append(
        f"{'patient':8} {'group':6} {'sex':4} {'age (y)':>8} {'first infusion':>15} "
        f"{'follow-up (d)':>14}  status"
    )
    for r in d.itertuples():
        lines.append(
            f"{r.patient_id:8} {r.group:6} {r.sex:4} {r.age_years:8.1f} "
            f"{r.first_infusion_date:>15} {r.follow_up_days:14d}  {r.status}"
        )
    _text_pages(pdf, "Patients: disposition and baseline characteristics", lines, size=7.5)


def _monitor_pages(pdf: PdfPages, monitor: MonitorTables) -> None:
    missing = monitor.missing
    lines = [
        f"{len(missing)} scheduled sample(s) without a result. Each is left out of the pairs "
        "it belongs to.",
        "",
        f"{'patient':8} {'visit':6} {'panel':6} {'file':24} why",
    ]
    lines += [
        f"{r.patient_id:8} {r.visit:6} {r.panel:6} {r.file:24} {r.why}"
        for r in missing.itertuples()
    ]
    missing_lines = lines
    dev = monitor.deviations
    errors = dev.verdict.str.startswith("ERROR").sum()
    lines = [
        f"{len(dev)} visit(s) outside their window, {errors} of them error(s). Scheduled day: "
        "first infusion + months x 30.44 days (clinical/visits.csv visit_date). "
        + monitor.windows_text()
        + " The samples are kept in the analysis as dated; an error means the sample is not "
        "what its visit label says (a 'baseline' drawn after the infusion).",
        "",
    ]
    if len(dev):
        lines.append(
            f"{'patient':8} {'visit':6} {'scheduled':>11} {'visit date':>11} {'days off':>9}  "
            "verdict"
        )
        lines += [
            f"{r.patient_id:8} {r.visit:6} {r.scheduled:>11} {r.visit_date:>11} "
            f"{r.days_from_schedule:9d}  {r.verdict}"
            for r in dev.itertuples()
        ]
    else:
        lines.append("Every dated visit of every patient is within its window.")
    # One page for both when they fit (a page of 'none' says nothing); long reasons wrap under
    # the 'why' column.
    missing_lines = _wrap(missing_lines, _line_chars(7), hang=8 + 1 + 6 + 1 + 6 + 1 + 25)
    _text_pages(
        pdf,
        "Missing samples and why. Visit-window deviations",
        [*missing_lines, "", "Visit-window deviations", "", *lines],
        size=7,
    )
    _text_pages(pdf, "Quality control: cohort summary", monitor.qc, size=7.5)


def _write_sections(path: Path, metadata: dict[str, str], sections: list[Section]) -> None:
    # No creation date: the same results give the same pages.
    with PdfPages(path, metadata={**metadata, "CreationDate": None}) as pdf:
        for draw in sections:
            draw(pdf)


def _write_sections_in_parts(
    path: Path,
    metadata: dict[str, str],
    sections: list[tuple[float, Section]],
    executor: Executor,
    parts: int,
) -> None:
    from pypdf import PdfWriter

    runs = split_into_runs([cost for cost, _ in sections], parts)
    part_paths = [path.with_name(f"{path.name}.part{k}") for k in range(len(runs))]
    try:
        futures = [
            executor.submit(_write_sections, part, metadata, [sections[i][1] for i in run])
            for part, run in zip(part_paths, runs, strict=True)
        ]
        for future in futures:
            future.result()
        joined = PdfWriter()
        for part in part_paths:
            joined.append(part)
        joined.add_metadata({f"/{key}": value for key, value in metadata.items()})
        joined.write(path)
    finally:
        for part in part_paths:
            part.unlink(missing_ok=True)


def split_into_runs(costs: list[float], parts: int) -> list[range]:
    """Cut a sequence into at most ``parts`` consecutive, non-empty runs of near-equal total
    cost (each cut at the boundary nearest its share of the total)."""
    if not costs:
        return []
    cumulative = np.cumsum(costs)
    total = cumulative[-1]
    cuts = [0]
    for k in range(1, parts):
        cut = int(np.argmin(np.abs(cumulative - total * k / parts))) + 1
        if cuts[-1] < cut < len(costs):
            cuts.append(cut)
    cuts.append(len(costs))
    return [range(start, stop) for start, stop in zip(cuts, cuts[1:], strict=False)]


def _title_page(
    pdf: PdfPages, ctx: ReportContext, samples: pd.DataFrame, monitor: MonitorTables | None
) -> None:
    counts = samples.status.value_counts()
    lines = [
        f"Study: {ctx.study}",
        f"Results as of: {ctx.data_as_of}   (latest change in the study store)",
        f"Clinical data cut: {ctx.clinical_cut}",
        f"Software: {ctx.software}",
        "Gating strategies (sha256): "
        + ", ".join(f"{k} {v[:12]}" for k, v in sorted(ctx.strategy_hashes.items())),
        "",
        f"Files processed: {counts.get('processed', 0)}   "
        f"quarantined: {counts.get('quarantined', 0)}   failed: {counts.get('failed', 0)}   "
        f"replaced by a new acquisition: {counts.get('superseded', 0)}",
        f"Visits: {', '.join(ctx.visits)} (baseline {ctx.baseline})",
        "Panels: " + ", ".join(f"{k} = {v}" for k, v in ctx.panels.items()),
    ]
    if ctx.preliminary:
        lines += [
            "",
            f"PRELIMINARY: {ctx.preliminary} processed sample(s) not yet approved in review "
            "(see Review and sign-off)",
        ]
    if ctx.trail_problem:
        lines += [""] + _wrap(
            [
                f"AUDIT TRAIL BROKEN: {ctx.trail_problem}. No approval is in force: every "
                "sample counts as not approved until `immunomon audit verify` passes."
            ],
            100,
        )
    if ctx.broken_inputs:
        lines += ["", "WARNING: clinical input could not be used. Fix it; the next pass redraws:"]
        for error in ctx.broken_inputs.values():
            lines += _wrap([f"  {error}"], 100)
        lines += _wrap([f"  {line}" for line in ctx.left_out], 100)
    if monitor is not None:
        errors = monitor.deviations[monitor.deviations.verdict.str.startswith("ERROR")]
        if len(errors):
            listed = ", ".join(f"{r.patient_id} {r.visit}" for r in errors.itertuples())
            lines += [""] + _wrap(
                [
                    f"ERROR: {len(errors)} visit(s) dated against the protocol: {listed} "
                    "(see Visit-window deviations)"
                ],
                100,
            )
        lines.append(
            f"Scheduled samples without a result: {len(monitor.missing)} "
            "(see Missing samples and why)"
        )
    if ctx.unknown_patients:
        lines += [
            "",
            "WARNING: samples of patients not in clinical/patients.csv were processed but left",
            "out of all statistics: " + ", ".join(sorted(ctx.unknown_patients)),
        ]
    fig = plt.figure(figsize=A4_PORTRAIT)
    fig.text(
        0.08,
        0.9,
        f"{ctx.study}\nCohort immunomonitoring report",
        fontsize=18,
        weight="bold",
        va="top",
    )
    fig.text(0.08, 0.78, "\n".join(lines), fontsize=9, va="top", linespacing=1.6)
    fig.text(
        0.08,
        0.05,
        "Patient identifiers are study pseudonyms. Every number in this "
        "report is a row of results/*.csv.",
        fontsize=7,
        color="0.3",
    )
    pdf.savefig(fig)
    plt.close(fig)


def _sample_states(samples: pd.DataFrame) -> pd.DataFrame:
    """Each sample's state for the completeness page (``reports.figures.SAMPLE_STATES``)."""
    # A replaced acquisition is history (the appendix lists it), not the sample's state.
    frame = samples[samples.status != "superseded"].dropna(subset=["patient_id"]).copy()
    flags = frame.qc_flags.fillna("").str.split(";")
    processed = frame.status == "processed"
    frame["state"] = np.select(
        [
            processed & flags.map(lambda f: NEEDS_REVIEW in f),
            processed & flags.map(lambda f: any(x.startswith("not_measured:") for x in f)),
            processed & flags.map(lambda f: any(x.startswith("low_count:") for x in f)),
        ],
        ["needs_review", "partial", "qc_flagged"],
        frame.status,
    )
    return frame


def qc_summary_lines(samples: pd.DataFrame, names: Names | None = None) -> list[str]:
    """How many processed samples need review and why; populations not measured and why;
    each reason in words (``reports.names``), per panel."""
    names = names or Names()
    processed = samples[samples.status == "processed"]
    flags = processed.qc_flags.fillna("").str.split(";")
    review = flags.map(lambda f: NEEDS_REVIEW in f)
    lines = [
        f"Processed samples: {len(processed)}; needing review before release: "
        f"{int(review.sum())} (a gate or threshold placed by its default, or high QC loss)."
    ]

    def counted(prefixes: tuple[str, ...]) -> list[str]:
        # Counted by the words: each sample's flag named from the strategy it was gated with.
        found = pd.Series(
            [
                (panel, names.of_sample(sample_id).flag(panel, x))
                for sample_id, panel, f in zip(
                    processed.sample_id, processed.panel, flags, strict=True
                )
                for x in f
                if x.startswith(prefixes)
            ],
            dtype=object,
        ).value_counts(sort=False)
        ordered = sorted(found.items(), key=lambda item: (item[0][0], -item[1]))
        return [f"    {panel}: {words}: {n} samples" for (panel, words), n in ordered]

    lines += counted(REVIEW_FLAGS)
    lost = counted(("not_measured:",))
    if lost:
        lines.append("Populations not measured (the tube lacks a marker they need):")
        lines += lost
    return lines


# Rows of the completeness grid on one page: 7-point labels stay apart up to about 45.
PATIENTS_PER_PAGE = 40


def patient_pages(patients: list[str], per_page: int) -> list[list[str]]:
    """Patients cut into pages of near-equal size, none over ``per_page`` (a 200-patient
    trial prints its per-patient pages in parts, as multi-centre reports do)."""
    if not patients:
        return [[]]
    n_pages = -(-len(patients) // per_page)
    size = -(-len(patients) // n_pages)
    return [patients[i : i + size] for i in range(0, len(patients), size)]


def _completeness_page(pdf: PdfPages, ctx: ReportContext, samples: pd.DataFrame) -> None:
    states = _sample_states(samples)
    pages = patient_pages(sorted(states.patient_id.dropna().unique()), PATIENTS_PER_PAGE)
    for k, patients in enumerate(pages, start=1):
        fig, ax = plt.subplots(figsize=A4_LANDSCAPE)
        fig.subplots_adjust(left=0.08, right=0.97, top=0.93, bottom=0.34)
        completeness_matrix(
            ax, states[states.patient_id.isin(patients)], ctx.visits, list(ctx.panels)
        )
        part = f" ({k}/{len(pages)}: {patients[0]} to {patients[-1]})" if len(pages) > 1 else ""
        ax.set_title(f"Data completeness: patients x visits x panels{part}")
        summary = qc_summary_lines(samples, ctx.names)
        if len(summary) > 14:  # the page holds 14 lines; the rest is in the CSV
            summary = summary[:13] + [
                f"    and {len(summary) - 13} more reasons: results/samples.csv, qc_flags"
            ]
        fig.text(0.08, 0.2, "\n".join(summary), fontsize=7, va="top")
        pdf.savefig(fig)
        plt.close(fig)


def _clinical_figures(
    pdf, ctx: ReportContext, windows: pd.DataFrame, statistics: pd.DataFrame
) -> None:
    fig, axes = plt.subplots(len(ctx.groups), 4, figsize=A4_LANDSCAPE, squeeze=False)
    fig.subplots_adjust(left=0.06, right=0.96, top=0.9, bottom=0.09, hspace=0.6, wspace=0.4)
    fig.suptitle(
        "Clinical outcomes per patient: before vs after infusion (paired Wilcoxon), "
        "drugs at baseline vs +12 months (exact McNemar)",
        y=0.965,
        fontsize=11,
        weight="bold",
    )
    specs = [
        ("relapses_before_after", "relapse_rate_before", "relapse_rate_after", "relapses per year"),
        ("drugs_baseline_12m", "n_drugs_baseline", "n_drugs_12m", "number of drugs"),
        (
            "prednisone_before_after",
            "prednisone_mg_per_year_before",
            "prednisone_mg_per_year_after",
            "prednisone (mg/year)",
        ),
    ]
    for row, group in enumerate(ctx.groups):
        block = ctx.members(windows, group)
        for col, (analysis, before, after, label) in enumerate(specs):
            st = statistic_row(statistics, analysis=analysis, group=group)
            b, a = block[before].to_numpy(float), block[after].to_numpy(float)
            paired_dots(
                axes[row, col],
                b,
                a,
                label,
                f"{ctx.groups[group]}: {label}\nWilcoxon {_p_or_why(st, b, a)}",
                counts=label.startswith("number of"),
            )
        followed = block[block.drugs_12m.notna()]
        fisher = statistics[
            (statistics.analysis == "drug_use_mcnemar") & (statistics.group == group)
        ]
        n = max(len(followed), 1)
        share_bl = {
            d: followed.drugs_baseline.str.split(";").apply(lambda s, d=d: d in s).sum() / n
            for d in fisher.measure
        }
        share_12 = {
            d: followed.drugs_12m.str.split(";").apply(lambda s, d=d: d in s).sum() / n
            for d in fisher.measure
        }
        drug_bars(
            axes[row, 3],
            share_bl,
            share_12,
            dict(zip(fisher.measure, fisher.p_value, strict=True)),
            f"{ctx.groups[group]}: on each drug\n(n = {len(followed)} at +12 months; McNemar)",
            labels=ctx.names.drugs,
        )
    pdf.savefig(fig)
    plt.close(fig)


def _p_or_why(row, before: np.ndarray, after: np.ndarray) -> str:
    """A paired test's p, or why there is none (no row, no pairs, no patient changed)."""
    if row is not None and np.isfinite(row.p_value):
        return format_p_phrase(row.p_value)
    pairs = np.isfinite(before) & np.isfinite(after)
    if row is None:
        return "not tested"
    if not pairs.any():
        return "p: no patient with both values"
    if np.all(before[pairs] == after[pairs]):
        return f"p: none, no change in any of the {int(pairs.sum())} patients"
    return f"p: not computed ({int(pairs.sum())} pairs)"


def _clinical_table(pdf, statistics: pd.DataFrame, ctx: ReportContext | None = None) -> None:
    """The clinical statistics page: per analysis and measure (named in words, their codes in
    brackets), one row per group and test with its estimate where one exists (a dagger where
    the maximum-likelihood estimate does not), interval, p, the plan's primary p starred, and
    the row's flag in words; then each analysis's method as run."""
    names = ctx.names if ctx is not None else Names()
    groups = ctx.groups if ctx is not None else {}
    rows = statistics[statistics.analysis != "wilcoxon_vs_baseline"]
    header = (
        f"{'group':14} {'test':27} {'n':>3} {'statistic':>9} {'estimate':>11} "
        f"{'95% CI':>20} {'p':>8}   flag"
    )
    lines: list[str] = []
    for (analysis, measure), block in rows.groupby(["analysis", "measure"], sort=False):
        what = names.drug(measure) if analysis.startswith("drug_use") else names.measure(measure)
        lines += [
            f"{ANALYSIS_TITLES.get(analysis, analysis)}: {what}  [{analysis}, {measure}]",
            header,
        ]
        for r in block.itertuples():
            exists = r.estimate_exists is True or r.estimate_exists == 1  # bool, numpy bool
            # Infinite: a Kaplan-Meier median not reached; otherwise an interval's open end.
            infinite = "not reached" if r.test == "kaplan_meier" else "inf"
            effect = format_estimate(r.effect, infinite=infinite) if exists else "†"
            # A zero cell's exact interval bounds the estimate that does not exist: shown.
            ci = format_interval(r.ci_low, r.ci_high, infinite="inf")
            star = "*" if r.primary is True or r.primary == 1 else " "
            flag = flag_short(r.flag) if isinstance(r.flag, str) else ""
            p = format_p(r.p_value) if np.isfinite(r.p_value) else "-"
            lines.append(
                f"{groups.get(r.group, r.group)[:14]:14} "
                f"{TEST_TITLES.get(r.test, str(r.test))[:27]:27} {r.n:>3.0f} "
                f"{_statistic(r.statistic):>9} {effect:>11} {ci:>20} {p:>8}{star}  {flag}"
            )
        lines.append("")
    lines += [
        "* the primary p of its analysis and group under the analysis plan (study.yaml "
        "analysis: primary_p; Methods). Clinical p-values are not adjusted. p to 2, "
        "estimates to 3 significant digits; full precision in results/statistics.csv. "
        "-: no test (a median, or a model that could not be fitted: its method says why).",
        "Estimates: Wilcoxon rows the Hodges-Lehmann shift after - before (median of the "
        "Walsh averages of the paired differences) with the 95% CI that inverts the same "
        "signed-rank test (so it excludes 0 exactly when p < 0.05, zeros aside); the "
        "conditional Poisson row the rate ratio of every relapse, after vs before (exact CI); Cox "
        "rows the hazard ratio after vs before (interval: Wald on the Wald row, profile "
        "likelihood on the likelihood-ratio row, penalised profile on Firth's, Clopper-Pearson "
        "on the exact row); Fisher the conditional odds ratio; McNemar "
        "the change in the share of patients on the drug (+12 months - baseline, Newcombe's "
        "paired score CI), and on its paired-OR row the odds "
        "ratio b/c (stopped/started: on the drug at baseline vs +12 months), median-unbiased "
        "with its Clopper-Pearson CI; Kaplan-Meier the median in days with its Brookmeyer-"
        "Crowley CI.",
        "n: patients (Wilcoxon: with both values, zero differences included; Cox: two windows "
        "each; Kaplan-Meier: one window each; drug use: followed to +12 months). Statistic: "
        "Wilcoxon min(V+, V-); conditional Poisson the relapses after; Cox Wald z, "
        "likelihood-ratio and Firth chi-squared, exact the pairs relapsing first after; "
        "Fisher the sample "
        "odds ratio; McNemar the smaller discordant count (paired OR: b); Kaplan-Meier the "
        "first relapses (events) in the window.",
        "† the maximum-likelihood estimate does not exist: no estimate or Wald p is shown for "
        "it; read the Firth penalised and exact conditional rows (a zero cell: the exact "
        "conditional interval of the odds ratio still bounds it). Flags: "
        + "; ".join(f"'{FLAG_SHORT[code]}', {flag_words(code)}" for code in FLAG_SHORT)
        + ".",
        "Kaplan-Meier curves' steps: results/km_curves.csv.",
        "",
        "Method of each analysis and test, as run (rows of one analysis and test differ only "
        "in counts; each row's own text is its method column in statistics.csv):",
    ]
    for r in rows.drop_duplicates(["analysis", "test"]).itertuples():
        lines.append(
            f"- {ANALYSIS_TITLES.get(r.analysis, r.analysis)} / "
            f"{TEST_TITLES.get(r.test, r.test)}: {r.method}"
        )
    _text_pages(pdf, "Clinical outcome statistics", lines, size=6.3, landscape=True)


def _statistic(value) -> str:
    """A test statistic as the tables print it: '-' where none was computed, 'infinite' for
    a sample odds ratio with a zero cell."""
    text = format_estimate(value, infinite="infinite")
    return "-" if text == "NA" else text


def _wrap(lines: list[str], width: int, hang: int = 4) -> list[str]:
    """Lines cut at spaces to ``width``; continuations indented by ``hang`` (a table's last
    column wraps under itself, not under the first)."""
    out = []
    for line in lines:
        while len(line) > width:
            cut = line.rfind(" ", hang + 1, width)
            cut = cut if cut > max(20, hang) else width
            out.append(line[:cut])
            line = " " * hang + line[cut:].lstrip()
        out.append(line)
    return out


def _population_page(pdf, ctx: ReportContext, block: pd.DataFrame, tests: pd.DataFrame) -> None:
    """One population: % of parent and cells/µL per visit, all patients and by age group."""
    panel, population = block.panel.iloc[0], block.population.iloc[0]
    # Each panel its own y-axis: a shared one let the last group drawn cut off the others.
    fig, axes = plt.subplots(2, len(ctx.groups), figsize=A4_LANDSCAPE, squeeze=False)
    fig.subplots_adjust(left=0.07, right=0.98, top=0.88, bottom=0.13, hspace=0.45)
    fig.suptitle(
        f"{ctx.names.definition(panel, population)}\n"
        f"({panel} panel; {population} in results/*.csv)",
        y=0.965,
        fontsize=12,
        weight="bold",
    )
    for row, measure in enumerate(("pct_parent", "cells_per_ul")):
        for col, group in enumerate(ctx.groups):
            ax = axes[row, col]
            values = ctx.members(block, group)
            own = tests[(tests.group == group) & (tests.measure == measure)]
            boxplot_by_visit(
                ax,
                values,
                ctx.visits,
                measure,
                dict(zip(own.visit, own.p_value, strict=True)),
                ctx.names.measure(measure, panel, population),
                OKABE_ITO[col % len(OKABE_ITO)],
            )
            ax.set_title(f"{ctx.groups[group]}: {ctx.names.measure(measure, panel, population)}")
            ax.set_xlabel("visit (months after first infusion)")
    fig.text(
        0.07,
        0.03,
        "Boxes: median, quartiles; whiskers: range; dots, grey lines: patients. * p<0.05, "
        "** p<0.01, paired Wilcoxon signed-rank vs baseline (unadjusted; adjusted p in the "
        "table).",
        fontsize=7,
    )
    pdf.savefig(fig)
    plt.close(fig)


# The signed-rank tests as the Wilcoxon table's 'test' column abbreviates them.
WILCOXON_TEST_SHORT = {
    "signed_rank_exact": "exact",
    "signed_rank_permutation": "perm",
    "signed_rank_normal_cc": "norm",
    "not_tested": "-",
}


def _wilcoxon_tables(pdf, ctx: ReportContext, data: pd.DataFrame, wilcox: pd.DataFrame) -> None:
    header = (
        f"{'group':12} {'panel':6} {'population':20} {'measure':18} {'visit':5} "
        f"{'n':>3} {'baseline median [IQR]':>24} {'visit median [IQR]':>24} "
        f"{'HL shift':>11} {'95% CI':>18} {'V':>5} {'test':5} {'p':>9} {'p (BH)':>9}"
    )
    lines = [header, "-" * len(header)]
    for r in wilcox.itertuples():
        sel = ctx.members(data, r.group)
        sel = sel[(sel.panel == r.panel) & (sel.population == r.population)]
        # Medians over the pairs the test used: patients with both visits measured.
        wide = sel.pivot_table(
            index="patient_id", columns="visit", values=r.measure, aggfunc="first"
        )
        pairs = wide[[ctx.baseline, r.visit]].dropna()

        def summary(values: pd.Series) -> str:
            if values.empty:
                return "NA"
            q1, q2, q3 = np.percentile(values, [25, 50, 75])
            return f"{format_estimate(q2)} {format_interval(q1, q3)}"

        lines.append(
            f"{ctx.groups.get(r.group, r.group)[:12]:12} {r.panel:6} "
            f"{ctx.names.short(r.panel, r.population)[:20]:20} "
            f"{ctx.names.measure(r.measure, r.panel, r.population)[:18]:18} {r.visit:5} {r.n:>3} "
            f"{summary(pairs[ctx.baseline]):>24} {summary(pairs[r.visit]):>24} "
            f"{format_estimate(r.effect):>11} {format_interval(r.ci_low, r.ci_high) or '-':>18} "
            f"{_statistic(r.statistic):>5} {WILCOXON_TEST_SHORT.get(r.test, r.test)[:5]:5} "
            f"{_fmt_p(r.p_value):>9} {_fmt_p(r.p_adjusted):>9}"
        )
    lines += [
        "",
        "Medians [IQR] over the n patients with both visits (the test's pairs; n counts zero "
        "differences, which the test drops). HL shift: the Hodges-Lehmann estimate of the "
        "change visit - baseline (median of the Walsh averages of the paired differences), "
        "with the 95% CI that inverts the same signed-rank test (it excludes 0 exactly when "
        "p < 0.05, a zero difference aside; -: fewer than 6 pairs, where no shift can be "
        "rejected). V: the signed-rank statistic min(V+, V-). test: exact = exact signed-rank "
        "distribution (no ties, no zeros); perm = exact permutation test over all sign "
        "patterns with mid-ranks (ties or zeros); norm = normal approximation with continuity "
        "and tie correction. p: two-sided, unadjusted. p (BH): Benjamini-Hochberg within the "
        "row's family (statistics.csv family column); the tests are exploratory. Populations "
        "are defined on the page 'Populations: gate definitions'.",
    ]
    _text_pages(
        pdf,
        "Paired Wilcoxon signed-rank tests against baseline",
        lines,
        size=6.2,
        landscape=True,
    )


def _appendix(pdf: PdfPages, samples: pd.DataFrame, visits: list[str] | None = None) -> None:
    # In visit order (BL, M1, ..., M12), not the file names' (M12 before M1); files whose
    # names give no patient or visit last, by name.
    order = {v: k for k, v in enumerate(visits or [])}
    samples = samples.assign(
        _patient=samples.get("patient_id", pd.Series(index=samples.index, dtype=object))
        .fillna("~")
        .astype(str),
        _visit=samples.get("visit", pd.Series(index=samples.index, dtype=object))
        .map(order)
        .fillna(len(order)),
    ).sort_values(["_patient", "_visit", "file"], kind="stable")
    lines = [f"{'file':34} {'status':11} sha256 of the file as received"]
    for r in samples.itertuples():
        lines.append(f"{r.file:34} {r.status:11} {r.sha256}")
        if isinstance(r.reason, str) and r.reason:
            words, line = r.reason.split(), "    reason:"
            for w in words:
                if len(line) + len(w) > 120:
                    lines.append(line)
                    line = "           "
                line += " " + w
            lines.append(line)
    _text_pages(
        pdf,
        "Appendix: input files (name, status, sha256) and quarantine reasons",
        lines,
        size=6.5,
    )
