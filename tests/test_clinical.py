"""Clinical CSV validation: each error names file, line and column."""

from __future__ import annotations

import pandas as pd
import pytest

from cohort.clinical import ClinicalDataError, load_clinical

VISITS = ["BL", "M1", "M3", "M6", "M9", "M12"]


def _edit(folder, name, change):
    path = folder / "clinical" / name
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame = change(frame)
    frame.to_csv(path, index=False)


def test_demo_clinical_data_load(study_copy):
    data = load_clinical(study_copy / "clinical", VISITS)
    assert len(data.patients) == 16
    assert set(data.patients.group) == {"child", "adult"}
    assert "weight_kg" in data.patients  # extra columns are kept


@pytest.mark.parametrize(
    ("name", "change", "expected"),
    [
        (
            "patients.csv",
            lambda f: f.drop(columns="group"),
            "patients.csv: missing column(s) group",
        ),
        (
            "visits.csv",
            lambda f: f.assign(visit_date=f.visit_date.where(f.index != 3, "03/02/2024")),
            "visits.csv, line 5, column visit_date: '03/02/2024' is not a date",
        ),
        (
            "relapses.csv",
            lambda f: f.assign(patient_id=f.patient_id.where(f.index != 0, "P99")),
            "relapses.csv, line 2, column patient_id: unknown patient 'P99'",
        ),
        (
            "visits.csv",
            lambda f: f.assign(visit=f.visit.where(f.index != 1, "M2")),
            "visits.csv, line 3, column visit: 'M2' is not in the study schedule",
        ),
        (
            "patients.csv",
            lambda f: f.assign(group=f.group.where(f.index != 2, "teen")),
            "patients.csv, line 4, column group",
        ),
        (
            "visits.csv",
            lambda f: f.assign(
                lymphocytes_per_ul=f.lymphocytes_per_ul.where(f.index != 2, "-1800")
            ),
            "visits.csv, line 4, column lymphocytes_per_ul: '-1800' is not a possible",
        ),
        (
            "visits.csv",
            lambda f: f.assign(
                lymphocytes_per_ul=f.lymphocytes_per_ul.where(f.index != 2, "230000")
            ),
            "visits.csv, line 4, column lymphocytes_per_ul: '230000' is not a possible",
        ),
        (
            "patients.csv",
            lambda f: pd.concat([f, f.iloc[[3]]], ignore_index=True),
            "patients.csv, line 18, column patient_id: 'P04' appears twice",
        ),
        (
            "relapses.csv",
            lambda f: f.assign(relapse_date=f.relapse_date.where(f.index != 0, "1990-01-01")),
            "relapses.csv, line 2, column relapse_date: 1990-01-01 is before the patient's "
            "birth_date",
        ),
        (
            "relapses.csv",
            lambda f: f.assign(relapse_date=f.relapse_date.where(f.index != 0, "2031-01-01")),
            "relapses.csv, line 2, column relapse_date: 2031-01-01 is after the patient's "
            "last_follow_up_date",
        ),
    ],
)
def test_errors_name_file_line_column(study_copy, name, change, expected):
    _edit(study_copy, name, change)
    with pytest.raises(ClinicalDataError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        load_clinical(study_copy / "clinical", VISITS)


def test_overlapping_intervals_of_one_drug(study_copy):
    def overlap(frame):
        extra = frame[frame.drug == "mmf"].iloc[[0]].copy()
        return pd.concat([frame, extra], ignore_index=True)

    _edit(study_copy, "medications.csv", overlap)
    with pytest.raises(ClinicalDataError, match="overlaps the previous one"):
        load_clinical(study_copy / "clinical", VISITS)
