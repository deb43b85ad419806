"""Clinical CSVs of a study: loading with validation that names file, line and column."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

REQUIRED = {
    "patients.csv": [
        "patient_id",
        "group",
        "sex",
        "birth_date",
        "first_infusion_date",
        "last_follow_up_date",
    ],
    "visits.csv": ["patient_id", "visit", "visit_date", "lymphocytes_per_ul"],
    "relapses.csv": ["patient_id", "relapse_date"],
    "medications.csv": ["patient_id", "drug", "start_date", "end_date", "daily_dose_mg"],
}
DATE_COLUMNS = {
    "patients.csv": ["birth_date", "first_infusion_date", "last_follow_up_date"],
    "visits.csv": ["visit_date"],
    "relapses.csv": ["relapse_date"],
    "medications.csv": ["start_date", "end_date"],
}


class ClinicalDataError(Exception):
    """A clinical CSV problem: names the file, the line (as a spreadsheet shows it) and column."""


@dataclass(frozen=True)
class ClinicalData:
    """The four clinical tables, validated, with dates parsed. Extra columns are kept."""

    patients: pd.DataFrame
    visits: pd.DataFrame
    relapses: pd.DataFrame
    medications: pd.DataFrame

    def group_of(self) -> dict[str, str]:
        return dict(zip(self.patients.patient_id, self.patients.group, strict=True))


def _read(folder: Path, name: str) -> pd.DataFrame:
    path = folder / name
    if not path.is_file():
        raise ClinicalDataError(
            f"{path}: file not found (columns needed: {', '.join(REQUIRED[name])})"
        )
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ClinicalDataError(f"{path}: not a readable CSV ({exc})") from None
    frame.columns = [c.strip() for c in frame.columns]
    missing = [c for c in REQUIRED[name] if c not in frame.columns]
    if missing:
        raise ClinicalDataError(
            f"{path}: missing column(s) {', '.join(missing)}; the header must include "
            f"{', '.join(REQUIRED[name])}"
        )
    for column in frame.columns:
        frame[column] = frame[column].str.strip()
    for column in DATE_COLUMNS[name]:
        parsed = pd.to_datetime(frame[column], format="%Y-%m-%d", errors="coerce")
        bad = parsed.isna() & (frame[column] != "")
        if column != "end_date":
            bad |= frame[column] == ""
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise ClinicalDataError(
                f"{path}, line {row + 2}, column {column}: {frame[column].iloc[row]!r} is not a "
                "date in YYYY-MM-DD form"
            )
        frame[column] = parsed
    return frame


def load_clinical(folder: str | Path, visit_labels: list[str] | None = None) -> ClinicalData:
    """Load and cross-check patients, visits, relapses and medications."""
    folder = Path(folder)
    patients = _read(folder, "patients.csv")
    visits = _read(folder, "visits.csv")
    relapses = _read(folder, "relapses.csv")
    medications = _read(folder, "medications.csv")
    p_path = folder / "patients.csv"
    dup = patients.patient_id.duplicated()
    if dup.any():
        row = int(dup.to_numpy().nonzero()[0][0])
        raise ClinicalDataError(
            f"{p_path}, line {row + 2}, column patient_id: {patients.patient_id.iloc[row]!r} "
            "appears twice"
        )
    bad_group = ~patients.group.isin(["child", "adult"])
    if bad_group.any():
        row = int(bad_group.to_numpy().nonzero()[0][0])
        raise ClinicalDataError(
            f"{p_path}, line {row + 2}, column group: {patients.group.iloc[row]!r} must be "
            "'child' or 'adult'"
        )
    order = patients.last_follow_up_date < patients.first_infusion_date
    if order.any():
        row = int(order.to_numpy().nonzero()[0][0])
        raise ClinicalDataError(
            f"{p_path}, line {row + 2}, column last_follow_up_date: before first_infusion_date"
        )
    known = set(patients.patient_id)
    for name, frame in (
        ("visits.csv", visits),
        ("relapses.csv", relapses),
        ("medications.csv", medications),
    ):
        unknown = ~frame.patient_id.isin(known)
        if unknown.any():
            row = int(unknown.to_numpy().nonzero()[0][0])
            raise ClinicalDataError(
                f"{folder / name}, line {row + 2}, column patient_id: unknown patient "
                f"{frame.patient_id.iloc[row]!r} (not in patients.csv)"
            )
    if visit_labels is not None:
        outside = ~visits.visit.isin(visit_labels)
        if outside.any():
            row = int(outside.to_numpy().nonzero()[0][0])
            raise ClinicalDataError(
                f"{folder / 'visits.csv'}, line {row + 2}, column visit: "
                f"{visits.visit.iloc[row]!r} is not in the study schedule "
                f"({', '.join(visit_labels)})"
            )
    lymph = pd.to_numeric(visits.lymphocytes_per_ul.replace("", None), errors="coerce")
    bad = lymph.isna() & (visits.lymphocytes_per_ul != "")
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise ClinicalDataError(
            f"{folder / 'visits.csv'}, line {row + 2}, column lymphocytes_per_ul: "
            f"{visits.lymphocytes_per_ul.iloc[row]!r} is not a number"
        )
    visits["lymphocytes_per_ul"] = lymph
    medications = _check_medications(folder / "medications.csv", medications)
    return ClinicalData(patients, visits, relapses, medications)


def _check_medications(path: Path, meds: pd.DataFrame) -> pd.DataFrame:
    dose = pd.to_numeric(meds.daily_dose_mg.replace("", None), errors="coerce")
    bad = dose.isna() & (meds.daily_dose_mg != "")
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise ClinicalDataError(f"{path}, line {row + 2}, column daily_dose_mg: not a number")
    meds["daily_dose_mg"] = dose
    meds["drug"] = meds.drug.str.lower()
    reversed_ = meds.end_date.notna() & (meds.end_date < meds.start_date)
    if reversed_.any():
        row = int(reversed_.to_numpy().nonzero()[0][0])
        raise ClinicalDataError(f"{path}, line {row + 2}, column end_date: before start_date")
    for (_, _), block in meds.groupby(["patient_id", "drug"], sort=False):
        block = block.sort_values("start_date")
        ends = block.end_date.fillna(pd.Timestamp.max)
        overlap = block.start_date.iloc[1:].to_numpy() <= ends.iloc[:-1].to_numpy()
        if overlap.any():
            k = int(overlap.nonzero()[0][0]) + 1
            row = int(block.index[k])
            raise ClinicalDataError(
                f"{path}, line {row + 2}, column start_date: interval of "
                f"{block.drug.iloc[k]} for {block.patient_id.iloc[k]} overlaps the previous one "
                f"(line {int(block.index[k - 1]) + 2}); merge or split the intervals"
            )
    return meds
