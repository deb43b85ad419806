"""The trial report's own figures, in its layout (Figures 2A, 2B, 3A, 3B, 4A, 4B), drawn from
the same tables as the rest of the report. Where this report's analysis differs from the
paper's on purpose, a sentence beside the figure says how."""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd

from reports.context import ReportContext
from reports.figures import A4_LANDSCAPE, OKABE_ITO, boxplot_by_visit, count_axis, plt
from reports.names import Names
from reports.numbers import format_estimate, format_interval, format_p, format_p_phrase

KM_TICKS = (0, 90, 180, 270, 365)


_fmt_p = format_p  # one rule for every p on every page (reports.numbers)


def statistic_row(statistics: pd.DataFrame, **keys) -> pd.Series | None:
    """The first statistics row with these column values, or None."""
    sel = statistics
    for key, value in keys.items():
        sel = sel[sel[key] == value]
    return sel.iloc[0] if len(sel) else None


MODELS = (
    ("relapse_free_cox_unmatched", "Unmatched"),
    ("relapse_free_cox_stratified", "Stratified"),
)
FIGURE_2A_NOTE = (
    "Tick marks: censored windows (end of window or last follow-up). Hazard ratios (HR): after "
    "vs before infusion, Cox (Efron ties), 95% CI; stratified: each patient's two windows a "
    "matched pair. Firth: penalised partial likelihood (Heinze & Schemper 2001), profile "
    "penalised-likelihood CI, penalised LR p. Exact: the informative pairs (binomial, 1/2), "
    "median-unbiased HR, Clopper-Pearson CI. (primary): the p the analysis plan names primary "
    "(Methods). Numbers: results/statistics.csv, results/km_curves.csv."
)
MLE_FOOTNOTE = (
    "† The ordinary maximum-likelihood estimate does not exist (monotone likelihood: the "
    "likelihood keeps rising as the HR goes to 0 or infinity, e.g. every informative pair "
    "relapsed first in the same window); no estimate, interval or Wald p is shown for it."
)


def _p_text(row: pd.Series) -> str:
    return format_p_phrase(row.p_value) + (" (primary)" if bool(row.primary) else "")


def hazard_ratio_lines(statistics: pd.DataFrame, group: str) -> tuple[list[str], bool]:
    """Figure 2A's text for one group: per Cox model the ordinary estimate where it exists
    (else a dagger: it does not), Firth's estimate, and the pairs' exact estimate, each with
    its interval and p, the plan's primary p marked; and whether any dagger was printed."""
    lines, missing = [], False
    for analysis, label in MODELS:
        rows = statistics[(statistics.analysis == analysis) & (statistics.group == group)]
        by_test = {r.test: r for r in rows.itertuples()}
        wald, lr = by_test.get("cox_wald"), by_test.get("cox_likelihood_ratio")
        if wald is None:
            continue
        if lr is None:  # not estimable at all (no relapse): the row's method says why
            lines.append(f"{label}: not estimable")
            continue
        if bool(wald.estimate_exists):
            lines.append(
                f"{label}: HR {format_estimate(wald.effect)} "
                f"{format_interval(wald.ci_low, wald.ci_high, infinite='inf')}, "
                f"Wald {_p_text(wald)}, LR {_p_text(lr)}"
            )
        else:
            missing = True
            lines.append(f"{label}: HR does not exist†; LR (supremum) {_p_text(lr)}")
        firth = by_test.get("cox_firth")
        if firth is not None and not bool(firth.estimate_exists):
            lines.append("   Firth: the penalised fit did not converge")
        elif firth is not None:
            lines.append(
                f"   Firth HR {format_estimate(firth.effect)} "
                f"{format_interval(firth.ci_low, firth.ci_high, infinite='inf')}, {_p_text(firth)}"
            )
        exact = by_test.get("cox_exact_conditional")
        if exact is not None:
            lines.append(
                f"   exact HR {format_estimate(exact.effect)} "
                f"{format_interval(exact.ci_low, exact.ci_high, infinite='inf')}, {_p_text(exact)}"
            )
    return lines, missing


def _note(fig, text: str, y: float = 0.03) -> None:
    # Wrapped here, not by matplotlib: its wrap runs lines to the very edge of the page.
    chars = int(fig.get_figwidth() * 72 * 0.86 / (7 * 0.55))  # Helvetica averages ~0.5 em
    fig.text(0.06, y, textwrap.fill(text, chars), fontsize=7, color="0.25", va="bottom")


def figure_2a(
    pdf, ctx: ReportContext, curves: dict, statistics: pd.DataFrame, windows: pd.DataFrame
) -> None:
    """Relapse-free survival in the 12 months before vs after infusion, per group: the two
    Kaplan-Meier curves, both Cox hazard ratios, medians and numbers at risk."""
    fig = plt.figure(figsize=A4_LANDSCAPE)
    fig.suptitle(
        "Figure 2A. Relapse-free survival, 12 months before vs after infusion",
        y=0.965,
        fontsize=12,
        weight="bold",
    )
    width = 0.88 / len(ctx.groups)
    separated = False
    for k, (group, title) in enumerate(ctx.groups.items()):
        left = 0.06 + k * width
        ax = fig.add_axes((left + 0.03, 0.36, width - 0.06, 0.4))
        risk = fig.add_axes((left + 0.03, 0.13, width - 0.06, 0.12))
        lines = []
        for colour, window in zip(OKABE_ITO[:2], ("before", "after"), strict=True):
            km = curves.get((group, window))
            if km is None:
                continue
            km.plot_survival_function(
                ax=ax,
                ci_show=False,
                color=colour,
                show_censors=True,
                censor_styles={"marker": "|", "ms": 6},
                label=f"{window}: median "
                + (
                    f"{km.median_survival_time_:.0f} d"
                    if np.isfinite(km.median_survival_time_)
                    else "not reached"
                ),
            )
            table = km.event_table
            at_risk = [
                int(table.at_risk[table.index >= t].iloc[0]) if (table.index >= t).any() else 0
                for t in KM_TICKS
            ]
            lines.append((window, colour, at_risk))
        ax.set_xlim(-20, 385)
        # Room above 1 for the legend: a curve that never drops (no relapse after) runs at 1.
        ax.set_ylim(0, 1.25)
        ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
        ax.set_xticks(KM_TICKS)
        ax.set_xlabel("days since the window's start")
        ax.set_ylabel("relapse-free (proportion)")
        hr, missing = hazard_ratio_lines(statistics, group)
        separated |= missing
        ax.set_title(
            f"{title} (n = {len(ctx.members(windows, group))})\n" + "\n".join(hr), fontsize=6.5
        )
        ax.legend(loc="upper right", frameon=False, fontsize=7)
        risk.set_xlim(ax.get_xlim())
        risk.set_ylim(-0.5, len(lines) - 0.5)
        risk.set_xticks(KM_TICKS)
        risk.set_yticks(range(len(lines)), [w for w, _, _ in lines][::-1])
        for row, (_, colour, at_risk) in enumerate(reversed(lines)):
            for t, count in zip(KM_TICKS, at_risk, strict=True):
                risk.text(t, row, str(count), ha="center", va="center", color=colour, fontsize=7)
        risk.set_title("numbers at risk", fontsize=7)
        risk.tick_params(length=0, labelsize=7)
        for spine in risk.spines.values():
            spine.set_visible(False)
    _note(fig, FIGURE_2A_NOTE + (" " + MLE_FOOTNOTE if separated else ""))
    pdf.savefig(fig)
    plt.close(fig)


def _drug_counts(block: pd.DataFrame, drugs: list[str]) -> tuple[dict, dict]:
    def count(column: str) -> dict[str, int]:
        on = block[column].dropna().astype(str).str.split(";")
        return {d: int(on.apply(lambda s, d=d: d in s).sum()) for d in drugs}

    return count("drugs_baseline"), count("drugs_12m")


def drug_test_lines(fisher, mcnemar) -> str:
    """Figure 2B's text over one drug: Fisher's odds ratio with its exact interval and p,
    McNemar's change in the share on the drug with its 95% interval (Newcombe's) and p; the
    plan's primary p marked."""
    lines = []
    if fisher is not None:
        ci = format_interval(fisher.ci_low, fisher.ci_high, infinite="inf")
        if bool(fisher.estimate_exists):
            estimate = f"OR {format_estimate(fisher.effect, infinite='inf')} {ci}"
        elif ci:  # a zero cell: the estimate is 0 or infinite, the exact interval bounds it
            estimate = f"OR† {ci}"
        else:
            estimate = "no OR"  # every patient on, or every patient off, at both dates
        lines += [f"Fisher {estimate}", f"  {_p_text(fisher)}"]
    if mcnemar is not None:
        change = f"{100 * mcnemar.effect:+.0f}%" if np.isfinite(mcnemar.effect) else "NA"
        lines.append(f"McNemar change {change}")
        if np.isfinite(mcnemar.ci_low) and np.isfinite(mcnemar.ci_high):
            lines.append(f"  [{100 * mcnemar.ci_low:+.0f}%, {100 * mcnemar.ci_high:+.0f}%]")
        lines.append(f"  {_p_text(mcnemar)}")
    return "\n".join(lines)


def figure_2b(pdf, ctx: ReportContext, windows: pd.DataFrame, statistics: pd.DataFrame) -> None:
    """Numbers of patients on each drug at baseline and at +12 months, per group, with each
    drug's tests: estimate, interval and p, the primary p marked."""
    names = ctx.names
    followed = windows[windows.drugs_12m.notna()]
    drugs = sorted(set(statistics.loc[statistics.analysis == "drug_use_fisher", "measure"]))
    fig, axes = plt.subplots(1, len(ctx.groups), figsize=A4_LANDSCAPE, squeeze=False)
    fig.subplots_adjust(left=0.06, right=0.98, top=0.88, bottom=0.2, wspace=0.3)
    fig.suptitle(
        "Figure 2B. Patients on each drug at baseline and at +12 months",
        y=0.965,
        fontsize=12,
        weight="bold",
    )
    for ax, (group, title) in zip(axes[0], ctx.groups.items(), strict=True):
        block = ctx.members(followed, group)
        at_bl, at_12 = _drug_counts(block, drugs)
        x = np.arange(len(drugs))
        ax.bar(x - 0.2, [at_bl[d] for d in drugs], 0.4, color=OKABE_ITO[0], label="baseline")
        ax.bar(x + 0.2, [at_12[d] for d in drugs], 0.4, color=OKABE_ITO[1], label="+12 months")
        top = max(len(block), 1)
        ax.set_ylim(0, top * 1.5)
        for i, drug in enumerate(drugs):
            fisher = statistic_row(
                statistics, analysis="drug_use_fisher", group=group, measure=drug
            )
            mcnemar = statistic_row(
                statistics, analysis="drug_use_mcnemar", group=group, measure=drug
            )
            ax.text(
                i,
                top * 1.04,
                drug_test_lines(fisher, mcnemar),
                ha="center",
                va="bottom",
                fontsize=5.5,
                linespacing=1.25,
            )
        ax.set_xticks(
            x, [textwrap.fill(names.drug(d), 14, break_long_words=False) for d in drugs], fontsize=7
        )
        ax.set_ylabel("patients on the drug (count)")
        count_axis(ax)
        ax.set_title(f"{title} (n = {len(block)} followed to +12 months)", fontsize=9)
        ax.legend(frameon=False, fontsize=7, loc="upper right")
    lost = windows[windows.drugs_12m.isna()]
    _note(
        fig,
        "As the paper, counts of patients. Fisher's exact test is the paper's; it treats the two "
        "dates as independent groups: OR, the conditional maximum-likelihood odds ratio of "
        "being on the drug at baseline vs +12 months, with its exact conditional 95% CI (as "
        "R's fisher.test); † a zero cell, so the odds ratio is 0 or infinite. McNemar's exact "
        "test is the paired test of the same patients at both dates; change: the share of "
        "patients on the drug at +12 months minus at baseline, with Newcombe's hybrid score "
        "95% CI for paired proportions. (primary): the p the analysis "
        "plan names primary. Patients not followed to +12 months are left out at both dates"
        + (f" ({', '.join(lost.patient_id)})." if len(lost) else "."),
        y=0.05,
    )
    pdf.savefig(fig)
    plt.close(fig)


def paired_test_text(row) -> str:
    """A paired Wilcoxon row as Figure 3 prints it: the Hodges-Lehmann shift with the 95%
    interval that inverts the test, and p (primary marked); why not, where there is no test."""
    if row is None:
        return "not tested"
    ci = format_interval(row.ci_low, row.ci_high)
    estimate = f"HL shift {format_estimate(row.effect)}" + (f" {ci}" if ci else " (n < 6: no CI)")
    if not np.isfinite(row.p_value):  # the signed-rank test needs a non-zero difference
        return f"{estimate}; no test: no patient changed"
    return f"{estimate}, Wilcoxon {_p_text(row)}"


# Patients per group on one Figure 3 page: 6-point ids under each pair of bars stay apart.
FIGURE_3_PATIENTS = 30


def figure_3(pdf, ctx: ReportContext, windows: pd.DataFrame, statistics: pd.DataFrame) -> None:
    """Figure 3A: relapses per patient in each 12-month window (counts); Figure 3B: number of
    drugs per patient at baseline and +12 months. The lost patient's shorter window is shown.
    More than FIGURE_3_PATIENTS patients in a group: the figure runs over several pages, the
    k-th part of every group on page k (the tests in each title are the whole group's)."""
    # The paper's Figure 3 is per age group: the plan's groups that are not the union of others.
    subgroups = [g for g, p in ctx.group_patients.items() if len(p) == 1] or list(ctx.groups)
    sizes = [len(ctx.members(windows, g)) for g in subgroups]
    n_pages = max(1, -(-max(sizes, default=0) // FIGURE_3_PATIENTS))
    for page in range(n_pages):
        _figure_3_page(pdf, ctx, windows, statistics, subgroups, page, n_pages)


def _figure_3_page(pdf, ctx, windows, statistics, subgroups, page: int, n_pages: int) -> None:
    fig, axes = plt.subplots(2, len(subgroups), figsize=A4_LANDSCAPE, squeeze=False)
    fig.subplots_adjust(left=0.06, right=0.98, top=0.88, bottom=0.17, hspace=0.55, wspace=0.2)
    fig.suptitle(
        "Figure 3. (A) relapses per patient, 12 months before vs after infusion; "
        "(B) number of drugs per patient"
        + (f" (part {page + 1} of {n_pages})" if n_pages > 1 else ""),
        y=0.965,
        fontsize=11,
        weight="bold",
    )
    shown: set[str] = set()
    hatched = False  # a hatched bar that is not 0 high: only then does the note say so
    for col, group in enumerate(subgroups):
        whole = ctx.members(windows, group)
        size = -(-len(whole) // n_pages)
        block = whole.iloc[page * size : (page + 1) * size]
        x = np.arange(len(block))
        short = (block.after_days < block.before_days).to_numpy()
        ax = axes[0, col]
        ax.bar(x - 0.2, block.relapses_before, 0.4, color=OKABE_ITO[0], label="before")
        bars = ax.bar(x + 0.2, block.relapses_after, 0.4, color=OKABE_ITO[1], label="after")
        top = max(float(block[["relapses_before", "relapses_after"]].max().max()), 1.0)
        ax.set_ylim(0, top * 1.3 + 0.5)
        for i, (bar, is_short) in enumerate(zip(bars, short, strict=True)):
            if is_short:  # the window the patient was followed: a bar of 0 would hide it
                hatched |= bar.get_height() > 0
                bar.set_hatch("///")
                bar.set_edgecolor("0.2")
                days = int(block.after_days.iloc[i])
                ax.text(
                    x[i] + 0.2,
                    bar.get_height() + 0.05,
                    f"{days} d\nonly",
                    ha="center",
                    va="bottom",
                    fontsize=5,
                )
        ax.set_xticks(x, block.patient_id, rotation=90, fontsize=6)
        ax.set_ylabel("relapses (count)")
        count_axis(ax)
        test = statistic_row(statistics, analysis="relapses_before_after", group=group)
        n_after = int((whole.after_days >= whole.before_days).sum())
        shown |= set(block.patient_id)
        ax.set_title(
            f"3A {ctx.groups[group]}: n = {len(whole)} before, {n_after} full windows after\n"
            f"relapses per year, after - before: {paired_test_text(test)}",
            fontsize=7.5,
        )
        ax.legend(frameon=False, fontsize=6, loc="upper right")

        ax = axes[1, col]
        followed = block.n_drugs_12m.notna().to_numpy()
        ax.bar(x - 0.2, block.n_drugs_baseline, 0.4, color=OKABE_ITO[0], label="baseline")
        ax.bar(
            x[followed] + 0.2,
            block.n_drugs_12m[followed],
            0.4,
            color=OKABE_ITO[1],
            label="+12 months",
        )
        top = max(float(block.n_drugs_baseline.max()), 1.0)
        ax.set_ylim(0, top * 1.3 + 0.5)
        for i in np.flatnonzero(~followed):
            ax.text(
                x[i] + 0.2, 0.1, "not\nfollowed", ha="center", fontsize=5, rotation=90, va="bottom"
            )
        ax.set_xticks(x, block.patient_id, rotation=90, fontsize=6)
        ax.set_ylabel("drugs (count)")
        count_axis(ax)
        test = statistic_row(statistics, analysis="drugs_baseline_12m", group=group)
        ax.set_title(
            f"3B {ctx.groups[group]}: n = {int(whole.n_drugs_12m.notna().sum())} followed to "
            f"+12 months\ndrugs, +12 months - baseline: {paired_test_text(test)}",
            fontsize=7.5,
        )
        ax.legend(frameon=False, fontsize=6, loc="upper right")
    lost = windows[(windows.after_days < windows.before_days) & windows.patient_id.isin(shown)]
    lost_text = ", ".join(f"{r.patient_id} ({r.after_days} days)" for r in lost.itertuples())
    _note(
        fig,
        "The paper shows counts (n = all patients before, those still followed after). The "
        "tests here compare relapses per 365 days of observation with every patient, so a "
        "shortened window is not read as fewer relapses"
        + (
            f"; 'd only' over a bar{', hatched,' if hatched else ''}: after-window shortened "
            f"by loss to follow-up: {lost_text}" * bool(lost_text)
        )
        + ". Drug counts: patients not followed to +12 months are left out of the test. HL "
        "shift: Hodges-Lehmann estimate of the paired change (median of the Walsh averages of "
        "the differences) with the 95% CI that inverts the Wilcoxon test.",
        y=0.03,
    )
    pdf.savefig(fig)
    plt.close(fig)


def figure_4(
    pdf,
    label: str,
    title: str,
    group_title: str,
    members: pd.DataFrame,
    specs: list[tuple[str, str]],
    measure: str,
    visits: list[str],
    statistics: pd.DataFrame,
    names: Names | None = None,
) -> None:
    """One part of Figure 4: a group's populations per visit, box-and-whisker, n per visit,
    stars for the paired Wilcoxon test against baseline."""
    names = names or Names()
    fig, axes = plt.subplots(1, len(specs), figsize=A4_LANDSCAPE, squeeze=False)
    fig.subplots_adjust(left=0.06, right=0.98, top=0.88, bottom=0.2, wspace=0.35)
    fig.suptitle(f"Figure {label}. {group_title}: {title}", y=0.965, fontsize=12, weight="bold")
    wilcox = statistics[statistics.analysis == "wilcoxon_vs_baseline"]
    for ax, (panel, population) in zip(axes[0], specs, strict=True):
        values = members[(members.panel == panel) & (members.population == population)]
        tests = wilcox[
            (wilcox.panel == panel)
            & (wilcox.population == population)
            & (wilcox.measure == measure)
            & (wilcox.group == members.attrs["group"])
        ]
        boxplot_by_visit(
            ax,
            values,
            visits,
            measure,
            dict(zip(tests.visit, tests.p_value, strict=True)),
            names.measure(measure, panel, population),
            OKABE_ITO[1],
        )
        # The population with its defining markers, wrapped to the panel's width.
        ax.set_title(textwrap.fill(names.title(panel, population), 26), fontsize=9)
        ax.set_xlabel("visit")
    _note(
        fig,
        "Boxes: median and quartiles; whiskers: range; dots: each patient's value, grey lines "
        "joining a patient's visits; (n) under each "
        "visit: patients measured. * p<0.05, ** p<0.01: paired Wilcoxon signed-rank test "
        "against baseline "
        "(unadjusted, as the paper; BH-adjusted p in results/statistics.csv).",
        y=0.04,
    )
    pdf.savefig(fig)
    plt.close(fig)
