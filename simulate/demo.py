"""A realistic demo study with per-event ground truth.

Events are simulated as cells of known types: each type has a scatter profile and a median
expression per marker (log-normal spread). True fluorochrome signal is mixed into detectors by
a spillover matrix (written to $SPILLOVER), then photon (Poisson-like) and electronic noise are
added, so compensation leaves the spreading error real data have. Debris, doublets, monocytes
and saturated events surround the lymphocytes. Children's B cells (total and memory) fall at
1-3 months and their Tregs rise up to 6 months; adults do not change.

The ground truth (one type label per event, and true counts per canonical population) is kept
in ``STUDY/truth/`` so tests and benchmarks can measure gating accuracy.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from simulate._study import save_truth, spillover_keyword, spillover_matrix, start_study
from simulate.fcs_writer import write_fcs
from stats.plan import AnalysisPlan

RANGE = 262144.0
NEG = 80.0  # autofluorescence level of an unstained cell, in detector units

# Detector (PnN), fluorochrome and marker per panel, as on a BD instrument.
PANEL_CHANNELS: dict[str, list[tuple[str, str, str]]] = {
    "BCELL": [
        ("FITC-A", "FITC", "IgD"),
        ("PE-A", "PE", "CD24"),
        ("PerCP-Cy5-5-A", "PerCP-Cy5.5", "CD27"),
        ("PE-Cy7-A", "PE-Cy7", "CD19"),
        ("APC-A", "APC", "CD38"),
        ("V500-A", "V500", "CD45"),
        ("BV421-A", "BV421", "IgM"),
    ],
    "TREG": [
        ("FITC-A", "FITC", "CD45RA"),
        ("PE-A", "PE", "CD25"),
        ("PerCP-Cy5-5-A", "PerCP-Cy5.5", "CD4"),
        ("PE-Cy7-A", "PE-Cy7", "CD127"),
        ("APC-A", "APC", "HLA-DR"),
        ("APC-H7-A", "APC-H7", "CD3"),
        ("V500-A", "V500", "CD45"),
    ],
}
# Second vendor's detector names (Cytek-style), used by the harder benchmark studies.
VENDOR_DETECTORS = {
    "FITC": "B2-A",
    "PE": "YG1-A",
    "PerCP-Cy5.5": "B4-A",
    "PE-Cy7": "YG5-A",
    "APC": "R1-A",
    "APC-H7": "R3-A",
    "V500": "V7-A",
    "BV421": "V3-A",
}
# Fraction of a fluorochrome's signal seen in another fluorochrome's detector.
SPILLOVER_PAIRS = {
    ("FITC", "PE"): 0.22,
    ("PE", "FITC"): 0.015,
    ("PE", "PerCP-Cy5.5"): 0.06,
    ("PE", "PE-Cy7"): 0.025,
    ("PerCP-Cy5.5", "PE-Cy7"): 0.12,
    ("PE-Cy7", "PerCP-Cy5.5"): 0.01,
    ("APC", "APC-H7"): 0.09,
    ("APC-H7", "APC"): 0.03,
    ("APC", "PerCP-Cy5.5"): 0.02,
    ("V500", "FITC"): 0.04,
    ("BV421", "V500"): 0.14,
}

# Cell types: scatter profile and median marker expression (detector units before spillover).
SCATTER = {  # FSC-A median, FSC-A sd, SSC-A median, SSC log10 sd
    "lymph": (60000.0, 7000.0, 12000.0, 0.10),
    "mono": (95000.0, 11000.0, 40000.0, 0.09),
    "debris": (9000.0, 5000.0, 5000.0, 0.35),
}
B_TYPES: dict[str, tuple[str, dict[str, float]]] = {
    "monocyte": ("mono", {"CD45": 9000, "CD38": 2500}),
    "non_b_lymphocyte": ("lymph", {"CD45": 20000, "CD38": 1200, "CD27": 1500}),
    "transitional": (
        "lymph",
        {"CD45": 20000, "CD19": 15000, "CD24": 40000, "CD38": 22000, "IgD": 15000, "IgM": 30000},
    ),
    "naive": (
        "lymph",
        {"CD45": 20000, "CD19": 14000, "CD24": 9000, "CD38": 2500, "IgD": 16000, "IgM": 9000},
    ),
    "igm_memory": (
        "lymph",
        {
            "CD45": 20000,
            "CD19": 15000,
            "CD24": 20000,
            "CD38": 700,
            "CD27": 9000,
            "IgD": 7000,
            "IgM": 20000,
        },
    ),
    "switched_memory": (
        "lymph",
        {"CD45": 20000, "CD19": 15000, "CD24": 18000, "CD38": 700, "CD27": 9000},
    ),
    "other_memory": (
        "lymph",
        {"CD45": 20000, "CD19": 15000, "CD24": 18000, "CD38": 700, "CD27": 9000, "IgM": 20000},
    ),
    "double_negative": ("lymph", {"CD45": 20000, "CD19": 15000, "CD24": 9000, "CD38": 1000}),
    "plasmablast": (
        "lymph",
        {"CD45": 15000, "CD19": 6000, "CD38": 90000, "CD27": 35000, "IgM": 400},
    ),
}
T_TYPES: dict[str, tuple[str, dict[str, float]]] = {
    "monocyte": ("mono", {"CD45": 9000, "CD4": 1500, "HLA-DR": 20000}),
    "non_t_lymphocyte": ("lymph", {"CD45": 20000, "HLA-DR": 8000, "CD45RA": 12000}),
    "cd8_t": ("lymph", {"CD45": 20000, "CD3": 15000, "CD127": 4000, "CD45RA": 9000}),
    "cd4_naive_conv": (
        "lymph",
        {"CD45": 20000, "CD3": 15000, "CD4": 12000, "CD25": 200, "CD127": 7000, "CD45RA": 15000},
    ),
    "cd4_memory_conv": (
        "lymph",
        {"CD45": 20000, "CD3": 15000, "CD4": 12000, "CD25": 900, "CD127": 6000},
    ),
    "cd4_activated_cd127lo": (
        "lymph",
        {"CD45": 20000, "CD3": 15000, "CD4": 12000, "CD25": 150, "CD127": 300, "HLA-DR": 3000},
    ),
    "treg_naive": (
        "lymph",
        {"CD45": 20000, "CD3": 15000, "CD4": 12000, "CD25": 9000, "CD127": 350, "CD45RA": 12000},
    ),
    "treg_memory_hladr_neg": (
        "lymph",
        {"CD45": 20000, "CD3": 15000, "CD4": 12000, "CD25": 11000, "CD127": 350},
    ),
    "treg_memory_hladr_pos": (
        "lymph",
        {"CD45": 20000, "CD3": 15000, "CD4": 12000, "CD25": 12000, "CD127": 350, "HLA-DR": 6000},
    ),
}
# Canonical population -> (parent, cell types that truly belong to it).
B_TRUTH: dict[str, tuple[str, set[str]]] = {
    "lymphocytes": ("qc_passed", set(B_TYPES) - {"monocyte"}),
    "cd19_b": ("lymphocytes", set(B_TYPES) - {"monocyte", "non_b_lymphocyte"}),
    "transitional_b": ("cd19_b", {"transitional"}),
    "naive_b": ("cd19_b", {"naive"}),
    "memory_b": ("cd19_b", {"igm_memory", "switched_memory", "other_memory"}),
    "igm_memory_b": ("memory_b", {"igm_memory"}),
    "switched_memory_b": ("memory_b", {"switched_memory"}),
    "plasmablasts": ("cd19_b", {"plasmablast"}),
}
T_TRUTH: dict[str, tuple[str, set[str]]] = {
    "lymphocytes": ("qc_passed", set(T_TYPES) - {"monocyte"}),
    "t_cells": ("lymphocytes", set(T_TYPES) - {"monocyte", "non_t_lymphocyte"}),
    "cd4_t": ("t_cells", set(T_TYPES) - {"monocyte", "non_t_lymphocyte", "cd8_t"}),
    "treg": ("cd4_t", {"treg_naive", "treg_memory_hladr_neg", "treg_memory_hladr_pos"}),
    "memory_treg": ("treg", {"treg_memory_hladr_neg", "treg_memory_hladr_pos"}),
    "hladr_memory_treg": ("memory_treg", {"treg_memory_hladr_pos"}),
}
LABELS = ["debris", "doublet", *sorted(set(B_TYPES) | set(T_TYPES))]

VISITS = {"BL": 0, "M1": 1, "M3": 3, "M6": 6, "M9": 9, "M12": 12}
# Children only: multiplicative change of a frequency against baseline, by visit.
CHILD_B_EFFECT = {"BL": 1.0, "M1": 0.45, "M3": 0.6, "M6": 0.85, "M9": 1.0, "M12": 1.0}
CHILD_MEMORY_EFFECT = {"BL": 1.0, "M1": 0.55, "M3": 0.6, "M6": 0.85, "M9": 0.95, "M12": 1.0}
CHILD_TREG_EFFECT = {"BL": 1.0, "M1": 1.6, "M3": 1.5, "M6": 1.3, "M9": 1.1, "M12": 1.0}
MISSED_VISITS = {("P03", "M9"), ("P07", "M6"), ("P12", "M1")}
LOST_PATIENT, LOST_AFTER_MONTHS = "P14", 8
FILENAME_PATTERN = r"^(?P<patient>P[0-9]+)_(?P<visit>[A-Z0-9]+)_(?P<panel>[A-Z]+)\.[fF][cC][sS]$"


@dataclass(frozen=True)
class DemoOptions:
    """What the demo study looks like; the defaults finish in a few minutes on 2 cores."""

    events_per_file: int = 30000
    seed: int = 20261125
    gain_drift: float = 0.0  # +/- share of per-visit gain change on every detector
    naming_styles: tuple[str, ...] = ("marker_fluor",)  # marker_fluor|fluor_marker|marker|pnn
    vendors: tuple[str, ...] = ("bd",)  # bd | cytek (detector names)
    integer_16bit_share: float = 0.0
    big_endian_share: float = 0.0
    clog_share: float = 0.0
    include_bad_files: bool = True


def population_frequencies(
    panel: str, group: str, visit: str, patient_rng, visit_rng
) -> dict[str, float]:
    """Cell-type shares among all events for one sample."""

    def vary(value: float, sd: float, rng) -> float:
        return value * float(np.exp(rng.normal(0, sd)))

    child = group == "child"
    shares: dict[str, float] = {"debris": 0.07, "doublet": 0.035, "monocyte": 0.16}
    lymph = 1.0 - sum(shares.values())
    if panel == "BCELL":
        b = vary(0.14 if child else 0.10, 0.25, patient_rng)
        memory = vary(0.16 if child else 0.27, 0.2, patient_rng)
        if child:
            b *= CHILD_B_EFFECT[visit]
            memory *= CHILD_MEMORY_EFFECT[visit]
        b, memory = vary(b, 0.08, visit_rng), vary(memory, 0.08, visit_rng)
        transitional = vary(0.09 if child else 0.04, 0.2, visit_rng)
        plasmablast = vary(0.025, 0.25, visit_rng)
        dn = vary(0.045, 0.2, visit_rng)
        within_b = {
            "transitional": transitional,
            "plasmablast": plasmablast,
            "double_negative": dn,
            "igm_memory": memory * 0.45,
            "switched_memory": memory * 0.48,
            "other_memory": memory * 0.07,
        }
        within_b["naive"] = 1.0 - sum(within_b.values())
        shares["non_b_lymphocyte"] = lymph * (1 - b)
        shares.update({k: lymph * b * v for k, v in within_b.items()})
    else:
        t = vary(0.70, 0.06, patient_rng)
        cd4 = vary(0.62, 0.1, patient_rng)
        treg = vary(0.055 if child else 0.06, 0.15, patient_rng)
        if child:
            treg *= CHILD_TREG_EFFECT[visit]
        treg = vary(treg, 0.08, visit_rng)
        memory = vary(0.65, 0.1, visit_rng)
        hladr = vary(0.25, 0.2, visit_rng)
        activated = 0.03
        cd4_share = lymph * t * cd4
        shares["non_t_lymphocyte"] = lymph * (1 - t)
        shares["cd8_t"] = lymph * t * (1 - cd4)
        shares["treg_naive"] = cd4_share * treg * (1 - memory)
        shares["treg_memory_hladr_pos"] = cd4_share * treg * memory * hladr
        shares["treg_memory_hladr_neg"] = cd4_share * treg * memory * (1 - hladr)
        shares["cd4_activated_cd127lo"] = cd4_share * activated
        conv = cd4_share * (1 - treg - activated)
        shares["cd4_naive_conv"] = conv * 0.45
        shares["cd4_memory_conv"] = conv * 0.55
    total = sum(shares.values())
    return {k: v / total for k, v in shares.items()}


def simulate_sample(
    panel: str,
    shares: dict[str, float],
    n_events: int,
    rng: np.random.Generator,
    *,
    gains: np.ndarray | None = None,
    clog: bool = False,
) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    """Simulate one tube. Returns events (FSC-A, FSC-H, SSC-A, detectors..., Time), PnN
    names, per-event label codes (index into LABELS) and the spillover matrix."""
    channels = PANEL_CHANNELS[panel]
    markers = [m for _, _, m in channels]
    types = B_TYPES if panel == "BCELL" else T_TYPES
    names = list(shares)
    counts = rng.multinomial(n_events, [shares[k] for k in names])
    n_doublets = counts[names.index("doublet")]
    n_debris = counts[names.index("debris")]
    cell_names = [k for k in names if k not in ("debris", "doublet")]
    cell_p = np.array([shares[k] for k in cell_names])
    cell_p /= cell_p.sum()
    # Singlets keep the exact multinomial counts; each doublet joins two cells of the mixture.
    singles = np.concatenate([np.full(counts[names.index(k)], i) for i, k in enumerate(cell_names)])
    partners = rng.choice(len(cell_names), size=2 * n_doublets, p=cell_p)

    def cells(code_array: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m = code_array.size
        fsc = np.empty(m)
        ssc = np.empty(m)
        expr = np.empty((m, len(markers)))
        for i, k in enumerate(cell_names):
            sel = code_array == i
            c = int(sel.sum())
            if not c:
                continue
            scatter, levels = types[k]
            f_med, f_sd, s_med, s_sd = SCATTER[scatter]
            fsc[sel] = rng.normal(f_med, f_sd, c)
            ssc[sel] = s_med * 10 ** rng.normal(0, s_sd, c)
            for j, marker in enumerate(markers):
                level = levels.get(marker, NEG)
                spread = 0.22 if level > NEG else 0.3
                expr[sel, j] = level * 10 ** rng.normal(0, spread, c)
        return fsc, ssc, expr

    fsc_s, ssc_s, expr_s = cells(singles)
    ratio_s = rng.normal(1.08, 0.03, singles.size)
    fh_s = fsc_s / ratio_s
    fa, fb = cells(partners[0::2]), cells(partners[1::2])
    fsc_d = fa[0] + fb[0]
    fh_d = np.maximum(fa[0], fb[0]) * rng.normal(1.05, 0.05, n_doublets)
    ssc_d = fa[1] + fb[1]
    expr_d = fa[2] + fb[2]
    f_med, f_sd, s_med, s_sd = SCATTER["debris"]
    fsc_x = np.abs(rng.gamma(2.0, f_med / 2.0, n_debris))
    ssc_x = s_med * 10 ** rng.normal(0, s_sd, n_debris)
    fh_x = fsc_x / rng.normal(1.1, 0.08, n_debris)
    expr_x = NEG * 10 ** rng.normal(0, 0.4, (n_debris, len(markers)))

    fsc = np.concatenate([fsc_s, fsc_d, fsc_x])
    fsch = np.concatenate([fh_s, fh_d, fh_x])
    ssc = np.concatenate([ssc_s, ssc_d, ssc_x])
    expr = np.vstack([expr_s, expr_d, expr_x])
    label_of = {k: LABELS.index(k) for k in cell_names}
    labels = np.concatenate(
        [
            np.array([label_of[cell_names[c]] for c in singles], dtype=np.uint8),
            np.full(n_doublets, LABELS.index("doublet"), dtype=np.uint8),
            np.full(n_debris, LABELS.index("debris"), dtype=np.uint8),
        ]
    )
    spill = spillover_matrix([f for _, f, _ in channels], SPILLOVER_PAIRS)
    detector = expr @ spill
    if gains is not None:
        detector *= gains[None, :]
    # Photon-counting noise grows with signal; electronic noise does not.
    detector += rng.normal(0, 1, detector.shape) * np.sqrt(6.0 * np.maximum(detector, 0))
    detector += rng.normal(0, 25.0, detector.shape)
    time = np.sort(rng.uniform(0, 60000.0, labels.size))
    order = rng.permutation(labels.size)
    events = np.column_stack([fsc, fsch, ssc, detector])[order]
    labels = labels[order]
    if clog:
        # A partial clog: for 6% of the run, fewer events pass and all signals sag.
        start = rng.uniform(0.2, 0.7) * 60000.0
        in_clog = (time >= start) & (time < start + 3600.0)
        events[in_clog, 3:] *= 0.35
        events[in_clog, :3] *= 0.8
    events = np.column_stack([events, time])
    events[:, :-1] = np.clip(events[:, :-1], -RANGE, RANGE - 1)
    # A few saturated events, as every instrument produces.
    sat = rng.choice(labels.size, size=max(1, labels.size // 500), replace=False)
    events[sat, rng.integers(0, 3 + len(markers), sat.size)] = RANGE - 1
    pnn = ["FSC-A", "FSC-H", "SSC-A", *[d for d, _, _ in channels], "Time"]
    return events, pnn, labels, spill


def truth_counts(panel: str, labels: np.ndarray) -> list[dict]:
    """True count and parent count of every canonical population from event labels."""
    table = B_TRUTH if panel == "BCELL" else T_TRUTH
    names = np.array(LABELS)[labels]
    qc_passed = ~np.isin(names, ["debris", "doublet"])
    members = {"qc_passed": qc_passed}
    rows = []
    for population, (parent, kinds) in table.items():
        members[population] = np.isin(names, sorted(kinds))
        count, parent_count = int(members[population].sum()), int(members[parent].sum())
        rows.append(
            {
                "population": population,
                "parent": parent,
                "count": count,
                "parent_count": parent_count,
                "pct_parent": 100.0 * count / parent_count if parent_count else np.nan,
            }
        )
    return rows


def channel_label(style: str, marker: str, fluor: str) -> str:
    return {
        "marker_fluor": f"{marker} {fluor}",
        "fluor_marker": f"{fluor.replace('.', '-')}-{marker}",
        "marker": marker,
        "pnn": "",
    }[style]


def simulate_study(root: str | Path, options: DemoOptions = DemoOptions()) -> Path:
    """Write study.yaml, clinical CSVs, inbox FCS files and truth/ for the demo study."""
    rng = np.random.default_rng(options.seed)
    study = {
        "study": "MSC-INS phase I (demo)",
        "visits": VISITS,
        "baseline": "BL",
        "filename_pattern": FILENAME_PATTERN,
        "panels": {"BCELL": "bcell", "TREG": "treg"},
        "absolute_counts": "dual_platform",
        "schedule": "0 2 * * *",
        # The trial's analysis plan, every key written out (these are also the defaults).
        "analysis": AnalysisPlan().model_dump(mode="json"),
    }
    root = start_study(root, study, ("inbox", "clinical", "truth"))
    patients, visits, relapses, meds = _clinical_tables(rng)
    patients.to_csv(root / "clinical" / "patients.csv", index=False)
    visits.to_csv(root / "clinical" / "visits.csv", index=False)
    relapses.to_csv(root / "clinical" / "relapses.csv", index=False)
    meds.to_csv(root / "clinical" / "medications.csv", index=False)

    truth_rows = []
    visit_set = {(r.patient_id, r.visit) for r in visits.itertuples()}
    group_of = dict(zip(patients.patient_id, patients.group, strict=True))
    file_index = 0
    for patient_id in patients.patient_id:
        patient_rng = np.random.default_rng([options.seed, int(patient_id[1:])])
        patient_state = patient_rng.bit_generator.state
        for visit in VISITS:
            if (patient_id, visit) not in visit_set:
                continue
            for panel in ("BCELL", "TREG"):
                patient_rng.bit_generator.state = patient_state  # same patient draws per panel
                visit_rng = np.random.default_rng(
                    [options.seed, int(patient_id[1:]), VISITS[visit], 7 if panel == "BCELL" else 9]
                )
                shares = population_frequencies(
                    panel, group_of[patient_id], visit, patient_rng, visit_rng
                )
                sample_id = f"{patient_id}_{visit}_{panel}"
                row = _write_sample(root, sample_id, panel, shares, options, visit_rng, file_index)
                truth_rows.extend(row)
                file_index += 1
    pd.DataFrame(truth_rows).to_csv(root / "truth" / "populations.csv", index=False)
    if options.include_bad_files:
        _write_bad_files(root, rng)
    return root


def _write_sample(root, sample_id, panel, shares, options, rng, file_index) -> list[dict]:
    channels = PANEL_CHANNELS[panel]
    gains = None
    if options.gain_drift:
        gains = 1.0 + rng.uniform(-options.gain_drift, options.gain_drift, len(channels))
    clog = bool(options.clog_share) and rng.uniform() < options.clog_share
    events, pnn, labels, spill = simulate_sample(
        panel, shares, options.events_per_file, rng, gains=gains, clog=clog
    )
    style = options.naming_styles[file_index % len(options.naming_styles)]
    vendor = options.vendors[file_index % len(options.vendors)]
    detectors = [VENDOR_DETECTORS[f] if vendor == "cytek" else d for d, f, _ in channels]
    pnn = ["FSC-A", "FSC-H", "SSC-A", *detectors, "Time"]
    pns = ["", "", "", *[channel_label(style, m, f) for _, f, m in channels], ""]
    if style == "pnn":  # marker only in $PnN, as some exports do
        pnn = ["FSC-A", "FSC-H", "SSC-A", *[m for _, _, m in channels], "Time"]
    spill_text = spillover_keyword(pnn[3 : 3 + len(channels)], spill)
    keywords = {
        "$CYT": "Demo LSRFortessa" if vendor == "bd" else "Demo Aurora",
        "$SPILLOVER": spill_text,
        "$TIMESTEP": "0.01",
        "$SRC": sample_id,
        "$FIL": f"{sample_id}.fcs",
    }
    datatype, bits, pnr, byteorder = "F", 32, [RANGE] * len(pnn), "<"
    if options.big_endian_share and rng.uniform() < options.big_endian_share:
        byteorder = ">"
    if options.integer_16bit_share and rng.uniform() < options.integer_16bit_share:
        # A 16-bit instrument: same signal on a 0..65535 scale, integers.
        events = events.copy()
        events[:, :-1] = np.clip(events[:, :-1] / 4.0, 0, 65535)
        events[:, -1] = np.clip(events[:, -1], 0, 65535)
        datatype, bits, pnr = "I", 16, [65536.0] * len(pnn)
    write_fcs(
        root / "inbox" / f"{sample_id}.fcs",
        events,
        pnn,
        pns,
        keywords,
        datatype=datatype,
        bits=bits,
        pnr=pnr,
        byteorder=byteorder,
    )
    save_truth(root, sample_id, labels, LABELS)
    return [{"sample_id": sample_id, "panel": panel, **r} for r in truth_counts(panel, labels)]


def _write_bad_files(root: Path, rng: np.random.Generator) -> None:
    """Inputs a lab really produces, each to be quarantined with its reason."""
    inbox = root / "inbox"
    # A visit that is not in the schedule.
    events, pnn, _, _ = simulate_sample(
        "BCELL", population_frequencies("BCELL", "child", "BL", rng, rng), 5000, rng
    )
    write_fcs(inbox / "P02_M2_BCELL.fcs", events, pnn)
    # A copy interrupted half-way (P03 missed M9, so the name is free).
    whole = (inbox / "P01_BL_BCELL.fcs").read_bytes()
    (inbox / "P03_M9_BCELL.fcs").write_bytes(whole[: len(whole) // 2])
    # Not an FCS file at all, under a free sample name (P03 missed M9). Under a taken one
    # (beside P05_M3_TREG.fcs) it would be a second file for one sample: both are refused.
    (inbox / "P03_M9_TREG.FCS").write_text("Exported workspace notes, not cytometry data\n")


def _clinical_tables(rng: np.random.Generator):
    """Patients, visits, relapses and medications for the demo cohort."""
    patients, visits, relapses, meds = [], [], [], []
    base = dt.date(2024, 1, 15)
    for i in range(1, 17):
        pid = f"P{i:02d}"
        child = i <= 10
        infusion = base + dt.timedelta(days=int(27 * (i - 1) + rng.integers(0, 10)))
        age_years = int(rng.integers(4, 16)) if child else int(rng.integers(18, 30))
        birth = infusion - dt.timedelta(days=365 * age_years + int(rng.integers(0, 300)))
        follow_up_months = LOST_AFTER_MONTHS if pid == LOST_PATIENT else 12
        last = infusion + dt.timedelta(days=int(30.44 * follow_up_months) + 10)
        weight = round(
            float(rng.normal(15 + 3.2 * age_years, 3)) if child else float(rng.normal(68, 9)), 1
        )
        patients.append(
            {
                "patient_id": pid,
                "group": "child" if child else "adult",
                "sex": "F" if rng.uniform() < 0.45 else "M",
                "birth_date": birth.isoformat(),
                "first_infusion_date": infusion.isoformat(),
                "last_follow_up_date": last.isoformat(),
                "weight_kg": weight,
            }
        )
        for visit, month in VISITS.items():
            if (pid, visit) in MISSED_VISITS or (pid == LOST_PATIENT and month > follow_up_months):
                continue
            jitter = int(rng.integers(-4, 5))
            if month == 0:  # baseline: drawn 1-5 days before the infusion, never after it
                jitter = -abs(jitter) - 1
            day = infusion + dt.timedelta(days=int(round(30.44 * month)) + jitter)
            lymph = rng.normal(2300 if child else 1700, 350)
            visits.append(
                {
                    "patient_id": pid,
                    "visit": visit,
                    "visit_date": day.isoformat(),
                    "lymphocytes_per_ul": round(float(lymph)),
                }
            )
        # Relapse rates per year: children improve after infusion, adults do not.
        rate_before = rng.uniform(2.0, 4.0)
        rate_after = rate_before * (0.3 if child else 1.0)
        window_after = (last - infusion).days
        relapse_dates = []
        for start, length, rate in (
            (infusion - dt.timedelta(days=365), 365, rate_before),
            (infusion + dt.timedelta(days=20), window_after - 20, rate_after),
        ):
            n = rng.poisson(rate * length / 365)
            days = np.sort(
                rng.choice(np.arange(5, max(length - 5, 6)), size=min(n, 6), replace=False)
            )
            # Relapses closer than 45 days apart are one relapse clinically.
            kept = [d for k, d in enumerate(days) if k == 0 or d - days[k - 1] >= 45]
            relapse_dates.extend(start + dt.timedelta(days=int(d)) for d in kept)
        relapses.extend({"patient_id": pid, "relapse_date": d.isoformat()} for d in relapse_dates)
        meds.extend(_medications(pid, child, infusion, last, relapse_dates, weight, rng))
    return (
        pd.DataFrame(patients),
        pd.DataFrame(visits),
        pd.DataFrame(relapses, columns=["patient_id", "relapse_date"]),
        pd.DataFrame(meds),
    )


def _medications(pid, child, infusion, last, relapse_dates, weight, rng) -> list[dict]:
    """Prednisone as non-overlapping constant-dose intervals; MMF and a CNI as courses."""
    start = infusion - dt.timedelta(days=400)
    end = last
    days = (end - start).days + 1
    dose = np.zeros(days)
    maintenance = round(0.3 * weight / 2.5) * 2.5 if child else 10.0
    before_end = (infusion - start).days
    dose[:before_end] = maintenance
    # Children taper maintenance steroids after infusion; adults stay on.
    dose[before_end:] = maintenance * (0.4 if child else 1.0)
    for rel in relapse_dates:
        k = (rel - start).days
        full = min(60.0, round(2.0 * weight / 5) * 5)
        dose[k : k + 28] = np.maximum(dose[k : k + 28], full)
        dose[k + 28 : k + 56] = np.maximum(dose[k + 28 : k + 56], full / 2)
    rows = []
    k = 0
    while k < days:
        j = k
        while j + 1 < days and dose[j + 1] == dose[k]:
            j += 1
        if dose[k] > 0:
            rows.append(
                {
                    "patient_id": pid,
                    "drug": "prednisone",
                    "start_date": (start + dt.timedelta(days=k)).isoformat(),
                    "end_date": (start + dt.timedelta(days=j)).isoformat(),
                    "daily_dose_mg": float(dose[k]),
                }
            )
        k = j + 1
    mmf_end = infusion + dt.timedelta(days=int(rng.integers(60, 200))) if child else end
    rows.append(
        {
            "patient_id": pid,
            "drug": "mmf",
            "start_date": start.isoformat(),
            "end_date": mmf_end.isoformat(),
            "daily_dose_mg": 1200.0 if child else 2000.0,
        }
    )
    if rng.uniform() < (0.6 if child else 0.5):
        cni_end = infusion + dt.timedelta(days=int(rng.integers(30, 120))) if child else end
        rows.append(
            {
                "patient_id": pid,
                "drug": "tacrolimus",
                "start_date": start.isoformat(),
                "end_date": cni_end.isoformat(),
                "daily_dose_mg": 4.0,
            }
        )
    return rows


# Populations of each panel token and the cell types truly in them (as in second_site.TRUTH).
TRUTH = {"BCELL": B_TRUTH, "TREG": T_TRUTH}
