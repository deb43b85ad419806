"""A second simulated site, written independently of ``simulate.demo``, to test gating on data
shaped differently from the data the strategies were developed on.

What differs from the demo study, on purpose:

- **Population model.** Frequencies come from a tree of shares drawn per sample (Dirichlet
  around site-specific means), not from fixed type shares. Marker levels are log-normal per
  cell type with their own spreads, and some populations form *shoulders without valleys*:
  transitional B cells are the CD24-high CD38-high tail of the naive B cells (3-4 standard
  deviations apart on each marker, never a 1-D valley at their usual 5-15% share), memory
  Tregs smear down CD45RA from the naive ones, CD4 memory cells carry intermediate CD25.
  Granulocytes contaminate the preparation at high side scatter (CD24-bright, as real ones).
- **Instrument.** A CytoFLEX-like cytometer: detectors ``FL1-A`` .. ``FL8-A`` on a 2^20
  range, labels written ``CD19-ECD``, a scatter scale set per file between 0.6x and 1.6x of
  the reference on FSC and SSC independently (PMT voltages, area scaling), and no FSC-H:
  doublets show in FSC-W (two thirds of the files) or in SSC-H only (the rest).
- **Tubes.** The B tube has CD20 and no CD45, and a third of the B tubes carry no IgM; the
  T tube has CD8 besides the Treg markers.

The truth is kept as in the demo study: ``truth/SAMPLE.npz`` holds one label per event and
the label names; ``TRUTH`` maps each panel's populations to the cell types in them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulate._study import save_truth, spillover_keyword, spillover_matrix, start_study
from simulate.fcs_writer import write_fcs

FULL_SCALE = 1048576.0  # 2^20, as CytoFLEX files record
AUTOFLUORESCENCE = (2.0, 0.22)  # log10 median and spread of an unstained cell

# Detector, fluorochrome, marker per tube. IgM's detector is left out of IgM-free tubes.
TUBES: dict[str, list[tuple[str, str, str]]] = {
    "B": [
        ("FL1-A", "FITC", "IgD"),
        ("FL2-A", "PE", "CD24"),
        ("FL3-A", "ECD", "CD19"),
        ("FL4-A", "PC5.5", "CD27"),
        ("FL5-A", "PC7", "CD20"),
        ("FL6-A", "APC", "CD38"),
        ("FL7-A", "PB450", "IgM"),
    ],
    "T": [
        ("FL1-A", "FITC", "CD45RA"),
        ("FL2-A", "PE", "CD25"),
        ("FL3-A", "ECD", "CD3"),
        ("FL4-A", "PC5.5", "CD4"),
        ("FL5-A", "PC7", "CD127"),
        ("FL6-A", "APC", "HLA-DR"),
        ("FL8-A", "KO525", "CD8"),
    ],
}
SPILL = {  # share of a dye's signal in the next detectors
    ("FITC", "PE"): 0.18,
    ("PE", "ECD"): 0.30,
    ("ECD", "PC5.5"): 0.08,
    ("PE", "PC5.5"): 0.04,
    ("PC5.5", "PC7"): 0.10,
    ("APC", "PC5.5"): 0.03,
    ("PB450", "KO525"): 0.12,
    ("KO525", "FITC"): 0.02,
}

# Scatter per kind of cell at scale 1: FSC median and log10 spread, SSC median and log10 spread,
# as fractions of full scale.
SCATTER = {
    "lymph": (0.20, 0.045, 0.035, 0.11),
    "mono": (0.31, 0.05, 0.10, 0.10),
    "gran": (0.36, 0.05, 0.33, 0.08),
}

# Cell type -> scatter kind and marker levels {marker: (log10 median, log10 spread)}.
B_CELLS: dict[str, tuple[str, dict[str, tuple[float, float]]]] = {
    "other_lymphocyte": ("lymph", {"CD27": (3.5, 0.25), "CD38": (3.2, 0.3)}),
    "monocyte": ("mono", {"CD38": (3.4, 0.2)}),
    "granulocyte": ("gran", {"CD24": (4.6, 0.2), "CD38": (2.9, 0.3)}),
    "naive": (
        "lymph",
        {
            "CD19": (4.0, 0.15),
            "CD20": (4.4, 0.15),
            "CD24": (3.70, 0.18),
            "CD38": (3.35, 0.18),
            "IgD": (4.3, 0.18),
            "IgM": (3.9, 0.25),
        },
    ),
    "transitional": (
        "lymph",
        {
            "CD19": (4.05, 0.15),
            "CD20": (4.5, 0.15),
            "CD24": (4.35, 0.18),
            "CD38": (4.05, 0.18),
            "IgD": (4.3, 0.18),
            "IgM": (4.4, 0.2),
        },
    ),
    "double_negative": (
        "lymph",
        {"CD19": (4.0, 0.15), "CD20": (4.4, 0.15), "CD24": (3.6, 0.2), "CD38": (3.1, 0.2)},
    ),
    "unswitched_memory": (
        "lymph",
        {
            "CD19": (4.05, 0.15),
            "CD20": (4.5, 0.15),
            "CD24": (4.1, 0.2),
            "CD38": (2.9, 0.25),
            "CD27": (4.0, 0.18),
            "IgD": (3.7, 0.2),
            "IgM": (4.2, 0.2),
        },
    ),
    "switched_memory": (
        "lymph",
        {
            "CD19": (4.05, 0.15),
            "CD20": (4.5, 0.15),
            "CD24": (4.0, 0.2),
            "CD38": (2.9, 0.25),
            "CD27": (4.0, 0.18),
        },
    ),
    "plasmablast": (
        "lymph",
        {"CD19": (3.6, 0.2), "CD27": (4.7, 0.15), "CD38": (5.0, 0.15)},
    ),
}
T_CELLS: dict[str, tuple[str, dict[str, tuple[float, float]]]] = {
    "other_lymphocyte": ("lymph", {"HLA-DR": (3.8, 0.3), "CD45RA": (4.0, 0.2)}),
    "monocyte": ("mono", {"CD4": (3.2, 0.2), "HLA-DR": (4.2, 0.2)}),
    "granulocyte": ("gran", {"CD45RA": (2.8, 0.3)}),
    "cd8_t": (
        "lymph",
        {"CD3": (4.0, 0.15), "CD8": (4.3, 0.15), "CD127": (3.5, 0.25), "CD45RA": (3.9, 0.3)},
    ),
    "cd4_naive": (
        "lymph",
        {
            "CD3": (4.0, 0.15),
            "CD4": (3.9, 0.12),
            "CD25": (2.6, 0.3),
            "CD127": (3.7, 0.15),
            "CD45RA": (4.1, 0.18),
        },
    ),
    "cd4_memory": (
        "lymph",
        {
            "CD3": (4.0, 0.15),
            "CD4": (3.9, 0.12),
            "CD25": (3.1, 0.3),
            "CD127": (3.6, 0.15),
            "CD45RA": (2.6, 0.35),
        },
    ),
    "cd4_cd127lo_activated": (
        "lymph",
        {"CD3": (4.0, 0.15), "CD4": (3.9, 0.12), "CD127": (2.8, 0.2), "HLA-DR": (3.4, 0.3)},
    ),
    "treg_naive": (
        "lymph",
        {
            "CD3": (4.0, 0.15),
            "CD4": (3.9, 0.12),
            "CD25": (3.85, 0.2),
            "CD127": (2.75, 0.18),
            "CD45RA": (3.95, 0.18),
        },
    ),
    "treg_memory": (
        "lymph",
        {
            "CD3": (4.0, 0.15),
            "CD4": (3.9, 0.12),
            "CD25": (3.95, 0.2),
            "CD127": (2.75, 0.18),
            "CD45RA": (2.9, 0.35),
        },
    ),
    "treg_memory_hladr": (
        "lymph",
        {
            "CD3": (4.0, 0.15),
            "CD4": (3.9, 0.12),
            "CD25": (4.05, 0.2),
            "CD127": (2.75, 0.18),
            "CD45RA": (2.9, 0.35),
            "HLA-DR": (3.45, 0.22),
        },
    ),
}
NON_CELLS = ("debris", "doublet")
CELL_TYPES = {"B": B_CELLS, "T": T_CELLS}
LABEL_NAMES = [*NON_CELLS, *sorted(set(B_CELLS) | set(T_CELLS))]

_B_SUBSETS = set(B_CELLS) - {"other_lymphocyte", "monocyte", "granulocyte"}
_CD4 = {"cd4_naive", "cd4_memory", "cd4_cd127lo_activated", "treg_naive", "treg_memory"}
_TREG = {"treg_naive", "treg_memory", "treg_memory_hladr"}
TRUTH: dict[str, dict[str, tuple[str, set[str]]]] = {
    "B": {
        "lymphocytes": ("qc_passed", {"other_lymphocyte", *_B_SUBSETS}),
        "cd19_b": ("lymphocytes", _B_SUBSETS),
        "transitional_b": ("cd19_b", {"transitional"}),
        "naive_b": ("cd19_b", {"naive"}),
        "memory_b": ("cd19_b", {"unswitched_memory", "switched_memory"}),
        "igm_memory_b": ("memory_b", {"unswitched_memory"}),
        "switched_memory_b": ("memory_b", {"switched_memory"}),
        "plasmablasts": ("cd19_b", {"plasmablast"}),
    },
    "T": {
        "lymphocytes": ("qc_passed", set(T_CELLS) - {"monocyte", "granulocyte"}),
        "t_cells": ("lymphocytes", {"cd8_t", *_CD4, "treg_memory_hladr"}),
        "cd4_t": ("t_cells", {*_CD4, "treg_memory_hladr"}),
        "treg": ("cd4_t", _TREG),
        "memory_treg": ("treg", {"treg_memory", "treg_memory_hladr"}),
        "hladr_memory_treg": ("memory_treg", {"treg_memory_hladr"}),
    },
}
VISITS = {"V0": 0, "V1": 1, "V3": 3, "V6": 6, "V9": 9, "V12": 12}
FILENAME_PATTERN = r"^(?P<patient>S[0-9]+)-(?P<visit>V[0-9]+)-(?P<panel>[BT])\.fcs$"


@dataclass(frozen=True)
class SiteOptions:
    """Size and seed of the second site's study."""

    patients: int = 8
    visits: tuple[str, ...] = ("V0", "V1", "V3", "V6", "V9", "V12")
    events_per_file: int = 30000
    seed: int = 4242
    scatter_scale: tuple[float, float] = (0.6, 1.6)
    igm_free_share: float = 1 / 3


def sample_shares(tube: str, child: bool, rng: np.random.Generator) -> dict[str, float]:
    """Shares of every event type in one tube, drawn from a tree of Dirichlet splits."""

    def split(means: dict[str, float], concentration: float) -> dict[str, float]:
        keys = list(means)
        drawn = rng.dirichlet(concentration * np.array([means[k] for k in keys]))
        return dict(zip(keys, drawn, strict=True))

    top = split(
        {"debris": 0.08, "doublet": 0.04, "monocyte": 0.14, "granulocyte": 0.02, "lymph": 0.72},
        200,
    )
    lymph = top.pop("lymph")
    if tube == "B":
        b = rng.uniform(0.08, 0.18) if child else rng.uniform(0.05, 0.12)
        within = split(
            {
                "naive": 0.62 if child else 0.58,
                "transitional": 0.11 if child else 0.05,
                "double_negative": 0.04,
                "unswitched_memory": 0.09 if child else 0.14,
                "switched_memory": 0.11 if child else 0.17,
                "plasmablast": 0.03,
            },
            120,
        )
        shares = {
            "other_lymphocyte": lymph * (1 - b),
            **{k: lymph * b * v for k, v in within.items()},
        }
    else:
        t = rng.uniform(0.62, 0.8)
        cd4 = rng.uniform(0.55, 0.72)
        within = split(
            {
                "cd4_naive": 0.48,
                "cd4_memory": 0.41,
                "cd4_cd127lo_activated": 0.03,
                "treg_naive": 0.025,
                "treg_memory": 0.04,
                "treg_memory_hladr": 0.015,
            },
            300,
        )
        shares = {
            "other_lymphocyte": lymph * (1 - t),
            "cd8_t": lymph * t * (1 - cd4),
            **{k: lymph * t * cd4 * v for k, v in within.items()},
        }
    return {**top, **shares}


def simulate_tube(
    tube: str,
    shares: dict[str, float],
    n_events: int,
    rng: np.random.Generator,
    *,
    fsc_scale: float = 1.0,
    ssc_scale: float = 1.0,
    pulse: str = "FSC-W",
    with_igm: bool = True,
) -> tuple[np.ndarray, list[str], list[str], np.ndarray, np.ndarray]:
    """Events of one tube. Returns events, $PnN, $PnS, labels (index into LABEL_NAMES) and
    the spillover matrix of the fluorescence detectors."""
    channels = [c for c in TUBES[tube] if with_igm or c[2] != "IgM"]
    markers = [m for _, _, m in channels]
    cells = CELL_TYPES[tube]
    kinds = list(shares)
    counts = rng.multinomial(n_events, [shares[k] for k in kinds])
    n = dict(zip(kinds, counts, strict=True))
    cell_kinds = [k for k in kinds if k in cells]
    p_cells = np.array([shares[k] for k in cell_kinds]) / sum(shares[k] for k in cell_kinds)

    def draw(kind_index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        fsc, ssc = np.empty(kind_index.size), np.empty(kind_index.size)
        signal = np.empty((kind_index.size, len(markers)))
        for i, kind in enumerate(cell_kinds):
            rows = kind_index == i
            m = int(rows.sum())
            if not m:
                continue
            scatter, levels = cells[kind]
            f_med, f_sd, s_med, s_sd = SCATTER[scatter]
            fsc[rows] = f_med * 10 ** rng.normal(0, f_sd, m)
            ssc[rows] = s_med * 10 ** rng.normal(0, s_sd, m)
            for j, marker in enumerate(markers):
                median, spread = levels.get(marker, AUTOFLUORESCENCE)
                signal[rows, j] = 10 ** rng.normal(median, spread, m)
        return fsc, ssc, signal

    singles = np.concatenate([np.full(n[k], i) for i, k in enumerate(cell_kinds)])
    fsc_s, ssc_s, sig_s = draw(singles)
    width_s = rng.normal(1.0, 0.04, singles.size)
    first = draw(rng.choice(len(cell_kinds), n["doublet"], p=p_cells))
    second = draw(rng.choice(len(cell_kinds), n["doublet"], p=p_cells))
    fsc_d, ssc_d, sig_d = first[0] + second[0], first[1] + second[1], first[2] + second[2]
    width_d = rng.normal(1.75, 0.15, n["doublet"])
    m = n["debris"]
    fsc_x = rng.gamma(1.6, 0.025, m)
    ssc_x = 0.02 * 10 ** rng.normal(0, 0.4, m)
    sig_x = 10 ** rng.normal(*AUTOFLUORESCENCE, (m, len(markers)))
    width_x = rng.normal(0.9, 0.12, m)

    labels = np.concatenate(
        [
            np.array([LABEL_NAMES.index(k) for k in cell_kinds], dtype=np.uint8)[singles],
            np.full(n["doublet"], LABEL_NAMES.index("doublet"), dtype=np.uint8),
            np.full(m, LABEL_NAMES.index("debris"), dtype=np.uint8),
        ]
    )
    fsc = np.concatenate([fsc_s, fsc_d, fsc_x]) * fsc_scale * FULL_SCALE
    ssc = np.concatenate([ssc_s, ssc_d, ssc_x]) * ssc_scale * FULL_SCALE
    width = np.concatenate([width_s, width_d, width_x]) * 0.3 * FULL_SCALE
    spill = spillover_matrix([d for _, d, _ in channels], SPILL)
    detector = np.vstack([sig_s, sig_d, sig_x]) @ spill
    detector *= rng.uniform(0.7, 1.4, len(markers))[None, :]  # this file's detector gains
    detector += rng.normal(0, 1, detector.shape) * np.sqrt(4.0 * detector)
    detector += rng.normal(0, 60.0, detector.shape)
    if pulse == "FSC-W":
        pulse_values = width
    else:  # SSC-H: height falls as the pulse widens
        pulse_values = ssc / np.maximum(width / (0.3 * FULL_SCALE), 0.2) * 0.8
    events = np.column_stack([fsc, pulse_values, ssc, detector])
    order = rng.permutation(labels.size)
    events, labels = events[order], labels[order]
    events = np.clip(events, -FULL_SCALE, FULL_SCALE - 1)
    time = np.sort(rng.uniform(0, 120.0, labels.size))
    events = np.column_stack([events, time])
    pnn = ["FSC-A", pulse, "SSC-A", *[d for d, _, _ in channels], "Time"]
    pns = ["", "", "", *[f"{m}-{dye}" for _, dye, m in channels], ""]
    return events, pnn, pns, labels, spill


def simulate_site(root: str | Path, options: SiteOptions = SiteOptions()) -> Path:
    """Write study.yaml, the inbox and truth/ for the second site's study."""
    study = {
        "study": "Second site (simulated, independent population model)",
        "visits": {v: VISITS[v] for v in options.visits},
        "baseline": options.visits[0],
        "filename_pattern": FILENAME_PATTERN,
        "panels": {"B": "bcell", "T": "treg"},
        "absolute_counts": "none",
    }
    root = start_study(root, study)
    for p in range(1, options.patients + 1):
        child = p <= options.patients // 2
        for v, visit in enumerate(options.visits):
            for tube in ("B", "T"):
                rng = np.random.default_rng([options.seed, p, v, ord(tube)])
                sample_id = f"S{p:02d}-{visit}-{tube}"
                events, pnn, pns, labels, spill = simulate_tube(
                    tube,
                    sample_shares(tube, child, rng),
                    options.events_per_file,
                    rng,
                    fsc_scale=rng.uniform(*options.scatter_scale),
                    ssc_scale=rng.uniform(*options.scatter_scale),
                    pulse="FSC-W" if rng.uniform() < 2 / 3 else "SSC-H",
                    with_igm=tube != "B" or rng.uniform() >= options.igm_free_share,
                )
                keywords = {
                    "$CYT": "CytoFLEX LX (simulated)",
                    "$SPILLOVER": spillover_keyword(pnn[3:-1], spill),
                    "$TIMESTEP": "0.001",
                    "$FIL": f"{sample_id}.fcs",
                }
                write_fcs(
                    root / "inbox" / f"{sample_id}.fcs",
                    events,
                    pnn,
                    pns,
                    keywords,
                    pnr=[FULL_SCALE] * (len(pnn) - 1) + [1048576.0],
                )
                save_truth(root, sample_id, labels, LABEL_NAMES)
    return root
