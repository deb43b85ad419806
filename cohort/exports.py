"""The study's result tables (results/*.csv), derived from the store and the clinical data."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cohort.clinical import ClinicalData
from cohort.store import Store
from cohort.study import Study

POPULATION_COLUMNS = [
    "sample_id",
    "patient_id",
    "visit",
    "month",
    "panel",
    "population",
    "parent",
    "count",
    "parent_count",
    "pct_parent",
    "pct_lymphocytes",
    "cells_per_ul",
    "qc_flags",
]
SAMPLE_COLUMNS = [
    "file",
    "sha256",
    "sample_id",
    "patient_id",
    "visit",
    "panel",
    "status",
    "reason",
    "events",
    "processed_at",
]


def samples_table(store: Store) -> pd.DataFrame:
    """One row per file seen, with its status and reason."""
    return store.files_frame()[SAMPLE_COLUMNS]


def populations_table(store: Store, study: Study, clinical: ClinicalData | None) -> pd.DataFrame:
    """Counts and percentages per sample and population; absolute counts when clinical
    lymphocyte counts are known (dual platform)."""
    pops = store.current_populations()
    if pops.empty:
        return pd.DataFrame(columns=POPULATION_COLUMNS)
    pops["month"] = pops.visit.map(study.visit_month)
    pops["pct_parent"] = 100.0 * pops["count"] / pops.parent_count.replace(0, np.nan)
    lymph = pops[pops.population == "lymphocytes"].set_index("sample_key")["count"]
    pops["pct_lymphocytes"] = 100.0 * pops["count"] / pops.sample_key.map(lymph).replace(0, np.nan)
    pops["cells_per_ul"] = np.nan
    if clinical is not None:
        # Clinical data often lag acquisitions: keep the sample, flag it, leave it out of stats.
        unknown = ~pops.patient_id.isin(clinical.patients.patient_id)
        pops.loc[unknown, "qc_flags"] = [
            ";".join(filter(None, [flags, "patient_not_in_patients_csv"]))
            for flags in pops.loc[unknown, "qc_flags"]
        ]
    if clinical is not None and study.config.absolute_counts == "dual_platform":
        per_ul = clinical.visits.set_index(["patient_id", "visit"])["lymphocytes_per_ul"]
        keys = list(zip(pops.patient_id, pops.visit, strict=True))
        lymph_per_ul = np.array([per_ul.get(k, np.nan) for k in keys], dtype=float)
        pops["cells_per_ul"] = pops.pct_lymphocytes / 100.0 * lymph_per_ul
    return pops[POPULATION_COLUMNS]


def write_csv(frame: pd.DataFrame, path) -> None:
    """Write a table atomically with fixed float formatting, so reruns are byte-identical."""
    tmp = path.with_name(path.name + ".tmp")
    frame.to_csv(tmp, index=False, float_format="%.12g")
    tmp.replace(path)
