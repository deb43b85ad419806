"""Figures for the reports: plain matplotlib functions over tidy frames, print-ready."""

from __future__ import annotations

import logging
import textwrap

import matplotlib

matplotlib.use("Agg")
# The standard fonts' metrics say 'medium' where matplotlib looks for 'normal': harmless.
logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from reports.numbers import format_p_phrase  # noqa: E402

# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
plt.rcParams.update(
    {
        # The PDF standard fonts (Helvetica, Courier): text stays text (searchable,
        # extractable) and nothing is embedded, which halves the time to write a report.
        "pdf.use14corefonts": True,
        "font.family": "sans-serif",
        "font.sans-serif": ["Helvetica", "DejaVu Sans"],
        "font.monospace": ["Courier", "DejaVu Sans Mono"],
        # Text is text: file names, review reasons and patient ids are printed as written,
        # never parsed as mathtext ('$\foo$' raised, '$5 and $6' was drawn as math).
        "text.parse_math": False,
        "font.size": 8,
        "axes.titlesize": 9,
        "axes.labelsize": 8,
        "figure.dpi": 100,
        "savefig.dpi": 300,
    }
)

A4_PORTRAIT = (8.27, 11.69)
A4_LANDSCAPE = (11.69, 8.27)


def count_axis(ax, axis: str = "y") -> None:
    """Ticks at whole numbers only: a count is never 2.5."""
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
    if abs(hi - lo) < 2:  # all values equal: the locator would fall back to fractions
        middle = round((lo + hi) / 2)
        (ax.set_ylim if axis == "y" else ax.set_xlim)(middle - 1.5, middle + 1.5)


def significance_stars(p: float) -> str:
    """'**' for p < 0.01, '*' for p < 0.05, '' otherwise (as in the trial's figures)."""
    if not np.isfinite(p):
        return ""
    return "**" if p < 0.01 else "*" if p < 0.05 else ""


def boxplot_by_visit(
    ax,
    values: pd.DataFrame,
    visits: list[str],
    measure: str,
    p_by_visit: dict[str, float],
    ylabel: str,
    colour: str,
) -> None:
    """Box-and-whisker per visit (median, quartiles, whiskers to the range), the n under each
    box, each patient as a faint line through a dot per measured value (so a box of five
    shows its five patients, and a value with no measured neighbour is still seen), and
    stars against baseline."""
    data = [values.loc[values.visit == v, measure].dropna().to_numpy() for v in visits]
    positions = np.arange(len(visits))
    wide = values.pivot_table(index="patient_id", columns="visit", values=measure)
    lines = wide.reindex(columns=visits).to_numpy()
    if lines.size:
        # All patients as one line broken by NaN: one artist per panel instead of one each.
        gap = np.full((lines.shape[0], 1), np.nan)
        xs = np.hstack([np.tile(positions, (lines.shape[0], 1)), gap]).ravel()
        ys = np.hstack([lines, gap]).ravel()
        ax.plot(xs, ys, color="0.75", lw=0.5, zorder=1)
        # The values themselves, over the boxes: a line needs two visits, a dot one.
        ax.plot(xs, ys, ls="none", marker="o", ms=2.2, color="0.35", mec="none", zorder=3)
    non_empty = [i for i, d in enumerate(data) if d.size]
    if non_empty:
        ax.boxplot(
            [data[i] for i in non_empty],
            positions=positions[non_empty],
            whis=(0, 100),
            widths=0.55,
            patch_artist=True,
            boxprops={"facecolor": colour, "alpha": 0.45},
            medianprops={"color": "black", "lw": 1.2},
            zorder=2,
        )
    top = max((d.max() for d in data if d.size), default=1.0)
    for i, visit in enumerate(visits):
        stars = significance_stars(p_by_visit.get(visit, np.nan))
        if stars:
            ax.text(i, top * 1.04, stars, ha="center", va="bottom", fontsize=10)
    # The number measured under each visit, as the paper writes it: (10).
    ax.set_xticks(positions, [f"{v}\n({d.size})" for v, d in zip(visits, data, strict=True)])
    ax.set_ylim(bottom=0, top=top * 1.15 if top > 0 else 1)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", color="0.9", lw=0.5)
    ax.set_axisbelow(True)


# A sample's state on the completeness page: colour and legend label, in drawing order.
SAMPLE_STATES = {
    "processed": ("#009E73", "processed"),
    "needs_review": ("#0072B2", "needs review"),
    "partial": ("#56B4E9", "partial (marker missing)"),
    "qc_flagged": ("#F0E442", "low counts"),
    "quarantined": ("#D55E00", "quarantined"),
    "failed": ("#CC79A7", "failed"),
    "missing": ("#FFFFFF", "missing"),
}


def completeness_matrix(ax, status: pd.DataFrame, visits: list[str], panels: list[str]) -> None:
    """Patients x (visit, panel) coloured by state (``status.state``): processed, needs review
    (a gate placed by default or high QC loss), partial (populations not measured: a marker
    is missing from the tube), QC flagged (low counts), quarantined, failed, missing."""
    states = SAMPLE_STATES
    codes = {state: k for k, state in enumerate(states)}
    colours = [colour for colour, _ in states.values()]
    patients = sorted(status.patient_id.dropna().unique())
    columns = [(v, p) for v in visits for p in panels]
    grid = np.full((len(patients), len(columns)), codes["missing"])
    lookup = {(r.patient_id, r.visit, r.panel): r.state for r in status.itertuples()}
    for i, patient in enumerate(patients):
        for j, (visit, panel) in enumerate(columns):
            grid[i, j] = codes[lookup.get((patient, visit, panel), "missing")]
    cmap = matplotlib.colors.ListedColormap(colours)
    ax.imshow(grid, cmap=cmap, vmin=-0.5, vmax=len(codes) - 0.5, aspect="auto")
    ax.set_xticks(range(len(columns)), [f"{v}\n{p}" for v, p in columns], fontsize=6)
    ax.set_yticks(range(len(patients)), patients, fontsize=7)
    ax.set_xticks(np.arange(-0.5, len(columns)), minor=True)
    ax.set_yticks(np.arange(-0.5, len(patients)), minor=True)
    ax.grid(which="minor", color="0.6", lw=0.4)
    ax.tick_params(which="minor", length=0)
    handles = [
        matplotlib.patches.Patch(facecolor=colour, edgecolor="0.5", label=label)
        for colour, label in states.values()
    ]
    ax.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.08),
        ncol=len(states),
        frameon=False,
        fontsize=7,
    )


def paired_dots(
    ax, before: np.ndarray, after: np.ndarray, ylabel: str, title: str, counts: bool = False
) -> None:
    """Each patient's before and after values joined by a line; ``counts``: whole-number
    ticks."""
    for b, a in zip(before, after, strict=True):
        if np.isfinite(b) and np.isfinite(a):
            ax.plot([0, 1], [b, a], color="0.6", lw=0.7, marker="o", ms=3)
    ax.set_xticks([0, 1], ["before", "after"])
    ax.set_xlim(-0.4, 1.4)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", color="0.9", lw=0.5)
    if counts:
        count_axis(ax)


def drug_bars(
    ax,
    share_baseline: dict[str, float],
    share_12m: dict[str, float],
    p_values: dict[str, float],
    title: str,
    labels: dict[str, str] | None = None,
) -> None:
    """Share of patients on each drug at baseline and +12 months, the paired test's p above
    each pair; ``labels``: the drugs' display names (their codes otherwise)."""
    drugs = sorted(share_baseline)
    x = np.arange(len(drugs))
    ax.bar(
        x - 0.2, [100 * share_baseline[d] for d in drugs], 0.4, color=OKABE_ITO[0], label="baseline"
    )
    ax.bar(
        x + 0.2,
        [100 * share_12m.get(d, 0) for d in drugs],
        0.4,
        color=OKABE_ITO[1],
        label="+12 months",
    )
    for i, d in enumerate(drugs):
        ax.text(i, 106, format_p_phrase(p_values.get(d, np.nan)), ha="center", fontsize=6)
    names = [(labels or {}).get(d, d) for d in drugs]
    ax.set_xticks(x, [textwrap.fill(n, 14, break_long_words=False) for n in names], fontsize=6)
    ax.set_ylim(0, 165)  # room for the p-values (106) and the legend above them
    ax.set_yticks([0, 25, 50, 75, 100])
    ax.set_ylabel("patients on the drug (%)")
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=6, loc="upper center", ncol=2)
