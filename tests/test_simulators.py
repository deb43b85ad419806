"""The real-shaped simulator gives the shapes its docstring promises (those of real files).

Each shape is checked on the values the pipeline sees: events read back from the written FCS
file, compensated with the file's own $SPILLOVER and put on the panels' logicle scale.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from bench.gating_accuracy import refusal
from bench.real_gating import ceiling_f1
from cohort.study import Study
from gating.adaptive import cloud_on_far_side, density_valleys
from gating.compensate import compensated_channels
from gating.registration import landmark_peak
from panels.fcs import read_events
from simulate import real_shaped as rs


def _tube_values(tmp_path, tube: str, child: bool, seed: int, n_events: int = 30000):
    """Logicle values per marker of a simulated tube read back from its file, and its labels."""
    rng = np.random.default_rng(seed)
    simulated = rs.simulate_tube(tube, rs.sample_shares(tube, child, rng), n_events, rng)
    path = tmp_path / f"{tube}.fcs"
    labels = rs.write_tube(path, simulated, tube, with_scatter=True)
    data = read_events(path)
    values = compensated_channels(data, simulated.detectors, data.header.spillover())
    by_marker = {
        marker: rs.to_logicle(values[detector])
        for detector, marker in zip(simulated.detectors, simulated.markers, strict=True)
    }
    return by_marker, np.array(rs.LABEL_NAMES)[labels]


def _density(values: np.ndarray, grid: np.ndarray, bandwidth: float = 0.03) -> np.ndarray:
    """Gaussian kernel density of ``values`` on ``grid``."""
    z = (grid[:, None] - values[None, :]) / bandwidth
    return np.exp(-0.5 * z * z).sum(axis=1)


@pytest.mark.parametrize(("child", "seed"), [(True, 3), (False, 4)])
def test_transitional_b_are_the_high_tip_of_one_diagonal_cloud(tmp_path, child, seed):
    """As experts see real B tubes: the CD27- B cells form one elongated CD24 x CD38 cloud, and
    transitional B are its CD24-high CD38-high tip, with no valley on either marker alone."""
    values, kinds = _tube_values(tmp_path, "BCELL", child, seed)
    cd27neg = np.isin(kinds, ["naive", "transitional"])
    transitional = kinds == "transitional"
    naive = kinds == "naive"
    b_cells = np.isin(kinds, sorted(rs.TRUTH["BCELL"]["cd19_b"][1]))
    share = transitional.sum() / b_cells.sum()
    assert 0.03 < share < 0.18  # around the real 11.7% of B cells
    cd24, cd38 = values["CD24"], values["CD38"]
    # One elongated diagonal cloud: the two markers rise together across naive and transitional.
    assert np.corrcoef(cd24[cd27neg], cd38[cd27neg])[0, 1] > 0.6
    # Its ends where the real cloud's are: (CD38 0.45, CD24 0.2) to (0.8, 0.75).
    assert 0.45 < np.median(cd38[naive]) < 0.68 and 0.3 < np.median(cd24[naive]) < 0.55
    assert 0.68 < np.median(cd38[transitional]) < 0.85
    assert 0.58 < np.median(cd24[transitional]) < 0.8
    for marker in (cd24, cd38):
        # The tip: transitional cells lie above most naive cells on each marker...
        assert np.median(marker[transitional]) > np.percentile(marker[naive], 80)
        # ...with no density valley between the naive mode and the transitional median.
        grid = np.linspace(np.median(marker[naive]), np.median(marker[transitional]), 60)
        density = _density(marker[cd27neg], grid)
        mode = int(np.argmax(density))
        falling = density[mode:]
        rises = np.maximum.accumulate(falling[::-1])[::-1] - falling
        assert rises.max() < 0.03 * density.max(), "a valley between naive and transitional B"


def _cd4_frame(values, kinds):
    """True CD4 T cells and Tregs, and the CD4 cloud's (CD127 peak, SD, CD25 peak, SD) as the
    ``treg`` polygon measures it (its CD127-high side)."""
    treg = np.isin(kinds, sorted(rs.TRUTH["TREG"]["treg"][1]))
    cd4 = np.isin(kinds, sorted(rs.TRUTH["TREG"]["cd4_t"][1]))
    cloud, problem = cloud_on_far_side(values["CD127"][cd4], values["CD25"][cd4], (-1, 1))
    assert cloud is not None, problem
    return cd4, treg, cloud


@pytest.mark.parametrize(("child", "seed"), [(True, 5), (False, 6)])
def test_tregs_are_the_cd25_high_arm_at_intermediate_cd127(tmp_path, child, seed):
    """As on the six scored flowatlas files (``bench/treg_shapes.py``, FlowJo's Tregs in our
    CD4 T cells, in the cloud's own spreads): the CD4 cloud at CD127 0.645-0.705, CD25
    0.34-0.43, sharp on its high side (SD 0.045-0.08, 0.054-0.11); Tregs a median 1.9-7.2
    cloud SDs below its CD127 peak and 1.3-3.6 above its CD25 peak, 9-36% of them below the
    polygon's 0.75-SD CD25 rise; CD127-low relative to the cloud, not negative."""
    values, kinds = _tube_values(tmp_path, "TREG", child, seed)
    cd4, treg, (x_peak, x_sd, y_peak, y_sd) = _cd4_frame(values, kinds)
    assert 0.03 < treg.sum() / cd4.sum() < 0.11  # blood: ~6.7% of CD4
    assert 0.62 < x_peak < 0.72 and 0.04 < x_sd < 0.10
    assert 0.28 < y_peak < 0.45 and 0.04 < y_sd < 0.09
    cd127, cd25 = values["CD127"], values["CD25"]
    z127 = (cd127[treg] - x_peak) / x_sd
    z25 = (cd25[treg] - y_peak) / y_sd
    assert -8.0 < np.median(z127) < -1.8
    assert 1.0 < np.median(z25) < 3.8
    assert 0.05 < np.mean(z25 < 0.75) < 0.45
    assert np.median(cd127[treg]) > 0.3  # intermediate, not CD127-negative
    # The cloud is wide towards the arm, sharp away from it (real low-side SD 0.07-0.35 on
    # CD127, 0.115-0.17 on CD25, 1.5-13x its high-side SD).
    conventional = cd4 & ~treg
    low127 = cd127[conventional][cd127[conventional] < x_peak]
    assert 0.07 < 1.4826 * np.median(x_peak - low127) < 0.35
    high_side = conventional & (cd127 >= x_peak)
    low25 = cd25[high_side][cd25[high_side] < y_peak]
    assert 1.4826 * np.median(y_peak - low25) > 1.4 * y_sd  # real: 1.5-13x


def test_treg_overlap_with_the_cloud_is_the_real_files(tmp_path):
    """What a gate on CD127 x CD25 could reach (25-NN fitted to the truth, cross-validated,
    ``bench.real_gating.ceiling_f1``) lies where the real files' does (0.58-0.83 against
    FlowJo's Foxp3 gate), not far below (0.57-0.68 before the reshape) nor at a clean 0.95."""
    values, kinds = _tube_values(tmp_path, "TREG", False, 8)
    cd4, treg, _ = _cd4_frame(values, kinds)
    shim = SimpleNamespace(masks={"cd4_t": cd4}, space=values)
    assert 0.6 < ceiling_f1(shim, treg) < 0.9


def test_hla_dr_of_memory_tregs_is_a_shoulder_above_the_negative_band(tmp_path):
    """Real CD4 T cells sit on an HLA-DR-negative band at 0.33-0.41, and the memory Tregs'
    HLA-DR is one mode smearing above it (no valley in any of the six files), 2-66% of them
    more than 0.1 above the band; memory Tregs' CD45RA median 0.13-0.22."""
    values, kinds = _tube_values(tmp_path, "TREG", True, 9)
    cd4 = np.isin(kinds, sorted(rs.TRUTH["TREG"]["cd4_t"][1]))
    memory = np.isin(kinds, sorted(rs.TRUTH["TREG"]["memory_treg"][1]))
    hladr = values["HLA-DR"]
    band = landmark_peak(hladr[cd4], "low")
    assert 0.32 < band < 0.42
    above = np.mean(hladr[memory] > band + 0.1)
    assert 0.1 < above < 0.66
    lo, hi = np.percentile(hladr[memory], [1, 99])
    valleys = density_valleys(hladr[memory], (lo, hi), bandwidth=0.04, min_side_share=0.05)
    assert all(depth > 0.8 for depth in valleys.depth.values()), "a valley: two populations"
    assert 0.1 < np.median(values["CD45RA"][memory]) < 0.25


def test_tails_are_heavy_and_compensation_spreads_below_zero(tmp_path):
    """Real CD4 clouds hold 2.8-6.1% of their CD127 beyond 3 robust SDs (0.27% for a normal
    law) and 7-60% negative CD25 values."""
    values, kinds = _tube_values(tmp_path, "TREG", True, 7)
    cloud = np.isin(kinds, ["cd4_naive", "cd4_memory", "cd4_cd127_down"])
    cd127 = values["CD127"][cloud]
    median = np.median(cd127)
    robust_sd = np.subtract(*np.percentile(cd127, [75, 25])) / 1.349
    assert (np.abs(cd127 - median) > 3 * robust_sd).mean() > 0.015
    # Every marker's spread is heavy-tailed, not only CD127's: beyond 4 robust SDs of CD4 lie
    # far more cells than the 0.006% of a normal law.
    cd4 = values["CD4"][cloud]
    robust_sd = np.subtract(*np.percentile(cd4, [75, 25])) / 1.349
    assert (np.abs(cd4 - np.median(cd4)) > 4 * robust_sd).mean() > 0.003
    zero = rs.to_logicle(np.array([0.0]))[0]
    assert 0.05 < (values["CD25"][cloud] < zero).mean() < 0.6


def _beyond(values: np.ndarray, robust_sds: float) -> tuple[float, float]:
    """Shares of ``values`` beyond ``robust_sds`` robust SDs above and below their median."""
    median = np.median(values)
    robust_sd = np.subtract(*np.percentile(values, [75, 25])) / 1.349
    return (
        float(np.mean(values > median + robust_sds * robust_sd)),
        float(np.mean(values < median - robust_sds * robust_sd)),
    )


def test_b_cell_markers_are_heavy_tailed_towards_dim_and_light_towards_bright(tmp_path):
    """As on the real flowatlas files (``bench.marker_tails``): positive populations hold
    0.00-0.49% beyond 3 robust SDs on their bright side (a t law with 4 degrees of freedom:
    1.5%), a negative population's bright side at most 0.02% beyond 4, while the dim side is
    heavy (CD45 4.1-5.8%). A symmetric t tail let 0.7% of the naive B cells into the CD27+ B."""
    values, kinds = _tube_values(tmp_path, "BCELL", True, 8, n_events=15000)
    for kind, marker in (("naive", "IgD"), ("naive", "CD19"), ("t_cell", "CD3")):
        bright, dim = _beyond(values[marker][kinds == kind], 3)
        assert bright < 0.005, (kind, marker, bright)
        assert dim > 0.008, (kind, marker, dim)  # a normal law: 0.13%
    # CD27-negative naive B (5x the memory B) stay below the memory B's CD27.
    naive_cd27 = values["CD27"][kinds == "naive"]
    assert _beyond(naive_cd27, 4)[0] < 0.0005
    memory = np.isin(kinds, sorted(rs.TRUTH["BCELL"]["memory_b"][1]))
    assert (naive_cd27 > np.percentile(values["CD27"][memory], 2)).mean() < 0.002


def test_the_real_files_tail_measure_tells_a_normal_law_from_a_t_law():
    """``bench.marker_tails``, whose numbers the B tube's tails come from: one side beyond 3
    robust SDs, 0.13% for a normal law and 1.5% for a t law with 4 degrees of freedom."""
    from bench.marker_tails import tail_shares

    rng = np.random.default_rng(0)
    normal = tail_shares(0.6 + 0.05 * rng.standard_normal(400000), "bright", "upper")
    heavy = tail_shares(0.6 + 0.05 * rng.standard_t(4, 400000), "dim", "lower")
    assert 0.10 < normal["beyond_3"] < 0.17 and normal["beyond_4"] < 0.01
    assert 1.3 < heavy["beyond_3"] < 1.7 and 0.5 < heavy["beyond_4"] < 0.7


def test_study_files_with_and_without_scatter(tmp_path):
    """Files with scatter carry FSC/SSC/Time and $SPILLOVER; with ``no_scatter_share`` the
    others are FlowJo exports of pre-gated lymphocytes, which the pipeline refuses today (the
    benchmark counts them, with the reason)."""
    options = rs.RealShapedOptions(patients=2, visits=("BL",), events_per_file=3000)
    root = rs.simulate_real_shaped(tmp_path / "with", options)
    study = Study(root)
    for path in study.inbox_files():
        data = read_events(path)
        truth = np.load(root / "truth" / f"{path.stem}.npz")
        assert truth["labels"].size == data.header.n_events == 3000
        assert {"FSC-A", "FSC-H", "SSC-A", "Time"} <= set(data.header.pnn)
        assert data.header.spillover() is not None
        assert refusal(study, path) is None
    exported = rs.RealShapedOptions(**{**options.__dict__, "no_scatter_share": 1.0})
    root = rs.simulate_real_shaped(tmp_path / "without", exported)
    study = Study(root)
    for path in study.inbox_files():
        data = read_events(path)
        assert not {"FSC-A", "SSC-A", "Time"} & set(data.header.pnn)
        assert all(name.startswith("FJComp-") for name in data.header.pnn)
        assert data.header.spillover() is None
        kinds = np.load(root / "truth" / f"{path.stem}.npz")
        names = kinds["label_names"][kinds["labels"]]
        assert names.size == data.header.n_events
        assert not set(names) & {"debris", "doublet", "monocyte", "granulocyte"}
        assert (data.events < 0).any()  # compensated values, negatives kept
        assert "scatter" in refusal(study, path)


def test_memory_b_include_igm_only_and_igd_only_cells_as_blood_does(tmp_path):
    """Blood memory B hold IgM-only (CD27+ IgM+ IgD-/low, ~5% of adult B cells: IgM+ CD27+
    ~20% less IgM+ IgD+ CD27+ ~15%) and IgD-only cells (<1% of B cells) beside IgM memory and
    switched memory B (Klein et al. 1998; Seifert & Kuppers 2009). Here IgM-only are 1.5-3.5%
    of the B cells, CD27+, as bright on IgM as the IgM memory B and IgD-negative to low;
    IgD-only 0.2-0.8%, IgD+ IgM-; both memory B in the truth, neither IgM nor switched memory."""
    values, kinds = _tube_values(tmp_path, "BCELL", False, 11, n_events=40000)
    b_cells = np.isin(kinds, sorted(rs.TRUTH["BCELL"]["cd19_b"][1]))
    igm_only, igd_only = kinds == "igm_only_memory", kinds == "igd_only_memory"
    igm_memory, switched = kinds == "igm_memory", kinds == "switched_memory"
    assert 0.01 < igm_only.sum() / b_cells.sum() < 0.04
    assert 0.001 < igd_only.sum() / b_cells.sum() < 0.01
    cd27_naive = np.median(values["CD27"][kinds == "naive"])
    for cells in (igm_only, igd_only):
        assert np.median(values["CD27"][cells]) > cd27_naive + 0.3
    igd, igm = values["IgD"], values["IgM"]
    # IgM-only: IgM like the IgM memory B's, IgD near the switched cells', well below the IgM
    # memory B's; IgD-only: IgD like the IgM memory B's, IgM like the switched cells'.
    assert abs(np.median(igm[igm_only]) - np.median(igm[igm_memory])) < 0.05
    assert np.median(igd[igm_only]) < np.median(igd[switched]) + 0.08
    assert np.median(igd[igm_only]) < np.median(igd[igm_memory]) - 0.25
    assert np.median(igd[igd_only]) > np.median(igd[igm_memory])
    assert np.median(igm[igd_only]) < np.median(igm[switched]) + 0.05
    truth = rs.TRUTH["BCELL"]
    assert {"igm_only_memory", "igd_only_memory"} <= truth["memory_b"][1]
    for population in ("igm_memory_b", "switched_memory_b"):
        assert not {"igm_only_memory", "igd_only_memory"} & truth[population][1]
