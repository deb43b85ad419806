"""The cohort report split into parts for several processes: consecutive pages, fair shares."""

from __future__ import annotations

import pandas as pd
import pytest

from reports.cohort_report import split_into_runs
from reports.figure_checks import raw_codes
from reports.names import Names, flag_words
from stats.plan import AnalysisPlan


@pytest.mark.parametrize(
    ("costs", "parts"),
    [
        ([0.02, 0.3, 0.7, *[0.35] * 14, 0.9, 0.02, 0.04], 2),
        ([0.02, 0.3, 0.7, *[0.35] * 14, 0.9, 0.02, 0.04], 3),
        ([5.0, 0.1, 0.1], 2),
        ([1.0], 4),
        ([1.0, 1.0], 8),
    ],
)
def test_report_sections_split_into_consecutive_balanced_runs(costs, parts):
    runs = split_into_runs(costs, parts)
    # Every section once, in page order, no empty run, no more runs than processes.
    assert [i for run in runs for i in run] == list(range(len(costs)))
    assert all(len(run) for run in runs) and len(runs) <= parts
    totals = [sum(costs[i] for i in run) for run in runs]
    if len(runs) == parts:
        # No run exceeds its share by more than the largest single section.
        assert max(totals) <= sum(costs) / parts + max(costs)
    assert split_into_runs([], 2) == []


def test_completeness_page_counts_samples_needing_review_and_populations_not_measured():
    from reports.cohort_report import _sample_states, qc_summary_lines

    samples = pd.DataFrame(
        {
            "sample_id": [
                "P01_BL_BCELL",
                "P01_BL_TREG",
                "P02_BL_BCELL",
                "P02_M1_BCELL",
                "P03_BL_TREG",
            ],
            "patient_id": ["P01", "P01", "P02", "P02", "P03"],
            "visit": ["BL", "BL", "BL", "M1", "BL"],
            "panel": ["BCELL", "TREG", "BCELL", "BCELL", "TREG"],
            "status": ["processed", "processed", "processed", "quarantined", "processed"],
            "qc_flags": [
                "default_threshold:t_cd24;needs_review",
                "",
                "not_measured:igm_memory_b(IgM);not_measured:switched_memory_b(IgM)",
                "",
                "default_threshold:t_cd24;default_gate:lymphocytes;needs_review",
            ],
        }
    )
    states = _sample_states(samples).state.tolist()
    assert states == ["needs_review", "processed", "partial", "quarantined", "needs_review"]
    names = Names(
        titles={
            ("BCELL", "igm_memory_b"): "IgM memory B (CD27+ IgD+ IgM+)",
            ("TREG", "lymphocytes"): "Lymphocytes (FSC/SSC)",
        },
        markers={("BCELL", "t_cd24"): "CD24", ("TREG", "t_cd24"): "CD24"},
    )
    lines = qc_summary_lines(samples, names)
    assert lines[0].startswith("Processed samples: 4; needing review before release: 2")
    # Each reason in words, per panel: never the code (issue 24, item 4).
    assert (
        "    BCELL: CD24 boundary (t_cd24) at its default: no separation in the data: 1 samples"
        in lines
    )
    assert (
        "    TREG: Lymphocytes gate at its default: the data did not place it: 1 samples" in lines
    )
    assert "    BCELL: IgM memory B not measured: the tube lacks IgM: 1 samples" in lines
    assert not any(raw_codes(line) for line in lines), lines


def test_populations_flags_drugs_and_measures_have_display_names():
    """One place names everything a page prints (reports.names, the analysis plan): a
    population with what it is a share of, each flag family in words, the drug classes
    with defaults the study can override, the measures with their parent named."""
    names = Names(
        titles={
            ("BCELL", "cd19_b"): "CD19+ B cells",
            ("BCELL", "transitional_b"): "Transitional B (CD24hi CD38hi CD27-)",
            ("BCELL", "lymphocytes"): "Lymphocytes (FSC/SSC)",
        },
        parents={
            ("BCELL", "transitional_b"): "cd19_b",
            ("BCELL", "cd19_b"): "lymphocytes",
            ("BCELL", "lymphocytes"): "qc_passed",
        },
        markers={("BCELL", "t_cd24"): "CD24"},
        drugs=AnalysisPlan(drug_names={"cni": "tacrolimus"}).drugs,
    )
    assert names.definition("BCELL", "transitional_b") == (
        "Transitional B (CD24hi CD38hi CD27-, % of CD19+ B cells)"
    )
    assert names.definition("BCELL", "cd19_b") == "CD19+ B cells (% of lymphocytes)"
    assert names.definition("BCELL", "lymphocytes") == (
        "Lymphocytes (FSC/SSC, % of events passing QC)"
    )
    assert names.measure("pct_parent", "BCELL", "transitional_b") == "% of CD19+ B cells"
    assert names.measure("cells_per_ul", "BCELL", "transitional_b") == "cells/µL"
    assert names.short("BCELL", "transitional_b") == "Transitional B"
    assert names.flag("BCELL", "low_count:transitional_b<50") == (
        "Transitional B: fewer than 50 events"
    )
    assert names.flag("BCELL", "default_threshold:t_cd24") == (
        "CD24 boundary (t_cd24) at its default: no separation in the data"
    )
    # A gate kept at a weak boundary is not "at its default"; a threshold below it is.
    assert names.flag("BCELL", "below_separation_floor:transitional_b") == (
        "Transitional B gate at a boundary too weak to measure (below the separation floor)"
    )
    assert names.flag("BCELL", "below_separation_floor:t_cd24").endswith("at its default")
    assert (
        flag_words("qc_removed:31%>20%")
        == "QC removed 31% of the events (more than the 20% allowed)"
    )
    assert flag_words("not_measured:igm_memory_b(IgM+IgD)").endswith("lacks IgM, IgD")
    assert flag_words("a_new_code:x") == "a_new_code:x"  # unknown: as written, never dropped
    # Every family the pipeline writes has words (codes from gating/, flows/, stats/).
    for code in (
        "needs_review",
        "default_gate:singlets",
        "below_separation_floor:t_cd3",
        "skipped:singlets,debris",
        "entered_at:cd4_t",
        "no_time_channel:time_qc_skipped",
        "no_pulse_height_or_width:doublets_not_removed",
        "no_spillover_keyword:uncompensated",
        "reader:$PnR repaired",
        "monotone_likelihood",
        "zero_cell",
        "all_one_sign",
    ):
        assert flag_words(code) != code and not raw_codes(flag_words(code)), code
    # Drugs: the plan's defaults, study.yaml's override wins, an unknown class as its code.
    assert names.drug("mmf") == "mycophenolate mofetil"
    assert names.drug("cni") == "tacrolimus"
    assert AnalysisPlan().drugs["cni"] == "calcineurin inhibitor"
    assert names.drug("rituximab2") == "rituximab2"


@pytest.mark.parametrize(
    ("p", "text"),
    [
        (0.1719, "0.17"),
        (0.172, "0.17"),  # the same p on neighbouring pages prints the same
        (3.052e-05, "< 0.001"),
        (1.08e-05, "< 0.001"),
        (0.0002, "< 0.001"),
        (0.0012, "0.0012"),
        (0.05, "0.050"),
        (0.1, "0.10"),
        (0.999, "1"),
        (float("nan"), "NA"),
        (float("inf"), "NA"),
        (None, "NA"),
    ],
)
def test_one_p_value_rule(p, text):
    from reports.numbers import format_p

    assert format_p(p) == text


def test_one_interval_and_estimate_rule():
    from reports.numbers import format_estimate, format_interval

    # The two styles the referee saw (0.125-2 and [0.13-2.00]) are one now.
    assert format_interval(0.125, 2.0) == "[0.125, 2]"
    assert format_interval(float("nan"), float("nan")) == ""
    assert format_estimate(1.23456) == "1.23"
    assert format_estimate(0.0000123) == "0.0000123"  # never 1.23e-05
    assert format_estimate(4567.8) == "4568"
    assert format_estimate(float("inf")) == "not reached"
    assert format_estimate(float("nan")) == "NA"


def test_long_reasons_wrap_under_their_column_and_the_appendix_is_in_visit_order():
    from reports.cohort_report import _appendix, _wrap

    row = f"{'P03':8} {'M9':6} {'BCELL':6} {'P03_M9_BCELL.fcs':24} " + "quarantined: " * 12
    lines = _wrap([row], 100, hang=48)
    assert len(lines) > 1 and all(line.startswith(" " * 48) for line in lines[1:])
    assert all(len(line) <= 100 for line in lines)

    class Capture:
        text = ""

        def savefig(self, fig, **_):
            self.text += "\n".join(t.get_text() for t in fig.texts)

    samples = pd.DataFrame(
        {
            "file": ["P01_M12_B.fcs", "P01_M1_B.fcs", "junk.fcs", "P01_BL_B.fcs"],
            "patient_id": ["P01", "P01", None, "P01"],
            "visit": ["M12", "M1", None, "BL"],
            "status": ["processed", "processed", "quarantined", "processed"],
            "sha256": ["a", "b", "c", "d"],
            "reason": ["", "", "name not understood", ""],
        }
    )
    pdf = Capture()
    _appendix(pdf, samples, ["BL", "M1", "M3", "M12"])
    positions = [pdf.text.index(f) for f in ("P01_BL_B", "P01_M1_B", "P01_M12_B", "junk")]
    assert positions == sorted(positions)


def test_qc_summary_names_the_low_count_populations_their_floor_and_default_markers():
    """Issue 24, p6: 'low counts: 32' said neither which populations nor what floor."""
    from reports.monitor_pages import qc_summary

    samples = pd.DataFrame(
        {
            "sample_id": ["a", "b", "c"],
            "panel": ["BCELL"] * 3,
            "status": ["processed"] * 3,
            "events": [10000, 12000, 11000],
            "needs_review": [True, False, False],
            "qc_flags": [
                "low_count:plasmablasts<50;low_count:transitional_b<50;default_threshold:t_cd24",
                "low_count:plasmablasts<50",
                "",
            ],
        }
    )
    steps = pd.DataFrame(
        {"sample_id": ["a", "b", "c"], "step": ["debris"] * 3, "removed": [1, 2, 3]}
    ).assign(events_in=100)
    gates = pd.DataFrame(
        {"sample_id": ["a"], "kind": ["threshold"], "from_data": [False], "gate": ["t_cd24"]}
    )
    names = Names(
        titles={
            ("BCELL", "plasmablasts"): "Plasmablasts (CD27+ CD38hi)",
            ("BCELL", "transitional_b"): "Transitional B (CD24hi CD38hi CD27-)",
        },
        markers={("BCELL", "t_cd24"): "CD24"},
    )
    lines = qc_summary(samples, steps, gates, names)
    assert "  samples with a population below its event floor: 2:" in lines
    assert "    Plasmablasts: fewer than 50 events: 2 samples" in lines
    assert "    Transitional B: fewer than 50 events: 1 samples" in lines
    assert "  thresholds left at the strategy's default (samples): CD24 (t_cd24) 1" in lines
    assert not any(raw_codes(line) for line in lines)


def test_no_deviation_page_states_the_windows_it_checked_beside_the_missing_samples():
    """Issue 24, p5: a page of '(none)' without the windows. Now one page with the missing
    samples, naming the windows and saying that every visit is within them."""
    from matplotlib.text import Text

    from reports.cohort_report import _monitor_pages
    from reports.figure_checks import figure_problems
    from reports.monitor_pages import MonitorTables

    class Pages:
        titles: list[str] = []
        texts: list[str] = []
        problems: list[str] = []

        def savefig(self, fig, **_):
            self.problems += figure_problems(fig)
            self.texts += [t.get_text() for t in fig.findobj(Text)]

    empty = pd.DataFrame(
        columns=["patient_id", "visit", "scheduled", "visit_date", "days_from_schedule", "verdict"]
    )
    missing = pd.DataFrame(
        [{"patient_id": "P07", "visit": "M6", "panel": "BCELL", "file": "", "why": "not received"}]
    )
    monitor = MonitorTables(
        pd.DataFrame(), [], missing, empty, ["Panel BCELL: 1 samples"], [], 14.0, 60.0
    )
    pages = Pages()
    _monitor_pages(pages, monitor)
    text = " ".join(" ".join(pages.texts).split())
    assert pages.problems == []
    assert "Missing samples and why. Visit-window deviations" in text
    assert "within +/-14 days of its scheduled day" in text and "at most 60 days before" in text
    assert "Every dated visit of every patient is within its window." in text
    assert "(none)" not in text


def test_box_plots_show_every_patients_value_as_a_dot_with_n_under_each_box():
    """A box of five is read by its five dots; a value whose neighbouring visits are missing
    has no line through it, so only its dot shows it (P3 at M3 here)."""
    import numpy as np

    from reports.figures import boxplot_by_visit, plt

    rows = [("P1", "BL", 10.0), ("P1", "M1", 12.0), ("P1", "M3", 11.0), ("P2", "BL", 8.0)]
    rows += [("P2", "M1", 9.0), ("P3", "M3", 14.0), ("P4", "BL", 7.0), ("P4", "M1", 6.0)]
    values = pd.DataFrame(rows, columns=["patient_id", "visit", "pct_parent"])
    fig, ax = plt.subplots()
    boxplot_by_visit(ax, values, ["BL", "M1", "M3"], "pct_parent", {"M1": 0.03}, "%", "#E69F00")
    dots = [line for line in ax.lines if line.get_marker() == "o" and line.get_zorder() == 3]
    assert len(dots) == 1
    x, y = dots[0].get_xdata(), dots[0].get_ydata()
    keep = np.isfinite(y)
    shown = sorted(zip(x[keep].tolist(), y[keep].tolist(), strict=True))
    visit_x = {"BL": 0, "M1": 1, "M3": 2}
    assert shown == sorted((visit_x[v], value) for _, v, value in rows)  # every value, once
    assert dots[0].get_zorder() > 2  # over the boxes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["BL\n(3)", "M1\n(3)", "M3\n(2)"]
    assert [t.get_text() for t in ax.texts] == ["*"]
    plt.close(fig)
