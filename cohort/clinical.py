"""Clinical CSVs of a study: loading with validation that names file, line and column."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cohort.identifiers import hidden_character
from panels.errors import ImmunomonError
from stats.plan import DEFAULT_PATIENT_GROUPS

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


class ClinicalDataError(ImmunomonError):
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


def _refuse_first(mask: pd.Series, path: Path, column: str, problem: Callable[[int], str]) -> None:
    """ClinicalDataError at the first row where ``mask`` holds: the file, the line as a
    spreadsheet shows it (the header is line 1), the column and ``problem(row)``."""
    if mask.any():
        row = int(mask.to_numpy().nonzero()[0][0])
        raise ClinicalDataError(f"{path}, line {row + 2}, column {column}: {problem(row)}")


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
    for column in frame.columns:
        if hidden := hidden_character(column):
            raise ClinicalDataError(
                f"{path}, line 1: the column name {column!r} contains an invisible or control "
                f"character ({hidden}): retype it"
            )
    missing = [c for c in REQUIRED[name] if c not in frame.columns]
    if missing:
        raise ClinicalDataError(
            f"{path}: missing column(s) {', '.join(missing)}; the header must include "
            f"{', '.join(REQUIRED[name])}"
        )
    for column in frame.columns:
        frame[column] = frame[column].str.strip()
    for column in REQUIRED[name]:
        # 'P01' + a zero-width space looks exactly like P01 and is another patient.
        hidden = frame[column].map(hidden_character)
        _refuse_first(
            hidden != "",
            path,
            column,
            lambda row, column=column, hidden=hidden: (
                f"{frame[column].iloc[row]!r} contains an invisible, control or bidirectional "
                f"character ({hidden.iloc[row]}), so it can look like another value: retype it"
            ),
        )
    for column in DATE_COLUMNS[name]:
        parsed = pd.to_datetime(frame[column], format="%Y-%m-%d", errors="coerce")
        bad = parsed.isna() & (frame[column] != "")
        if column != "end_date":
            bad |= frame[column] == ""
        _refuse_first(
            bad,
            path,
            column,
            lambda row, column=column: (
                f"{frame[column].iloc[row]!r} is not a date in YYYY-MM-DD form"
            ),
        )
        frame[column] = parsed
    return frame


# What each clinical file feeds: when one is broken, only these are left out of a pass.
FEEDS = {
    "patients.csv": "the patient groups, hence every statistic and clinical figure",
    "visits.csv": "cells/µL (populations.csv and their tests)",
    "relapses.csv": "relapse rates and relapse-free survival (Kaplan-Meier, Cox)",
    "medications.csv": "prednisone doses and drug use",
}


@dataclass(frozen=True)
class ClinicalLoad:
    """The clinical files as far as they are usable.

    ``broken`` maps each unusable file to its error. ``data`` holds the usable files, a broken
    file's table left empty; it is None when patients.csv is broken (nothing is grouped).
    ``lymphocyte_counts`` is visits.csv checked on its own, so cells/µL survive a broken
    patients.csv; None when visits.csv itself is broken."""

    data: ClinicalData | None
    broken: dict[str, str]
    lymphocyte_counts: pd.DataFrame | None


def load_clinical_parts(
    folder: str | Path,
    visit_labels: list[str] | None = None,
    patient_groups: Collection[str] = DEFAULT_PATIENT_GROUPS,
) -> ClinicalLoad:
    """Load and cross-check each clinical file on its own, keeping the usable ones.
    ``patient_groups``: the values patients.csv ``group`` may take (the analysis plan's)."""
    folder = Path(folder)
    broken: dict[str, str] = {}

    def attempt(name: str, load: Callable[[], pd.DataFrame]) -> pd.DataFrame | None:
        try:
            return load()
        except ClinicalDataError as exc:
            broken[name] = str(exc)
            return None

    patients = attempt(
        "patients.csv",
        lambda: _check_patients(folder, _read(folder, "patients.csv"), patient_groups),
    )
    counts = attempt(
        "visits.csv", lambda: _check_visits(folder, _read(folder, "visits.csv"), visit_labels)
    )
    if patients is None:
        return ClinicalLoad(None, broken, counts)

    def linked(name: str, column: str) -> pd.DataFrame:
        frame = _read(folder, name)
        _check_known_patients(folder, patients, name, frame)
        _check_within_life(folder, patients, name, frame, column)
        return frame

    visits = None
    if counts is not None:
        # Checked against patients.csv too; cells/µL keep the counts either way.
        visits = attempt("visits.csv", lambda: _linked_visits(folder, patients, counts))
    relapses = attempt("relapses.csv", lambda: linked("relapses.csv", "relapse_date"))
    medications = attempt(
        "medications.csv",
        lambda: _check_medications(
            folder / "medications.csv", linked("medications.csv", "start_date")
        ),
    )

    def usable(frame: pd.DataFrame | None, name: str) -> pd.DataFrame:
        if frame is not None:
            return frame
        empty = pd.DataFrame({c: pd.Series(dtype=str) for c in REQUIRED[name]})
        for column in DATE_COLUMNS[name]:
            empty[column] = pd.Series(dtype="datetime64[ns]")
        return empty

    data = ClinicalData(
        patients,
        usable(visits, "visits.csv"),
        usable(relapses, "relapses.csv"),
        usable(medications, "medications.csv"),
    )
    return ClinicalLoad(data, broken, None if "visits.csv" in broken else counts)


def load_clinical(folder: str | Path, visit_labels: list[str] | None = None) -> ClinicalData:
    """Load and cross-check patients, visits, relapses and medications; the first broken
    file's error is raised."""
    loaded = load_clinical_parts(folder, visit_labels)
    for name in REQUIRED:
        if name in loaded.broken:
            raise ClinicalDataError(loaded.broken[name])
    assert loaded.data is not None
    return loaded.data


def _linked_visits(folder: Path, patients: pd.DataFrame, visits: pd.DataFrame) -> pd.DataFrame:
    _check_known_patients(folder, patients, "visits.csv", visits)
    _check_within_life(folder, patients, "visits.csv", visits, "visit_date")
    return visits


def _check_patients(folder: Path, patients: pd.DataFrame, groups: Collection[str]) -> pd.DataFrame:
    p_path = folder / "patients.csv"
    _refuse_first(
        patients.patient_id.duplicated(),
        p_path,
        "patient_id",
        lambda row: f"{patients.patient_id.iloc[row]!r} appears twice",
    )
    _refuse_first(
        ~patients.group.isin(groups),
        p_path,
        "group",
        lambda row: (
            f"{patients.group.iloc[row]!r} is not a group of the analysis plan "
            f"({', '.join(groups)}); fix the value or the plan's groups in study.yaml"
        ),
    )
    for column, earlier in (
        ("last_follow_up_date", "first_infusion_date"),
        ("first_infusion_date", "birth_date"),
    ):
        _refuse_first(
            patients[column] < patients[earlier],
            p_path,
            column,
            lambda _, earlier=earlier: f"before {earlier}",
        )
    return patients


def _check_known_patients(
    folder: Path, patients: pd.DataFrame, name: str, frame: pd.DataFrame
) -> None:
    _refuse_first(
        ~frame.patient_id.isin(set(patients.patient_id)),
        folder / name,
        "patient_id",
        lambda row: f"unknown patient {frame.patient_id.iloc[row]!r} (not in patients.csv)",
    )


def _check_visits(
    folder: Path, visits: pd.DataFrame, visit_labels: list[str] | None
) -> pd.DataFrame:
    """Visit labels in the schedule; lymphocyte counts numbers and possible."""
    path = folder / "visits.csv"
    if visit_labels is not None:
        _refuse_first(
            ~visits.visit.isin(visit_labels),
            path,
            "visit",
            lambda row: (
                f"{visits.visit.iloc[row]!r} is not in the study schedule "
                f"({', '.join(visit_labels)})"
            ),
        )
    written = visits.lymphocytes_per_ul
    lymph = pd.to_numeric(written.replace("", None), errors="coerce")
    _refuse_first(
        lymph.isna() & (written != ""),
        path,
        "lymphocytes_per_ul",
        lambda row: f"{written.iloc[row]!r} is not a number",
    )
    _refuse_first(
        (lymph <= 0) | (lymph > MAX_LYMPHOCYTES_PER_UL),
        path,
        "lymphocytes_per_ul",
        lambda row: (
            f"{written.iloc[row]!r} is not a possible lymphocyte count (expected above "
            f"0 and at most {MAX_LYMPHOCYTES_PER_UL:,} per uL; leave it empty when unknown)"
        ),
    )
    visits["lymphocytes_per_ul"] = lymph
    return visits


# Above any count seen outside leukaemia; a typo (an extra zero) lands here.
MAX_LYMPHOCYTES_PER_UL = 30_000


def _check_within_life(
    folder: Path, patients: pd.DataFrame, name: str, frame: pd.DataFrame, column: str
) -> None:
    """A dated event lies between the patient's birth and last follow-up."""
    people = patients.set_index("patient_id")
    born = frame.patient_id.map(people.birth_date)
    last = frame.patient_id.map(people.last_follow_up_date)
    for wrong, limit, relation in (
        (frame[column] < born, born, "before the patient's birth_date"),
        (frame[column] > last, last, "after the patient's last_follow_up_date"),
    ):
        _refuse_first(
            wrong,
            folder / name,
            column,
            lambda row, limit=limit, relation=relation: (
                f"{frame[column].iloc[row].date().isoformat()} is {relation} "
                f"({limit.iloc[row].date().isoformat()})"
            ),
        )


def _check_medications(path: Path, meds: pd.DataFrame) -> pd.DataFrame:
    dose = pd.to_numeric(meds.daily_dose_mg.replace("", None), errors="coerce")
    _refuse_first(
        dose.isna() & (meds.daily_dose_mg != ""), path, "daily_dose_mg", lambda _: "not a number"
    )
    meds["daily_dose_mg"] = dose
    meds["drug"] = meds.drug.str.lower()
    _refuse_first(
        meds.end_date.notna() & (meds.end_date < meds.start_date),
        path,
        "end_date",
        lambda _: "before start_date",
    )
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


WINDOW_DAYS = 365
# How drugs are grouped when counted; anything else is counted as written.
DRUG_CLASS = {
    "prednisone": "prednisone",
    "prednisolone": "prednisone",
    "methylprednisolone": "prednisone",
    "mmf": "mmf",
    "mycophenolate": "mmf",
    "mycophenolate mofetil": "mmf",
    "mycophenolic acid": "mmf",
    "tacrolimus": "cni",
    "cyclosporine": "cni",
    "ciclosporin": "cni",
    "cyclosporin": "cni",
    "cni": "cni",
}


def drug_class(drug: str) -> str:
    return DRUG_CLASS.get(drug.strip().lower(), drug.strip().lower())


def drugs_on(meds: pd.DataFrame, patient_id: str, day: pd.Timestamp) -> set[str]:
    """Drug classes a patient takes on a date (interval ends are inclusive, blank = ongoing)."""
    m = meds[meds.patient_id == patient_id]
    on = (m.start_date <= day) & (m.end_date.isna() | (m.end_date >= day))
    return {drug_class(d) for d in m.drug[on]}


def cumulative_dose_mg(
    meds: pd.DataFrame, patient_id: str, start: pd.Timestamp, end: pd.Timestamp
) -> float:
    """Prednisone-class dose summed day by day over [start, end) from the dose intervals."""
    m = meds[(meds.patient_id == patient_id) & (meds.drug.map(drug_class) == "prednisone")]
    total = 0.0
    for r in m.itertuples():
        first = max(r.start_date, start)
        last_exclusive = min(
            (r.end_date if pd.notna(r.end_date) else end) + pd.Timedelta(days=1), end
        )
        days = (last_exclusive - first).days
        if days > 0 and pd.notna(r.daily_dose_mg):
            total += days * float(r.daily_dose_mg)
    return total


def patient_windows(clinical: ClinicalData) -> pd.DataFrame:
    """Per patient: the 12 months before the first infusion and the 12 months after,
    the after-window censored at last_follow_up_date (that day included).

    Columns: window lengths (days), relapses and annualised rates per window, time to first
    relapse and event flag per window, drugs and their number at baseline (infusion day) and
    at +12 months (NaN when follow-up ends earlier), cumulative prednisone per window (mg,
    mg/kg with weight_kg, mg/m2 with weight_kg and height_cm by Mosteller's formula).
    """
    rows = []
    p = clinical.patients
    for r in p.itertuples():
        infusion = r.first_infusion_date
        before_start = infusion - pd.Timedelta(days=WINDOW_DAYS)
        # Exclusive end: the last follow-up day was observed, so a relapse recorded that day
        # counts (the lost patient's window is shortened, not its last day dropped).
        after_end = min(
            infusion + pd.Timedelta(days=WINDOW_DAYS),
            r.last_follow_up_date + pd.Timedelta(days=1),
        )
        after_days = (after_end - infusion).days
        rel = clinical.relapses.relapse_date[clinical.relapses.patient_id == r.patient_id]
        before = sorted(d for d in rel if before_start <= d < infusion)
        after = sorted(d for d in rel if infusion <= d < after_end)
        at_12m = infusion + pd.Timedelta(days=WINDOW_DAYS)
        followed_to_12m = r.last_follow_up_date >= at_12m
        drugs_bl = drugs_on(clinical.medications, r.patient_id, infusion)
        drugs_12 = drugs_on(clinical.medications, r.patient_id, at_12m) if followed_to_12m else None
        pred_before = cumulative_dose_mg(clinical.medications, r.patient_id, before_start, infusion)
        pred_after = cumulative_dose_mg(clinical.medications, r.patient_id, infusion, after_end)
        row = {
            "patient_id": r.patient_id,
            "group": r.group,
            "before_days": WINDOW_DAYS,
            "after_days": after_days,
            "relapses_before": len(before),
            "relapses_after": len(after),
            # Per 365 days of observation, so a shortened window is not read as fewer relapses.
            "relapse_rate_before": len(before) * 365 / WINDOW_DAYS,
            "relapse_rate_after": len(after) * 365 / after_days if after_days else np.nan,
            "time_to_relapse_before": (before[0] - before_start).days if before else WINDOW_DAYS,
            "relapse_before": bool(before),
            "time_to_relapse_after": (after[0] - infusion).days if after else after_days,
            "relapse_after": bool(after),
            "drugs_baseline": ";".join(sorted(drugs_bl)),
            "drugs_12m": ";".join(sorted(drugs_12)) if drugs_12 is not None else None,
            "n_drugs_baseline": len(drugs_bl),
            "n_drugs_12m": len(drugs_12) if drugs_12 is not None else np.nan,
            "prednisone_mg_before": pred_before,
            "prednisone_mg_after": pred_after,
            "prednisone_mg_per_year_before": pred_before * 365 / WINDOW_DAYS,
            "prednisone_mg_per_year_after": pred_after * 365 / after_days if after_days else np.nan,
        }
        weight = _number(getattr(r, "weight_kg", None))
        height = _number(getattr(r, "height_cm", None))
        if weight:
            row["prednisone_mg_per_kg_before"] = pred_before / weight
            row["prednisone_mg_per_kg_after"] = pred_after / weight
        if weight and height:
            bsa = float(np.sqrt(weight * height / 3600.0))  # Mosteller
            row["prednisone_mg_per_m2_before"] = pred_before / bsa
            row["prednisone_mg_per_m2_after"] = pred_after / bsa
        rows.append(row)
    return pd.DataFrame(rows)


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) and number > 0 else None
