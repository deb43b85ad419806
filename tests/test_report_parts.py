"""The cohort report split into parts for several processes: consecutive pages, fair shares."""

from __future__ import annotations

import pandas as pd
import pytest

from reports.cohort_report import split_into_runs


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
    lines = qc_summary_lines(samples)
    assert lines[0].startswith("Processed samples: 4; needing review before release: 2")
    assert "    default_threshold:t_cd24: 2 samples" in lines
    assert "    default_gate:lymphocytes: 1 samples" in lines
    assert "    igm_memory_b(IgM): 1 samples" in lines


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
