"""The cohort report: one PDF a reviewer can read without rerunning anything.

Everything on its pages comes from the tables the run wrote (samples, populations,
statistics), so every number can be traced to a row of a CSV beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_pdf import PdfPages

from reports.figures import (
    A4_LANDSCAPE,
    A4_PORTRAIT,
    GROUP_LABEL,
    OKABE_ITO,
    boxplot_by_visit,
    completeness_matrix,
    plt,
)

MEASURE_LABEL = {
    "pct_parent": "% of parent",
    "pct_lymphocytes": "% of lymphocytes",
    "cells_per_ul": "cells/µL",
}


@dataclass(frozen=True)
class ReportContext:
    """What the report says about its own provenance."""

    study: str
    visits: list[str]
    baseline: str
    panels: dict[str, str]  # token -> panel title
    strategy_hashes: dict[str, str]
    software: str
    data_as_of: str
    clinical_cut: str
    unknown_patients: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)


def _text_pages(
    pdf: PdfPages,
    title: str,
    lines: list[str],
    *,
    size: float = 7.0,
    per_page: int = 70,
    landscape: bool = False,
) -> None:
    """Monospaced text over as many pages as needed, title repeated."""
    pages = [lines[i : i + per_page] for i in range(0, max(len(lines), 1), per_page)] or [[]]
    for k, chunk in enumerate(pages, start=1):
        fig = plt.figure(figsize=A4_LANDSCAPE if landscape else A4_PORTRAIT)
        suffix = f" ({k}/{len(pages)})" if len(pages) > 1 else ""
        fig.text(0.06, 0.96, title + suffix, fontsize=12, weight="bold", va="top")
        fig.text(0.06, 0.93, "\n".join(chunk), family="monospace", fontsize=size, va="top")
        pdf.savefig(fig)
        plt.close(fig)


def _fmt_p(p: float) -> str:
    return "NA" if not np.isfinite(p) else f"{p:.4g}"


def write_cohort_report(
    path: str | Path,
    context: ReportContext,
    samples: pd.DataFrame,
    populations: pd.DataFrame,
    statistics: pd.DataFrame,
    groups: dict[str, str],
) -> Path:
    """Write the cohort report PDF; returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with PdfPages(
        tmp,
        metadata={
            "Title": f"{context.study}: cohort report",
            "Creator": context.software,
            "CreationDate": None,
        },
    ) as pdf:
        _title_page(pdf, context, samples)
        _completeness_page(pdf, context, samples)
        wilcox = statistics[statistics.analysis == "wilcoxon_vs_baseline"]
        _population_pages(pdf, context, populations, wilcox, groups)
        _wilcoxon_tables(pdf, context, populations, wilcox, groups)
        _text_pages(pdf, "Methods", context.methods or ["(no methods recorded)"], size=8)
        _appendix(pdf, samples)
    tmp.replace(path)
    return path


def _title_page(pdf: PdfPages, ctx: ReportContext, samples: pd.DataFrame) -> None:
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
        f"quarantined: {counts.get('quarantined', 0)}   failed: {counts.get('failed', 0)}",
        f"Visits: {', '.join(ctx.visits)} (baseline {ctx.baseline})",
        "Panels: " + ", ".join(f"{k} = {v}" for k, v in ctx.panels.items()),
    ]
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
    frame = samples.dropna(subset=["patient_id"]).copy()
    flagged = frame.qc_flags.fillna("").str.contains("qc_removed|low_count|default_gate")
    frame["state"] = np.where((frame.status == "processed") & flagged, "qc_flagged", frame.status)
    return frame


def _completeness_page(pdf: PdfPages, ctx: ReportContext, samples: pd.DataFrame) -> None:
    fig, ax = plt.subplots(figsize=A4_LANDSCAPE)
    fig.subplots_adjust(left=0.08, right=0.97, top=0.9, bottom=0.18)
    completeness_matrix(ax, _sample_states(samples), ctx.visits, list(ctx.panels))
    ax.set_title("Data completeness: patients x visits x panels")
    pdf.savefig(fig)
    plt.close(fig)


def _population_pages(pdf, ctx, populations, wilcox, groups) -> None:
    data = populations[populations.patient_id.isin(groups)].copy()
    data["group"] = data.patient_id.map(groups)
    for (panel, population), block in data.groupby(["panel", "population"], sort=False):
        fig, axes = plt.subplots(2, 3, figsize=A4_LANDSCAPE, sharey="row")
        fig.subplots_adjust(left=0.07, right=0.98, top=0.88, bottom=0.08, hspace=0.35)
        parent = block.parent.iloc[0]
        fig.suptitle(f"{panel}: {population}  (parent: {parent})", fontsize=12, weight="bold")
        for row, measure in enumerate(("pct_parent", "cells_per_ul")):
            for col, group in enumerate(("all", "child", "adult")):
                ax = axes[row, col]
                values = block if group == "all" else block[block.group == group]
                tests = wilcox[
                    (wilcox.group == group)
                    & (wilcox.panel == panel)
                    & (wilcox.population == population)
                    & (wilcox.measure == measure)
                ]
                p_by_visit = dict(zip(tests.visit, tests.p_value, strict=True))
                boxplot_by_visit(
                    ax,
                    values,
                    ctx.visits,
                    measure,
                    p_by_visit,
                    MEASURE_LABEL[measure],
                    OKABE_ITO[col],
                )
                ax.set_title(f"{GROUP_LABEL[group]}: {MEASURE_LABEL[measure]}")
                ax.set_xlabel("visit (months after first infusion)")
        fig.text(
            0.07,
            0.015,
            "Boxes: median and quartiles; whiskers: range; grey lines: "
            "patients. * p<0.05, ** p<0.01, paired Wilcoxon signed-rank vs baseline "
            "(unadjusted; adjusted p in the table).",
            fontsize=7,
        )
        pdf.savefig(fig)
        plt.close(fig)


def _wilcoxon_tables(pdf, ctx, populations, wilcox, groups) -> None:
    data = populations[populations.patient_id.isin(groups)].copy()
    data["group"] = data.patient_id.map(groups)
    header = (
        f"{'group':6} {'panel':6} {'population':18} {'measure':15} {'visit':5} "
        f"{'n':>3} {'baseline median [IQR]':>24} {'visit median [IQR]':>24} "
        f"{'median diff':>11} {'p':>9} {'p (BH)':>9}"
    )
    lines = [header, "-" * len(header)]
    for r in wilcox.itertuples():
        sel = data if r.group == "all" else data[data.group == r.group]
        sel = sel[(sel.panel == r.panel) & (sel.population == r.population)]

        def summary(visit: str, measure: str = r.measure, sel: pd.DataFrame = sel) -> str:
            v = sel.loc[sel.visit == visit, measure].dropna()
            if v.empty:
                return "NA"
            q1, q2, q3 = np.percentile(v, [25, 50, 75])
            return f"{q2:.3g} [{q1:.3g}-{q3:.3g}]"

        lines.append(
            f"{r.group:6} {r.panel:6} {r.population:18} {r.measure:15} {r.visit:5} {r.n:>3} "
            f"{summary(ctx.baseline):>24} {summary(r.visit):>24} {r.effect:>11.4g} "
            f"{_fmt_p(r.p_value):>9} {_fmt_p(r.p_adjusted):>9}"
        )
    _text_pages(
        pdf,
        "Paired Wilcoxon signed-rank tests against baseline",
        lines,
        size=6.2,
        per_page=62,
        landscape=True,
    )


def _appendix(pdf: PdfPages, samples: pd.DataFrame) -> None:
    lines = []
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
        per_page=80,
    )
