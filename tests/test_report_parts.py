"""The cohort report split into parts for several processes: consecutive pages, fair shares."""

from __future__ import annotations

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
