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
