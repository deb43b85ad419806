"""What a trial monitor asks for: patient disposition and Table 1, every missing sample and
why, visits outside their windows, a cohort QC summary. Each table is built by a plain
function (tested on its own) and printed by ``reports.cohort_report``."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd

from reports.names import Names


@dataclass(frozen=True)
class MonitorTables:
    """The monitor's pages as tables and lines, built before drawing."""

    disposition: pd.DataFrame
    table_one: list[str]
    missing: pd.DataFrame
    deviations: pd.DataFrame
    qc: list[str]
    definitions: list[str]
    # The plan's visit windows (days), for the deviations page to state what it checked.
    visit_window_days: float
    baseline_window_days: float

    def windows_text(self) -> str:
        """The windows the deviations were checked against, in words."""
        return (
            f"Windows checked: each follow-up visit within +/-{self.visit_window_days:g} days "
            "of its scheduled day; the baseline at most "
            f"{self.baseline_window_days:g} days before the first infusion and never after it "
            "(study.yaml analysis: visit_window_days, baseline_window_days)."
        )


DAYS_PER_MONTH = 30.44
WINDOW_DAYS = 365


def _median_range(values: pd.Series, fmt: str = "{:.1f}") -> str:
    values = values.dropna()
    if values.empty:
        return "NA"
    return f"{fmt.format(values.median())} ({fmt.format(values.min())}-{fmt.format(values.max())})"


def disposition_table(patients: pd.DataFrame, data_cut: pd.Timestamp) -> pd.DataFrame:
    """One row per patient: group, sex, age at first infusion, infusion date, follow-up
    (days), and whether the 12 months after infusion were completed or the patient was lost
    (with the day) before the data cut."""
    rows = []
    for p in patients.itertuples():
        follow = (p.last_follow_up_date - p.first_infusion_date).days
        due = p.first_infusion_date + pd.Timedelta(days=WINDOW_DAYS)
        if follow >= WINDOW_DAYS:
            status = "completed 12 months"
        elif due > data_cut:
            status = f"in follow-up ({follow} days at the data cut)"
        else:
            status = f"lost to follow-up at day {follow} (+{follow / DAYS_PER_MONTH:.1f} months)"
        rows.append(
            {
                "patient_id": p.patient_id,
                "group": p.group,
                "sex": p.sex,
                "age_years": (p.first_infusion_date - p.birth_date).days / 365.25,
                "first_infusion_date": p.first_infusion_date.date().isoformat(),
                "follow_up_days": follow,
                "status": status,
            }
        )
    return pd.DataFrame(rows)


def table_one(disposition: pd.DataFrame, groups: dict[str, list[str]]) -> list[str]:
    """Baseline characteristics per plan group, as text lines."""
    lines = [
        f"{'':30}" + "".join(f"{name:>24}" for name in groups),
    ]

    def row(label: str, value) -> None:
        cells = []
        for members in groups.values():
            block = disposition[disposition.group.isin(members)]
            cells.append(value(block))
        lines.append(f"{label:30}" + "".join(f"{c:>24}" for c in cells))

    row("patients, n", lambda b: str(len(b)))
    for sex in sorted(disposition.sex.dropna().unique()):
        row(
            f"sex {sex}, n (%)",
            lambda b, s=sex: (
                f"{(b.sex == s).sum()} ({100 * (b.sex == s).mean():.0f}%)" if len(b) else "0"
            ),
        )
    row("age at infusion, years", lambda b: _median_range(b.age_years))
    row("follow-up, days", lambda b: _median_range(b.follow_up_days, "{:.0f}"))
    row(
        "completed 12 months, n",
        lambda b: str((b.status == "completed 12 months").sum()),
    )
    row("lost to follow-up, n", lambda b: str(b.status.str.startswith("lost").sum()))
    lines.append("(median (range))")
    return lines


def missing_samples(
    samples: pd.DataFrame,
    patients: pd.DataFrame,
    visit_months: dict[str, float],
    panels: list[str],
    excluded: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Every scheduled sample (patient x visit x panel) without a result in the statistics,
    with why: quarantined or failed (with the reason), excluded in review (``excluded``:
    sample_id -> the reason given), after the patient's last follow-up, or not received."""
    current = samples[samples.status != "superseded"]
    rows = []
    for p in patients.itertuples():
        for visit, month in visit_months.items():
            due = p.first_infusion_date + pd.Timedelta(days=round(month * DAYS_PER_MONTH))
            for panel in panels:
                mine = current[
                    (current.patient_id == p.patient_id)
                    & (current.visit == visit)
                    & (current.panel == panel)
                ]
                processed = mine[mine.status == "processed"]
                if len(processed):
                    sample_id = processed.iloc[-1].sample_id
                    if sample_id not in (excluded or {}):
                        continue
                    why = f"excluded in review: {excluded[sample_id]}"
                    mine = processed
                elif len(mine):
                    last = mine.iloc[-1]
                    why = f"{last.status}: {last.reason}"
                elif due > p.last_follow_up_date:
                    why = "not collected: after the patient's last follow-up"
                else:
                    why = "not received: no file in the inbox"
                rows.append(
                    {
                        "patient_id": p.patient_id,
                        "visit": visit,
                        "panel": panel,
                        "file": mine.iloc[-1].file if len(mine) else "",
                        "why": why,
                    }
                )
    return pd.DataFrame(rows, columns=["patient_id", "visit", "panel", "file", "why"])


def visit_deviations(
    visits: pd.DataFrame,
    patients: pd.DataFrame,
    visit_months: dict[str, float],
    baseline: str,
    window_days: float,
    baseline_window_days: float,
) -> pd.DataFrame:
    """Visits dated outside their windows. A baseline after the first infusion is an error
    (the sample is not a baseline); other deviations are listed with their size."""
    infusion = patients.set_index("patient_id").first_infusion_date
    rows = []
    for v in visits.itertuples():
        if v.patient_id not in infusion or pd.isna(v.visit_date):
            continue
        start = infusion[v.patient_id]
        scheduled = start + pd.Timedelta(days=round(visit_months[v.visit] * DAYS_PER_MONTH))
        offset = (v.visit_date - scheduled).days
        if v.visit == baseline:
            if v.visit_date > start:
                verdict = "ERROR: baseline after the first infusion"
            elif (start - v.visit_date).days > baseline_window_days:
                verdict = f"baseline more than {baseline_window_days:g} days before infusion"
            else:
                continue
        elif abs(offset) > window_days:
            verdict = f"outside +/-{window_days:g} days"
        else:
            continue
        rows.append(
            {
                "patient_id": v.patient_id,
                "visit": v.visit,
                "scheduled": scheduled.date().isoformat(),
                "visit_date": v.visit_date.date().isoformat(),
                "days_from_schedule": offset,
                "verdict": verdict,
            }
        )
    columns = ["patient_id", "visit", "scheduled", "visit_date", "days_from_schedule", "verdict"]
    return pd.DataFrame(rows, columns=columns)


def qc_summary(
    samples: pd.DataFrame,
    qc_steps: pd.DataFrame,
    gates: pd.DataFrame,
    names: Names | None = None,
) -> list[str]:
    """Per panel: samples, events acquired, share removed by each QC step (median and
    maximum), thresholds left at their default (by marker), samples to review, and which
    populations had low counts in how many samples, with the floor."""
    names = names or Names()
    processed = samples[samples.status == "processed"]
    lines = []
    for panel, block in processed.groupby("panel"):
        keys = set(block.sample_id)
        steps = qc_steps[qc_steps.sample_id.isin(keys)].copy()
        steps["share"] = steps.removed / steps.events_in.replace(0, np.nan)
        flags = block.qc_flags.fillna("").str.split(";")
        low = int(flags.map(lambda f: any(x.startswith("low_count:") for x in f)).sum())
        low_by_flag = pd.Series(  # in words, from the strategy each sample was gated with
            [
                names.of_sample(sample_id).flag(panel, x)
                for sample_id, f in zip(block.sample_id, flags, strict=True)
                for x in f
                if x.startswith("low_count:")
            ],
            dtype=object,
        ).value_counts()
        lines += [
            f"Panel {panel}: {len(block)} samples, events acquired "
            f"{_median_range(block.events.astype(float), '{:.0f}')} (median (range))",
            "  removed by QC step, % of the events entering it: median (max)",
        ]
        for step, part in steps.groupby("step", sort=False):
            lines.append(
                f"    {step:16} {100 * part.share.median():6.2f}  ({100 * part.share.max():.2f})"
            )
        mine = gates[gates.sample_id.isin(keys)]
        defaults = mine[(mine.kind == "threshold") & ~mine.from_data.astype(bool)]
        # By marker: each threshold's, from the strategy its sample was gated with.
        per_gate = Counter(
            (g, f"{names.of_sample(sample_id).markers.get((panel, g), '')} ({g})".lstrip())
            for sample_id, g in zip(defaults.sample_id, defaults.gate, strict=True)
        )
        placed = ", ".join(f"{what} {n}" for (_, what), n in sorted(per_gate.items())) or "none"
        lines += [
            f"  thresholds left at the strategy's default (samples): {placed}",
            f"  needs review before release: "
            f"{int(block.needs_review.astype(str).eq('True').sum())} samples",
            f"  samples with a population below its event floor: {low}" + (":" if low else ""),
        ]
        lines += [f"    {words}: {n} samples" for words, n in low_by_flag.items()]
        lines.append("")
    return lines
