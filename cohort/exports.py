"""The study's result tables (results/*.csv), derived from the store and the clinical data."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from cohort.clinical import ClinicalData
from cohort.spreadsheet import safe_frame
from cohort.store import Store
from cohort.study import Study
from gating.records import NEEDS_REVIEW

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
    "missing_markers",  # set where the tube cannot measure the population (count empty)
    "population_flags",  # this row's own: low_count, not_measured, patient_not_in_patients_csv
]
MFI_COLUMNS = [
    "sample_id",
    "patient_id",
    "visit",
    "panel",
    "population",
    "marker",
    "channel",
    "median",
    "median_logicle",
    "n",
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
    "needs_review",
    "not_measured",
    "qc_flags",  # every flag of the sample (QC, placement, reader repairs)
]


def samples_table(store: Store, study: Study | None = None) -> pd.DataFrame:
    """One row per file seen, with its status and reason, whether a person must review it
    before release, and the populations it could not measure (with the missing markers).

    With the ``study``, a file that never became a sample (quarantined, failed) is placed by
    its name: patient, visit and panel, so a missing sample can say why it is missing."""
    files = store.files_frame()
    if study is not None:
        for i in files.index[files.sample_id.isna()]:
            name = study.parse_name(files.at[i, "file"])
            if not isinstance(name, str):
                files.loc[i, ["sample_id", "patient_id", "visit", "panel"]] = [
                    name.sample_id,
                    name.patient_id,
                    name.visit,
                    name.panel_token,
                ]
    flags = files.qc_flags.fillna("").str.split(";")
    files["needs_review"] = [
        (NEEDS_REVIEW in f) if status == "processed" else ""
        for f, status in zip(flags, files.status, strict=True)
    ]
    files["not_measured"] = [
        ";".join(x.removeprefix("not_measured:") for x in f if x.startswith("not_measured:"))
        for f in flags
    ]
    return files[SAMPLE_COLUMNS]


def mfi_table(store: Store) -> pd.DataFrame:
    """Median fluorescence per sample, population and marker (tidy), as FlowJo's table
    editor gives it: compensated channel units and the logicle value."""
    frame = store.current_medians()
    return frame[MFI_COLUMNS] if not frame.empty else pd.DataFrame(columns=MFI_COLUMNS)


def populations_table(
    store: Store,
    study: Study,
    clinical: ClinicalData | None,
    lymphocyte_counts: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Counts and percentages per sample and population; absolute counts when clinical
    lymphocyte counts are known (dual platform): from ``clinical``, or, when another clinical
    file is broken, from ``lymphocyte_counts`` (visits.csv checked alone)."""
    pops = store.current_populations()
    lost = store.current_not_measured()
    if not lost.empty:  # a row each, with empty counts, so the gap is visible, not silent
        pops = pd.concat([pops, lost], ignore_index=True).sort_values(["sample_id"], kind="stable")
    if pops.empty:
        return pd.DataFrame(columns=POPULATION_COLUMNS)
    pops["missing_markers"] = pops.get("missing_markers", pd.Series(index=pops.index)).fillna("")
    pops["month"] = pops.visit.map(study.visit_month)
    pops["pct_parent"] = 100.0 * pops["count"] / pops.parent_count.replace(0, np.nan)
    lymph = pops[pops.population == "lymphocytes"].set_index("sample_key")["count"]
    pops["pct_lymphocytes"] = 100.0 * pops["count"] / pops.sample_key.map(lymph).replace(0, np.nan)
    pops["cells_per_ul"] = np.nan
    # Sample-level flags live in samples.csv; a row keeps those about its own population.
    pops["population_flags"] = [
        ";".join(f for f in str(flags or "").split(";") if _about(f, population))
        for flags, population in zip(pops.qc_flags, pops.population, strict=True)
    ]
    if clinical is not None:
        # Clinical data often lag acquisitions: keep the sample, flag it, leave it out of stats.
        unknown = ~pops.patient_id.isin(clinical.patients.patient_id)
        pops.loc[unknown, "population_flags"] = [
            ";".join(filter(None, [flags, "patient_not_in_patients_csv"]))
            for flags in pops.loc[unknown, "population_flags"]
        ]
    visits = clinical.visits if clinical is not None else lymphocyte_counts
    if visits is not None and study.config.absolute_counts == "dual_platform":
        per_ul = visits.set_index(["patient_id", "visit"])["lymphocytes_per_ul"]
        keys = list(zip(pops.patient_id, pops.visit, strict=True))
        lymph_per_ul = np.array([per_ul.get(k, np.nan) for k in keys], dtype=float)
        pops["cells_per_ul"] = pops.pct_lymphocytes / 100.0 * lymph_per_ul
    return pops[POPULATION_COLUMNS]


def _about(flag: str, population: str) -> bool:
    """Whether a sample flag concerns one population (``low_count:POP<n``,
    ``not_measured:POP(MARKER)``)."""
    kind, _, rest = flag.partition(":")
    return kind in ("low_count", "not_measured") and re.split(r"[<(]", rest)[0] == population


def write_csv(frame: pd.DataFrame, path) -> None:
    """Write a table atomically with fixed float formatting, so reruns are byte-identical;
    text a spreadsheet would run as a formula (a patient id ``=HYPERLINK(...)``) is written
    with a leading apostrophe."""
    tmp = path.with_name(path.name + ".tmp")
    safe_frame(frame).to_csv(tmp, index=False, float_format="%.12g")
    tmp.replace(path)
