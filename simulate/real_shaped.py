"""A third ground-truth study, shaped like the real files the two other simulators are not.

``simulate.demo`` and ``simulate.second_site`` both say our Treg and B-subset gates are within
a point of the truth, while on real expert-gated files Tregs are undercounted 1.5-40x against
FlowJo and transitional B overcounted 2.3x against central manual gating: a simulator only
proves what it was built to contain. This one is built from what real files show. Its
population model is written in the pipeline's own display units (logicle, T = $PnR = 2^18,
w = 0.5, m = 4.5, a = 0, as ``panels/*.yaml`` declare and ``gating.transforms.Logicle``
computes), where the real shapes were measured, and carried to linear units by the exact
inverse, then through spillover, photon and electronic noise and compensation.

Real observations each shape comes from:

- **B tube** (a real PBMC B tube, LSRFortessa: Live, CD3, CD19, CD20, IgD, CD27, CD38, CD24;
  central manual gating of a multi-centre standardisation study): lymphocytes 63.2% of the
  events, CD19+ 21.7% of the lymphocytes, transitional B 11.7% of the B cells (openCyto's
  automated gating 9.7%), naive 69.5% (81.2% with the transitional). On CD24 x CD38 the CD27-
  B cells are ONE elongated diagonal cloud, from about (CD38 0.45, CD24 0.2) to (CD38 0.8,
  CD24 0.75); experts gate transitional B as its CD24-high CD38-high tip, with no valley and
  no separate cluster. Here naive and transitional cells lie on that one segment: a position
  along it (naive N(0.42, 0.19), transitional N(0.86, 0.10), t-distributed, 4 degrees of
  freedom) and a narrow spread across it (0.045). The density along CD24 or CD38 alone falls
  from the naive mode through the transitional cells without a valley (a shoulder), and the
  two overlap: no gate can count them without error, which is the point.
- **B-cell markers' tails** (every marker of the B tube but the naive and transitional B
  cells' CD38 x CD24 plane above, a maturation continuum):
  heavy towards dim, light towards bright, as measured on the 12 ``flowatlas_tissues`` files
  (``bench.marker_tails``; share beyond 3 robust SDs of the population's median, one side):
  the bright side of positive populations holds 0.00-0.49% (CD3+ median 0.08%, CD4+ 0.05%,
  CD8+ and CD45+ 0.00%: a normal law's 0.13%, not a t law's 1.5%), and so does a negative
  population's (CD19 of the CD4 T cells: 0.00-0.33%, at most 0.02% beyond 4), while the dim
  side is heavy (CD45: 4.1-5.8%; the CD4 cloud's CD127 2.8-6.1%). So each B-tube marker is
  t-distributed (4 degrees of freedom) below its median and normal above it, with the same
  quartiles. With symmetric t tails (before 2026-12-01) 0.7% of the naive B cells crossed
  the CD27 cut into the CD27+ IgD+ quadrant, 5x more cells than memory B, diluting the
  memory B: switched memory B -2.5 points of memory B vs the truth, 1.8 of them that leak
  (12 tubes, 20,000 events, seed 7).
- **IgM-only and IgD-only memory B** (published blood B-cell compartments; there is no real
  B tube with expert gates here): besides IgM memory B (CD27+ IgD+ IgM+, ~15% of adult
  blood B cells) and switched memory B (CD27+ IgD- IgM-), blood holds CD27+ B cells with
  one heavy chain on their surface. Klein, Rajewsky & Kuppers 1998 (J Exp Med 188:1679):
  IgM+ IgD+ CD27+ ~15% of blood B cells and "a very small population (<1% of PB B cells)"
  of IgD-only B cells; Seifert & Kuppers 2009 (J Exp Med 206:2659): IgM+ CD27+ B cells,
  IgM+ IgD+ and "IgM+ IgD-/low" together, ~20% of blood B cells, so IgM-only ~5%, a third
  of the IgM memory B (Klein et al. 1997, Blood 89:1288, for IgM-only as memory cells).
  Here IgM-only memory B are 1.5-3.5% of the B cells (a third of the simulator's IgM memory
  B, 5-9%: the trial is mostly children), IgM as bright as the IgM memory B's, IgD negative
  to low (0.24, the IgM memory B's 0.55); IgD-only 0.2-0.8%, IgD 0.62, IgM negative. Both
  are memory B and neither IgM memory nor switched memory B, as EUROclass and the strategy
  define those. Without them (before 2026-12-01) the IgM memory B's dim tails crossing the
  IgD cut had no cells to meet in the IgD- IgM+ quadrant.
- **Treg tube**, measured on the six ``flowatlas_tissues`` files with >= 100 FlowJo Tregs
  (390C lung, 403C lung, 412C BM, 412C mLN, 423 lung, 428 lung; ``python -m
  bench.treg_shapes``, 2026-12-01): FlowJo 10.7.1's Treg gate (Foxp3+ CD127lo, replayed by
  flowkit) within our CD4 T cells, CD25 ``FJComp-640 670_30-A``, CD127 ``FJComp-561
  780_60-A``, logicle units as above, ranges over the six files (median). The CD4 cloud, as
  the ``treg`` polygon measures it (peaks on its CD127-high side, half-SDs): CD127 peak
  0.645-0.705 (0.673), CD25 peak 0.34-0.43 (0.372); it is sharp on its high side (half-SD
  CD127 0.045-0.08 (0.060), CD25 0.054-0.113 (0.060)) and wide towards the arm (CD127
  0.07-0.35 (0.16), CD25 0.115-0.17 (0.15), one file 0.73). The Tregs, in those cloud SDs:
  CD127 a median 1.9-7.2 (3.6) below the peak (quartiles -6.0 / -3.6 / -2.3), CD25 1.3-3.6
  (2.4) above it (0.6 / 2.4 / 3.6); 9-36% (26%) of them CD25-low (below the polygon's 0.75-SD
  rise); in logicle units offsets of -0.14 to -0.32 (-0.21) on CD127 and +0.10 to +0.22
  (+0.14) on CD25, robust SDs 0.06-0.19 (0.15) and 0.09-0.21 (0.12). Treg share of CD4
  3.4-19.8% (8.7%) in these tissues, ~6.7% in blood. A 25-NN classifier fitted to FlowJo's
  answer on CD127 x CD25 reaches F1 0.58-0.83 (0.77): CD25 stands in for Foxp3 only partly.
  Here each tube draws its cloud and arm uniformly within those ranges (``CD4_PLANE``): the
  cloud normal above its peaks and t-distributed below (``_sharp_above``), correlated +0.25
  (real +0.06 to +0.33), 5% of conventional CD4 cells down-regulating CD127 by 0.25; the
  Tregs normal on CD25 (the real Tregs' CD25 stops sharply), t on CD127 (theirs reaches
  CD127-negative). Treg v6's simulator (an arm within a round, t-tailed cloud of SD 0.13 on
  CD25) put its Tregs 1.7 SDs below the cloud on CD127 and 0.2 below it on CD25 (ceiling F1
  0.54-0.68): far more overlap than any real file. Blood shares: Tregs 4-10% of CD4.
- **HLA-DR and CD45RA of the Treg tube** (same six files): every CD4 T cell sits on an
  HLA-DR-negative band at 0.33-0.41 (0.37), not at an unstained level of 0.16; the memory
  Tregs' HLA-DR is one mode smearing above it (no valley in any file), 2-66% (52%) of them
  more than 0.1 above the band. Here the tube's band is drawn in U(0.33, 0.41) (spread 0.035)
  and HLA-DR+ memory Tregs lie 0.20 (spread 0.08) above it: a shoulder, not a cluster. The
  Tregs' CD45RA median is 0.13-0.22 (0.15; CD4 T 0.13-0.26): memory Tregs and memory CD4
  cells are drawn at 0.14-0.18. Tissue Tregs are 92-100% memory; the blood shares here
  (memory 50-70% of Tregs, HLA-DR+ 20-35% of those) are not measured on these files.
- **CD3** (same files): T cells at 0.61-0.70 (0.655), other lymphocytes 0.21-0.25; here 0.60
  and 0.16, well apart on both (the T-cell error of the real-shaped study is the scatter
  gate's: monocytes and debris inside it dilute the T cells' share).
- **Files without scatter**: the flowatlas files are FlowJo exports of a pre-gated population
  (``FJComp-`` channels, compensated, linear float32, negative values kept, no FSC/SSC/Time).
  ``RealShapedOptions.no_scatter_share`` writes that share of files so: lymphocytes only, no
  $SPILLOVER. It is 0 by default: the YAML strategies gate lymphocytes on FSC-A x SSC-A, and
  the setting by which a panel declares where such files enter the gate tree is being built
  elsewhere; until then the pipeline refuses these files (as it must: the bench counts them).
- **Heavy tails**: in the Treg tube every marker's spread is t-distributed (4 degrees of
  freedom; the B tube's only towards dim, above), and the detectors' photon noise spreads
  through compensation into negative values.

Not modelled: a treatment effect (visits differ only by sampling), dead cells (the real tube's
Live channel), instrument drift (the demo has it).

The truth is kept as the other simulators keep it: ``truth/SAMPLE.npz`` holds one label per
event and the label names; ``TRUTH`` maps each panel's populations to the cell types in them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flowutils import transforms

from simulate._study import save_truth, spillover_keyword, spillover_matrix, start_study
from simulate.fcs_writer import write_fcs

RANGE = 262144.0  # 2^18, as BD FACSDiva files record
LOGICLE = {"t": RANGE, "w": 0.5, "m": 4.5, "a": 0.0}  # panels/*.yaml, T = $PnR
TAIL_DF = 4  # degrees of freedom of every spread: heavier tails than a normal law

# Detector ($PnN as FACSDiva names a Fortessa's laser and filter), marker, per tube.
TUBES: dict[str, list[tuple[str, str]]] = {
    "BCELL": [
        ("355 379_28-A", "CD3"),
        ("405 450_50-A", "IgM"),
        ("488 530_30-A", "IgD"),
        ("488 695_40-A", "CD27"),
        ("561 585_15-A", "CD24"),
        ("561 780_60-A", "CD19"),
        ("640 670_30-A", "CD38"),
        ("640 780_60-A", "CD20"),
    ],
    "TREG": [
        ("355 379_28-A", "CD3"),
        ("355 560_40-A", "CD8"),
        ("355 820_60-A", "CD4"),
        ("405 515_20-A", "HLA-DR"),
        ("405 780_60-A", "CD45RA"),
        ("561 585_15-A", "Foxp3"),
        ("561 780_60-A", "CD127"),
        ("640 670_30-A", "CD25"),
    ],
}
# Share of a detector's signal seen by another (same laser, the next filter), Fortessa-like.
SPILL = {
    ("355 379_28-A", "355 560_40-A"): 0.06,
    ("355 560_40-A", "355 820_60-A"): 0.03,
    ("405 450_50-A", "405 515_20-A"): 0.15,
    ("405 515_20-A", "405 780_60-A"): 0.02,
    ("488 530_30-A", "561 585_15-A"): 0.20,
    ("488 530_30-A", "488 695_40-A"): 0.02,
    ("561 585_15-A", "488 695_40-A"): 0.12,
    ("561 585_15-A", "561 780_60-A"): 0.03,
    ("488 695_40-A", "561 780_60-A"): 0.15,
    ("561 780_60-A", "640 780_60-A"): 0.08,
    ("640 670_30-A", "488 695_40-A"): 0.05,
    ("640 670_30-A", "640 780_60-A"): 0.10,
    ("640 780_60-A", "561 780_60-A"): 0.12,
}
PHOTON_NOISE = 3.0  # detector variance per unit of signal
ELECTRONIC_NOISE = 50.0  # detector SD at no signal

# Scatter per kind of event, as fractions of the range: FSC-A median and log10 spread, SSC-A
# median and log10 spread.
SCATTER = {
    "lymph": (0.30, 0.045, 0.07, 0.10),
    "mono": (0.47, 0.05, 0.17, 0.09),
    "gran": (0.52, 0.05, 0.45, 0.07),
}
NEGATIVE = (0.16, 0.05)  # an unstained cell's level and spread, logicle units

# Cell type -> scatter kind, {marker: (logicle median, spread)}; markers not named are negative.
# Naive and transitional B (and the conventional/regulatory CD4 cells) are drawn by
# ``_b_plane`` and ``_treg_plane``: only their other markers are listed here.
B_CELLS: dict[str, tuple[str, dict[str, tuple[float, float]]]] = {
    "t_cell": ("lymph", {"CD3": (0.60, 0.04)}),
    "nk_cell": ("lymph", {"CD38": (0.45, 0.06)}),
    "monocyte": ("mono", {"CD38": (0.40, 0.06), "CD24": (0.22, 0.05)}),
    "granulocyte": ("gran", {"CD24": (0.72, 0.05), "CD38": (0.25, 0.06)}),
    "naive": (
        "lymph",
        {
            "CD19": (0.60, 0.035),
            "CD20": (0.68, 0.04),
            "CD27": (0.20, 0.05),
            "IgD": (0.70, 0.05),
            "IgM": (0.58, 0.06),
        },
    ),
    "transitional": (
        "lymph",
        {
            "CD19": (0.61, 0.035),
            "CD20": (0.70, 0.04),
            "CD27": (0.19, 0.05),
            "IgD": (0.70, 0.05),
            "IgM": (0.68, 0.05),
        },
    ),
    "double_negative": (
        "lymph",
        {
            "CD19": (0.60, 0.035),
            "CD20": (0.68, 0.04),
            "CD27": (0.22, 0.05),
            "IgD": (0.24, 0.06),
            "CD24": (0.38, 0.06),
            "CD38": (0.38, 0.05),
        },
    ),
    "igm_memory": (
        "lymph",
        {
            "CD19": (0.61, 0.035),
            "CD20": (0.70, 0.04),
            "CD27": (0.58, 0.05),
            "IgD": (0.55, 0.06),
            "IgM": (0.64, 0.06),
            "CD24": (0.66, 0.05),
            "CD38": (0.36, 0.05),
        },
    ),
    # Memory B with one heavy chain only (module docstring: **IgM-only and IgD-only memory
    # B**): IgM-only as bright on IgM as the IgM memory B and IgD-negative to low; IgD-only
    # IgD-positive, IgM-negative.
    "igm_only_memory": (
        "lymph",
        {
            "CD19": (0.61, 0.035),
            "CD20": (0.70, 0.04),
            "CD27": (0.58, 0.05),
            "IgD": (0.24, 0.05),
            "IgM": (0.66, 0.06),
            "CD24": (0.66, 0.05),
            "CD38": (0.36, 0.05),
        },
    ),
    "igd_only_memory": (
        "lymph",
        {
            "CD19": (0.61, 0.035),
            "CD20": (0.70, 0.04),
            "CD27": (0.60, 0.05),
            "IgD": (0.62, 0.06),
            "IgM": (0.20, 0.05),
            "CD24": (0.60, 0.05),
            "CD38": (0.45, 0.06),
        },
    ),
    "switched_memory": (
        "lymph",
        {
            "CD19": (0.61, 0.035),
            "CD20": (0.70, 0.04),
            "CD27": (0.58, 0.05),
            "IgD": (0.20, 0.05),
            "IgM": (0.20, 0.05),
            "CD24": (0.64, 0.05),
            "CD38": (0.36, 0.05),
        },
    ),
    "plasmablast": (
        "lymph",
        {
            "CD19": (0.50, 0.05),
            "CD20": (0.25, 0.06),
            "CD27": (0.74, 0.04),
            "CD38": (0.90, 0.03),
            "CD24": (0.18, 0.05),
        },
    ),
}
_CD4 = {"CD3": (0.60, 0.04), "CD4": (0.62, 0.035), "Foxp3": (0.20, 0.05)}
_TREG = {"CD3": (0.60, 0.04), "CD4": (0.61, 0.035), "Foxp3": (0.50, 0.06)}
T_CELLS: dict[str, tuple[str, dict[str, tuple[float, float]]]] = {
    "b_cell": ("lymph", {"HLA-DR": (0.58, 0.05), "CD45RA": (0.62, 0.05)}),
    "nk_cell": ("lymph", {"CD8": (0.35, 0.07), "CD45RA": (0.62, 0.05)}),
    "monocyte": ("mono", {"CD4": (0.38, 0.05), "HLA-DR": (0.66, 0.05)}),
    "granulocyte": ("gran", {"CD45RA": (0.30, 0.06)}),
    "cd8_t": (
        "lymph",
        {"CD3": (0.61, 0.04), "CD8": (0.70, 0.04), "CD127": (0.55, 0.08), "CD45RA": (0.58, 0.1)},
    ),
    "cd4_naive": ("lymph", {**_CD4, "CD45RA": (0.64, 0.05)}),
    "cd4_memory": ("lymph", {**_CD4, "CD45RA": (0.17, 0.07)}),
    "cd4_cd127_down": ("lymph", {**_CD4, "CD45RA": (0.18, 0.08)}),
    "treg_naive": ("lymph", {**_TREG, "CD45RA": (0.60, 0.05)}),
    "treg_memory": ("lymph", {**_TREG, "CD45RA": (0.15, 0.07)}),
    "treg_memory_hladr": ("lymph", {**_TREG, "CD45RA": (0.14, 0.07)}),
}
CELL_TYPES = {"BCELL": B_CELLS, "TREG": T_CELLS}
NON_CELLS = ("debris", "doublet")
LABEL_NAMES = [*NON_CELLS, *sorted(set(B_CELLS) | set(T_CELLS))]
NOT_LYMPHOCYTES = {"monocyte", "granulocyte"}

_B_SUBSETS = set(B_CELLS) - {"t_cell", "nk_cell", *NOT_LYMPHOCYTES}
# Every CD27+ non-plasmablast B cell; IgM memory B (CD27+ IgD+ IgM+) and switched memory B
# (CD27+ IgD- IgM-) are two of its four kinds, as EUROclass and the strategy define them.
_MEMORY_B = {"igm_memory", "igm_only_memory", "igd_only_memory", "switched_memory"}
_CD4_TYPES = {"cd4_naive", "cd4_memory", "cd4_cd127_down"}
_TREGS = {"treg_naive", "treg_memory", "treg_memory_hladr"}
TRUTH: dict[str, dict[str, tuple[str, set[str]]]] = {
    "BCELL": {
        "lymphocytes": ("qc_passed", set(B_CELLS) - NOT_LYMPHOCYTES),
        "cd19_b": ("lymphocytes", _B_SUBSETS),
        "transitional_b": ("cd19_b", {"transitional"}),
        "naive_b": ("cd19_b", {"naive"}),
        "memory_b": ("cd19_b", _MEMORY_B),
        "igm_memory_b": ("memory_b", {"igm_memory"}),
        "switched_memory_b": ("memory_b", {"switched_memory"}),
        "plasmablasts": ("cd19_b", {"plasmablast"}),
    },
    "TREG": {
        "lymphocytes": ("qc_passed", set(T_CELLS) - NOT_LYMPHOCYTES),
        "t_cells": ("lymphocytes", {"cd8_t", *_CD4_TYPES, *_TREGS}),
        "cd4_t": ("t_cells", {*_CD4_TYPES, *_TREGS}),
        "treg": ("cd4_t", _TREGS),
        "memory_treg": ("treg", {"treg_memory", "treg_memory_hladr"}),
        "hladr_memory_treg": ("memory_treg", {"treg_memory_hladr"}),
    },
}

# The CD27- B plane: naive and transitional B on one segment of CD38 x CD24 (logicle).
B_DIAGONAL = ((0.45, 0.20), (0.80, 0.75))  # (CD38, CD24) at its low and high ends
B_POSITION = {"naive": (0.42, 0.19), "transitional": (0.86, 0.10)}  # along it, 0..1
B_ACROSS = 0.045  # spread across the segment
# The CD4 T cells' CD127 x CD25 plane and HLA-DR, per tube, as measured on the six scored
# flowatlas files (``bench/treg_shapes.py``; ranges over the files, logicle units). The cloud
# is asymmetric: sharp on its high side (half-SD 0.045-0.08 on CD127, 0.054-0.064 on CD25),
# wide towards the arm (0.07-0.35, 0.115-0.17). Tregs lie off its peaks by these amounts with
# these spreads (robust SD), independently on each marker.
CD4_PLANE = {
    "cd127_peak": (0.63, 0.69),
    "cd127_sd_high": (0.05, 0.09),
    "cd127_sd_low": (0.08, 0.18),
    "cd25_peak": (0.30, 0.39),
    "cd25_sd_high": (0.06, 0.075),
    "cd25_sd_low": (0.15, 0.22),
    "treg_cd127_offset": (-0.30, -0.12),
    "treg_cd127_sd": (0.06, 0.19),
    "treg_cd25_offset": (0.10, 0.22),
    "treg_cd25_sd": (0.09, 0.14),
    "hladr_band": (0.33, 0.41),
}
CLOUD_CORRELATION = 0.25  # of CD25 and CD127 within the cloud (real +0.06 to +0.33)
CD127_DOWN_SHIFT = 0.25  # the conventional cells down-regulating CD127 (the heavy low tail)
# HLA-DR of the Treg tube's lymphocytes relative to the tube's HLA-DR-negative band (offset,
# spread): every CD4 T cell sits on the band; HLA-DR+ memory Tregs smear above it.
HLADR_ABOVE_BAND = {"treg_memory_hladr": (0.20, 0.08), "cd4_cd127_down": (0.04, 0.05)}
HLADR_BAND_SD = 0.035


@dataclass(frozen=True)
class Cd4Plane:
    """One tube's CD4 cloud and Treg arm on CD127 x CD25, and its HLA-DR-negative band
    (logicle), drawn within ``CD4_PLANE``'s ranges."""

    cd127_peak: float
    cd127_sd_high: float
    cd127_sd_low: float
    cd25_peak: float
    cd25_sd_high: float
    cd25_sd_low: float
    treg_cd127_offset: float
    treg_cd127_sd: float
    treg_cd25_offset: float
    treg_cd25_sd: float
    hladr_band: float


def draw_cd4_plane(rng: np.random.Generator) -> Cd4Plane:
    """A tube's CD4 plane, each parameter uniform over the range the real files span."""
    return Cd4Plane(**{name: float(rng.uniform(lo, hi)) for name, (lo, hi) in CD4_PLANE.items()})


VISITS = {"BL": 0, "M1": 1, "M3": 3, "M6": 6, "M9": 9, "M12": 12}
FILENAME_PATTERN = r"^(?P<patient>R[0-9]+)_(?P<visit>BL|M[0-9]+)_(?P<panel>BCELL|TREG)\.fcs$"


@dataclass(frozen=True)
class RealShapedOptions:
    """Size and seed of the real-shaped study; ``no_scatter_share`` of the files are written as
    FlowJo exports of pre-gated lymphocytes (no FSC/SSC/Time, compensated), 0 by default."""

    patients: int = 8
    visits: tuple[str, ...] = ("BL", "M1", "M3", "M6", "M9", "M12")
    events_per_file: int = 30000
    seed: int = 2026
    no_scatter_share: float = 0.0


def _tail(rng: np.random.Generator, size) -> np.ndarray:
    return rng.standard_t(TAIL_DF, size)


# The t law's quartile over the normal law's: the light side keeps the heavy side's quartile,
# so a marker's spread means the same robust SD on both sides.
_LIGHT_SIDE_SCALE = 0.7407 / 0.6745


def _dim_side_tail(rng: np.random.Generator, size) -> np.ndarray:
    """A B-cell marker's spread: heavy (t, ``TAIL_DF``) towards dim, light (normal) towards
    bright, as the real flowatlas files show (module docstring: **B-cell markers' tails**)."""
    heavy = np.abs(rng.standard_t(TAIL_DF, size))
    light = np.abs(rng.standard_normal(size)) * _LIGHT_SIDE_SCALE
    return np.where(rng.random(size) < 0.5, -heavy, light)


def sample_shares(tube: str, child: bool, rng: np.random.Generator) -> dict[str, float]:
    """Shares of every event type in one tube, around the real files' numbers."""
    lymph = float(np.clip(rng.normal(0.632, 0.04), 0.5, 0.75))
    debris = rng.uniform(0.08, 0.14)
    doublet = rng.uniform(0.03, 0.06)
    gran = rng.uniform(0.01, 0.04)
    shares = {"debris": debris, "doublet": doublet, "granulocyte": gran}
    shares["monocyte"] = max(1 - lymph - debris - doublet - gran, 0.02)
    if tube == "BCELL":
        b = rng.uniform(0.16, 0.28) if child else rng.uniform(0.10, 0.22)
        transitional = rng.uniform(0.08, 0.16) if child else rng.uniform(0.04, 0.10)
        within = {
            "transitional": transitional,
            "double_negative": rng.uniform(0.02, 0.04),
            "igm_memory": rng.uniform(0.05, 0.09),
            "switched_memory": rng.uniform(0.06, 0.11),
            "igm_only_memory": rng.uniform(0.015, 0.035),
            "igd_only_memory": rng.uniform(0.002, 0.008),
            "plasmablast": rng.uniform(0.008, 0.02),
        }
        within["naive"] = 1 - sum(within.values())
        t = rng.uniform(0.78, 0.86) * (1 - b)
        shares.update({"t_cell": lymph * t, "nk_cell": lymph * (1 - b - t)})
        shares.update({k: lymph * b * v for k, v in within.items()})
    else:
        t = rng.uniform(0.62, 0.78)
        cd4 = rng.uniform(0.55, 0.70)
        treg = rng.uniform(0.04, 0.10)
        memory = rng.uniform(0.50, 0.70)
        hladr = rng.uniform(0.20, 0.35)
        conventional = {"naive": rng.uniform(0.40, 0.55), "down": 0.05}
        conventional["memory"] = 1 - sum(conventional.values())
        n_cd4 = lymph * t * cd4
        shares.update(
            {
                "b_cell": lymph * (1 - t) * 0.5,
                "nk_cell": lymph * (1 - t) * 0.5,
                "cd8_t": lymph * t * (1 - cd4),
                "cd4_naive": n_cd4 * (1 - treg) * conventional["naive"],
                "cd4_memory": n_cd4 * (1 - treg) * conventional["memory"],
                "cd4_cd127_down": n_cd4 * (1 - treg) * conventional["down"],
                "treg_naive": n_cd4 * treg * (1 - memory),
                "treg_memory": n_cd4 * treg * memory * (1 - hladr),
                "treg_memory_hladr": n_cd4 * treg * memory * hladr,
            }
        )
    total = sum(shares.values())
    return {k: v / total for k, v in shares.items()}


def _b_plane(kind: str, m: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """CD38 and CD24 of naive or transitional B: positions on the one diagonal cloud."""
    (x0, y0), (x1, y1) = B_DIAGONAL
    mean, sd = B_POSITION[kind]
    along = mean + sd * _tail(rng, m)
    across = B_ACROSS * _tail(rng, m)
    dx, dy = x1 - x0, y1 - y0
    norm = np.hypot(dx, dy)
    cd38 = x0 + along * dx - across * dy / norm
    cd24 = y0 + along * dy + across * dx / norm
    return cd38, cd24


def _split(z: np.ndarray, sd_high: float, sd_low: float) -> np.ndarray:
    """Deviations of ``z`` scaled by one spread above the peak and another below it."""
    return np.where(z > 0, sd_high, sd_low) * z


def _sharp_above(rng: np.random.Generator, m: int) -> np.ndarray:
    """Unit deviations, half above 0 (normal: the real clouds stop sharply on their high
    side) and half below (t-distributed: their heavy tails towards the arm). The B tube's
    ``_dim_side_tail`` is the same law with one spread matched on quartiles; the CD4 cloud
    gives each side its own spread (``_split``), measured as the polygon measures it."""
    above = rng.uniform(size=m) < 0.5
    return np.where(above, np.abs(rng.normal(0, 1, m)), -np.abs(_tail(rng, m)))


def _treg_plane(
    kind: str, m: int, plane: Cd4Plane, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """CD25 and CD127 of a CD4 T cell: the main cloud, its CD127-down tail, or the Treg arm."""
    if kind.startswith("treg"):
        # Normal on CD25 (the real Tregs' CD25 stops sharply), heavy-tailed on CD127 (theirs
        # reaches down to CD127-negative).
        cd25 = plane.cd25_peak + plane.treg_cd25_offset + plane.treg_cd25_sd * rng.normal(0, 1, m)
        cd127 = plane.cd127_peak + plane.treg_cd127_offset + plane.treg_cd127_sd * _tail(rng, m)
        return cd25, cd127
    r = CLOUD_CORRELATION
    a, b = _sharp_above(rng, m), _sharp_above(rng, m)
    z127 = r * a + np.sqrt(1 - r * r) * b
    cd25 = plane.cd25_peak + _split(a, plane.cd25_sd_high, plane.cd25_sd_low)
    cd127 = plane.cd127_peak + _split(z127, plane.cd127_sd_high, plane.cd127_sd_low)
    if kind == "cd4_memory":
        cd25 = cd25 + 0.02
    if kind == "cd4_cd127_down":
        cd127 = cd127 - CD127_DOWN_SHIFT + 0.02 * _tail(rng, m)
    return cd25, cd127


def to_linear(logicle_values: np.ndarray) -> np.ndarray:
    """Linear channel units of values on the pipeline's logicle scale (exact inverse)."""
    column = np.asarray(logicle_values, dtype=np.float64).reshape(-1, 1)
    return transforms.logicle_inverse(column, [0], **LOGICLE).ravel()


def to_logicle(linear_values: np.ndarray) -> np.ndarray:
    """The pipeline's logicle scale of linear channel values."""
    column = np.ascontiguousarray(linear_values, dtype=np.float64).reshape(-1, 1)
    return transforms.logicle(column, [0], **LOGICLE).ravel()


@dataclass(frozen=True)
class SimulatedTube:
    """One tube's events: ``compensated`` is what a FlowJo export holds, ``detector`` what the
    instrument wrote (``compensated @ spillover`` plus the detectors' noise); labels index
    ``LABEL_NAMES``."""

    markers: list[str]
    detectors: list[str]
    compensated: np.ndarray
    detector: np.ndarray
    spillover: np.ndarray
    scatter: np.ndarray  # FSC-A, FSC-H, FSC-W, SSC-A, SSC-H, SSC-W
    time: np.ndarray  # acquisition time, in $TIMESTEP (0.01 s) units
    labels: np.ndarray


def simulate_tube(
    tube: str, shares: dict[str, float], n_events: int, rng: np.random.Generator
) -> SimulatedTube:
    """Events of one tube (events in random order, as acquired)."""
    detectors = [d for d, _ in TUBES[tube]]
    markers = [m for _, m in TUBES[tube]]
    cells = CELL_TYPES[tube]
    kinds = list(shares)
    counts = dict(zip(kinds, rng.multinomial(n_events, [shares[k] for k in kinds]), strict=True))
    cell_kinds = [k for k in kinds if k in cells]
    p_cells = np.array([shares[k] for k in cell_kinds])
    p_cells /= p_cells.sum()
    marker_tail = _dim_side_tail if tube == "BCELL" else _tail
    # This tube's CD4 cloud on CD127 x CD25, the Treg arm leaving it, and its HLA-DR band.
    if tube == "TREG":
        plane = draw_cd4_plane(rng)
    else:  # the two draws the B tube has always made, so its events stay as they were
        rng.uniform(size=2)

    def draw(kind_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scatter (FSC-A, SSC-A as fractions of range) and true marker signal (linear)."""
        scatter = np.empty((kind_index.size, 2))
        level = np.empty((kind_index.size, len(markers)))
        for i, kind in enumerate(cell_kinds):
            rows = kind_index == i
            m = int(rows.sum())
            if not m:
                continue
            scatter_kind, levels = cells[kind]
            f_med, f_sd, s_med, s_sd = SCATTER[scatter_kind]
            scatter[rows, 0] = f_med * 10 ** rng.normal(0, f_sd, m)
            scatter[rows, 1] = s_med * 10 ** rng.normal(0, s_sd, m)
            for j, marker in enumerate(markers):
                median, spread = levels.get(marker, NEGATIVE)
                level[rows, j] = median + spread * marker_tail(rng, m)
            if kind in B_POSITION:
                cd38, cd24 = _b_plane(kind, m, rng)
                level[rows, markers.index("CD38")] = cd38
                level[rows, markers.index("CD24")] = cd24
            if kind in _CD4_TYPES or kind in _TREGS:
                cd25, cd127 = _treg_plane(kind, m, plane, rng)
                level[rows, markers.index("CD25")] = cd25
                level[rows, markers.index("CD127")] = cd127
            if tube == "TREG" and "HLA-DR" not in levels:
                offset, spread = HLADR_ABOVE_BAND.get(kind, (0.0, HLADR_BAND_SD))
                level[rows, markers.index("HLA-DR")] = (
                    plane.hladr_band + offset + spread * _tail(rng, m)
                )
        signal = to_linear(np.clip(level, -0.1, 1.0).ravel()).reshape(level.shape)
        return scatter, signal

    singles = np.concatenate([np.full(counts[k], i) for i, k in enumerate(cell_kinds)])
    scatter_s, signal_s = draw(singles)
    ratio_s = rng.normal(1.0, 0.035, singles.size)  # FSC-A / FSC-H, relative
    n_doublets = counts["doublet"]
    first = draw(rng.choice(len(cell_kinds), n_doublets, p=p_cells))
    second = draw(rng.choice(len(cell_kinds), n_doublets, p=p_cells))
    scatter_d, signal_d = first[0] + second[0], first[1] + second[1]
    ratio_d = rng.normal(1.75, 0.15, n_doublets)
    n_debris = counts["debris"]
    scatter_x = np.column_stack(
        [rng.gamma(1.6, 0.03, n_debris), 0.02 * 10 ** rng.normal(0, 0.4, n_debris)]
    )
    signal_x = to_linear(
        (NEGATIVE[0] + NEGATIVE[1] * _tail(rng, (n_debris, len(markers)))).ravel()
    ).reshape(n_debris, len(markers))
    ratio_x = rng.normal(0.9, 0.12, n_debris)

    index = np.array([LABEL_NAMES.index(k) for k in cell_kinds], dtype=np.uint8)
    labels = np.concatenate(
        [
            index[singles],
            np.full(n_doublets, LABEL_NAMES.index("doublet"), dtype=np.uint8),
            np.full(n_debris, LABEL_NAMES.index("debris"), dtype=np.uint8),
        ]
    )
    area = np.vstack([scatter_s, scatter_d, scatter_x]) * RANGE
    ratio = np.concatenate([ratio_s, ratio_d, ratio_x]) * 1.1
    fsc_h = area[:, 0] / ratio
    ssc_h = area[:, 1] / (1 + (ratio - 1.1) * 0.8)
    scatter = np.column_stack(
        [
            area[:, 0],
            fsc_h,
            area[:, 0] / np.maximum(fsc_h, 1) * 65536 / 1.1,
            area[:, 1],
            ssc_h,
            area[:, 1] / np.maximum(ssc_h, 1) * 65536,
        ]
    )
    spill = spillover_matrix(detectors, SPILL)
    signal = np.vstack([signal_s, signal_d, signal_x])
    detector = signal @ spill
    detector += rng.normal(0, 1, detector.shape) * np.sqrt(PHOTON_NOISE * np.abs(detector))
    detector += rng.normal(0, ELECTRONIC_NOISE, detector.shape)
    detector = np.clip(detector, -RANGE, RANGE - 1)
    scatter = np.clip(scatter, 0, RANGE - 1)
    compensated = detector @ np.linalg.inv(spill)
    order = rng.permutation(labels.size)
    return SimulatedTube(
        markers=markers,
        detectors=detectors,
        compensated=compensated[order],
        detector=detector[order],
        spillover=spill,
        scatter=scatter[order],
        time=np.sort(rng.uniform(0, 12000.0, labels.size)),
        labels=labels[order],
    )


def write_tube(
    path: Path, tube: SimulatedTube, sample_id: str, *, with_scatter: bool
) -> np.ndarray:
    """Write one tube as FACSDiva would (scatter, Time, raw detectors, $SPILLOVER) or, without
    scatter, as a FlowJo export of its pre-gated lymphocytes (``FJComp-`` channels holding
    compensated values, no scatter, no Time, no $SPILLOVER). Returns the labels of the events
    written."""
    pns = list(tube.markers)
    keywords = {"$CYT": "LSRFortessa (simulated)", "$FIL": path.name, "SAMPLE ID": sample_id}
    if with_scatter:
        pnn = ["FSC-A", "FSC-H", "FSC-W", "SSC-A", "SSC-H", "SSC-W", *tube.detectors, "Time"]
        events = np.column_stack([tube.scatter, tube.detector, tube.time])
        keywords["$SPILLOVER"] = spillover_keyword(tube.detectors, tube.spillover)
        keywords["$TIMESTEP"] = "0.01"
        write_fcs(path, events, pnn, ["", "", "", "", "", "", *pns, ""], keywords)
        return tube.labels
    kinds = np.array(LABEL_NAMES)[tube.labels]
    keep = ~np.isin(kinds, [*NON_CELLS, *NOT_LYMPHOCYTES])
    pnn = [f"FJComp-{d}" for d in tube.detectors]
    write_fcs(path, tube.compensated[keep], pnn, pns, keywords)
    return tube.labels[keep]


def simulate_real_shaped(
    root: str | Path, options: RealShapedOptions = RealShapedOptions()
) -> Path:
    """Write study.yaml, the inbox and truth/ of the real-shaped study; returns ``root``."""
    study = {
        "study": "Real-shaped (simulated from the shapes of real expert-gated files)",
        "visits": {v: VISITS[v] for v in options.visits},
        "baseline": options.visits[0],
        "filename_pattern": FILENAME_PATTERN,
        "panels": {"BCELL": "bcell", "TREG": "treg"},
        "absolute_counts": "none",
    }
    root = start_study(root, study)
    for p in range(1, options.patients + 1):
        child = p <= (options.patients * 10) // 16  # the trial's 10 children of 16
        for v, visit in enumerate(options.visits):
            for t, tube_name in enumerate(("BCELL", "TREG")):
                rng = np.random.default_rng([options.seed, p, v, t])
                sample_id = f"R{p:02d}_{visit}_{tube_name}"
                tube = simulate_tube(
                    tube_name,
                    sample_shares(tube_name, child, rng),
                    options.events_per_file,
                    rng,
                )
                with_scatter = rng.uniform() >= options.no_scatter_share
                labels = write_tube(
                    root / "inbox" / f"{sample_id}.fcs", tube, sample_id, with_scatter=with_scatter
                )
                save_truth(root, sample_id, labels, LABEL_NAMES)
    return root
