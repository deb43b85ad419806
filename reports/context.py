"""What the cohort report knows about the study beyond its tables: provenance, inputs, the
analysis plan's groups."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from reports.names import Names


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
    # Clinical files that could not be used (file -> error) and what that leaves out.
    broken_inputs: dict[str, str] = field(default_factory=dict)
    # The analysis plan's groups in its order: name -> title, and name -> patients.csv groups.
    groups: dict[str, str] = field(default_factory=dict)
    group_patients: dict[str, list[str]] = field(default_factory=dict)
    # The paper's Figure 4: its group, and per part (title, panel, populations, measure).
    # Review and sign-off (``cohort.review``): samples neither approved nor excluded, and the
    # appendix lines (overrides, exclusions, sign-off counts, the audit trail's head).
    preliminary: int = 0
    trail_problem: str = ""  # the audit trail does not verify: no approval is in force
    review_lines: list[str] = field(default_factory=list)
    figure_4_group: str = ""
    figure_4: list[tuple[str, str, list[str], str]] = field(default_factory=list)

    def members(self, frame: pd.DataFrame, group: str) -> pd.DataFrame:
        """The rows of ``frame`` (with a patients.csv ``group`` column) in a plan group."""
        return frame[frame.group.isin(self.group_patients[group])]

    left_out: list[str] = field(default_factory=list)
    # What every page calls a population, measure, flag and drug (``reports.names``).
    names: Names = field(default_factory=Names)

    def title_of(self, panel: str, population: str) -> str:
        """A population's display title; its name when the strategy gives none."""
        return self.names.title(panel, population)
