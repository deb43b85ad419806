"""Gating real expert-gated files as they are, and the gates that must agree with the experts.

The FlowAtlas tissue files (../shared/realdata/flowatlas_tissues, beside the clone) are FlowJo
exports of pre-gated cells without scatter, with the FlowJo workspace that gated them; the
real-file tests skip with the reason where the folder is absent. The full table and plots:
``python -m bench.real_gating``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from gating.adaptive import SEPARATION_FLOOR, place_cloud_arm, place_threshold_by_mixture
from gating.strategy import StrategyError, load_strategy
from panels.resolve import PanelError, load_panel, resolve_panel

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
FLOWATLAS = REALDATA / "flowatlas_tissues"
needs_flowatlas = pytest.mark.skipif(
    not (FLOWATLAS / "flowatlas.wsp").is_file(),
    reason=f"FlowAtlas files not found at {FLOWATLAS} (shared/ beside the clone)",
)


def _exported(name: str):
    from panels.fcs import read_events

    return read_events(FLOWATLAS / "fcs" / name)


@needs_flowatlas
def test_exported_files_enter_at_lymphocytes_and_say_so():
    """Nothing is invented: no scatter is added, the skipped steps are recorded and flagged,
    and every event of the file is a lymphocyte unless a gate below the entry removes it."""
    from gating.pipeline import gate_sample

    data = _exported("428_Donor_Lung_029.fcs")
    panel = replace(load_panel("treg"), enters_at="lymphocytes")
    gating = gate_sample(data, resolve_panel(panel, data.header), load_strategy("treg"))
    assert "entered_at:lymphocytes" in gating.flags
    assert "skipped:lymphocytes" in gating.flags
    assert "skipped:singlets,debris" in gating.flags
    notes = {g.name: g.note for g in gating.gates}
    for step in ("singlets", "qc_passed", "lymphocytes"):
        assert notes[step].startswith("skipped: the file is an export of lymphocytes")
    lymphocytes = gating.masks["lymphocytes"]
    assert np.array_equal(lymphocytes, gating.masks["in_range"])
    assert lymphocytes.sum() >= 0.99 * data.header.n_events
    assert {p.population for p in gating.populations} >= {"t_cells", "cd4_t", "treg"}


@needs_flowatlas
def test_exported_files_without_the_entry_setting_are_refused_with_their_channels():
    data = _exported("428_Donor_Lung_029.fcs")
    with pytest.raises(PanelError, match="missing scatter channel.*FSC-A, SSC-A"):
        resolve_panel(load_panel("treg"), data.header)


@needs_flowatlas
def test_an_entry_gate_the_strategy_lacks_is_an_error_naming_it():
    from gating.pipeline import gate_sample

    data = _exported("428_Donor_Lung_029.fcs")
    panel = replace(load_panel("treg"), enters_at="monocytes", source="study/panels/treg.yaml")
    with pytest.raises(StrategyError, match="study/panels/treg.yaml: enters_at: 'monocytes'"):
        gate_sample(data, resolve_panel(panel, data.header), load_strategy("treg"))


@needs_flowatlas
def test_entered_files_export_to_flowkit_with_our_counts():
    """The passed-through steps and the Treg polygon are real GatingML gates."""
    import flowkit as fk

    from gating.export import to_flowkit_strategy
    from gating.pipeline import gate_sample

    path = FLOWATLAS / "fcs" / "412C_mLN_026.fcs"
    data = _exported(path.name)
    panel = replace(load_panel("treg"), enters_at="lymphocytes")
    resolved = resolve_panel(panel, data.header)
    gating = gate_sample(data, resolved, load_strategy("treg"))
    strategy = to_flowkit_strategy(gating.gates, resolved, data.header)
    result = strategy.gate_sample(fk.Sample(str(path)))
    for gate in gating.gates:
        if gate.kind != "threshold":
            assert result.get_gate_count(gate.name) == int(gating.masks[gate.name].sum()), gate.name


@pytest.fixture(scope="module")
def flowatlas_table():
    if not (FLOWATLAS / "flowatlas.wsp").is_file():
        pytest.skip(f"FlowAtlas files not found at {FLOWATLAS} (shared/ beside the clone)")
    from bench.real_gating import SCORED, evaluate

    return evaluate(FLOWATLAS, only=SCORED).set_index("file")


def test_treg_share_agrees_with_flowjo_on_most_scored_files(flowatlas_table):
    """Treg % of CD4 within max(1.5 points, 20% of FlowJo's) on the 6 files with >= 100
    FlowJo Tregs: measured 2026-12-01, treg v7, 5/6 (v6 4/6): 412C_mLN_026 under, 13.09 vs
    21.51 (its Foxp3+ cells reach down into the CD4 cloud's CD25); 428_Donor_Lung_029 now
    within by 0.01 point (11.44 vs 9.54, allowed 11.45) and 390C_Lung_029 by 0.08 (6.58 vs
    8.00): a change upstream (the CD4 boundary) can tip either out, so the count's floor is 4
    and the v7 rule's own effect is asserted with room: 428's CD25-high Foxp3- cells left
    out (v6 13.76, floor 12.0), 390C and 403C not pushed far under. Every file within 1.7x of
    FlowJo (measured: 412C_mLN 0.61x)."""
    table = flowatlas_table
    assert len(table) == 6
    within = (table.treg_error.abs() <= table.treg_allowed).sum()
    assert within >= 4, table[["treg_pct_cd4", "fj_treg_pct_cd4"]]
    assert table.treg_pct_cd4["428_Donor_Lung_029.fcs"] <= 12.0
    assert "below the arm's median" in table.treg_placement["428_Donor_Lung_029.fcs"]
    assert table.treg_pct_cd4["390C_Lung_029.fcs"] >= 6.0
    assert table.treg_pct_cd4["403C_donor_Lung_026.fcs"] >= 5.5
    ratio = table.treg_pct_cd4 / table.fj_treg_pct_cd4
    assert ratio.between(1 / 1.7, 1.7).all(), ratio


def test_treg_gate_matches_flowjo_event_by_event(flowatlas_table):
    """Median per-event F1 against FlowJo's Foxp3 x CD127 gate, with CD25 for Foxp3:
    measured 0.738 on treg v7 (v6 0.731; target 0.75; the in-file cross-validated
    nearest-neighbour ceiling a median 0.774: 0.58 on 423_Donor_Lung_032, 0.67 on
    412C_BM_032); floor 0.735, and no file below 0.5 (measured 0.54)."""
    assert flowatlas_table.treg_f1.median() >= 0.735
    assert flowatlas_table.treg_f1.min() >= 0.5
    assert flowatlas_table.treg_from_data.all()


def test_a_rule_learned_from_flowjo_on_five_files_misses_the_sixth(flowatlas_table):
    """The leave-one-file-out diagnostic: a classifier learned from FlowJo's answers on the
    other five files, in the cloud_arm's normalised coordinates, on the held-out one.
    Measured 2026-12-01: 3/6 within the Treg target, median F1 0.683 (seeds 0-3: 3/6 each,
    0.648-0.683), 0.720 with its cut chosen on the held-out file itself; below our gate
    (5/6, 0.738) and below the targets (6/6, 0.75): no CD127 x CD25 rule learned from
    FlowJo reaches them. Should this fail because the diagnostic reaches the targets, the
    README's statement that it does not is wrong and the learned rule is worth studying."""
    table = flowatlas_table
    assert table.lofo_f1.notna().all()
    assert table.lofo_within.sum() <= 5
    assert 0.55 <= table.lofo_f1.median() < 0.75
    assert (table.lofo_best_cut_f1 >= table.lofo_f1 - 1e-9).all()
    assert table.lofo_f1.between(0.3, 0.85).all(), table.lofo_f1
    # Our gate, a rule with three limits, does at least as well as the learned one.
    assert table.treg_f1.median() >= table.lofo_f1.median()


def test_cd4_share_of_t_cells(flowatlas_table):
    """CD4 % of T within 3 points of FlowJo's on every scored file (measured 2026-12-01: at
    most 2.96, 412C_BM_032): CD4+ CD8- as FlowJo gates it, T cells CD19- where CD3 shares
    its channel with IgD, the CD4 boundary placed among the CD8- lymphocytes. Event by event
    the CD4 gate agrees with FlowJo's at F1 >= 0.93 (measured 0.94)."""
    table = flowatlas_table
    difference = (table.cd4_pct_t - table.fj_cd4_pct_t).abs()
    assert (difference <= 3.0).all(), difference
    assert table.cd4_f1.min() >= 0.93, table.cd4_f1


def test_our_gate_kind_on_foxp3_reaches_what_cd25_cannot(flowatlas_table):
    """The same cloud_arm, every limit as in the yaml, placed on CD127 x Foxp3 (FlowJo's
    marker; a bench comparison, the trial panel has none): measured 2026-12-01 5/6 within
    the Treg target, median F1 0.905 (412C_mLN 21.17 vs 21.51, F1 0.95; 403C_donor_Lung
    over, 13.17 vs 7.24): the limit on CD25 is the marker, not the gate kind."""
    table = flowatlas_table
    assert table.foxp3_within.sum() >= 4
    assert table.foxp3_f1.median() >= 0.85
    assert table.foxp3_f1.median() > table.treg_f1.median() + 0.1
    assert abs(table.foxp3_treg_pct_cd4["412C_mLN_026.fcs"] - 21.51) <= 4.3


def test_the_lofo_boundary_figure_shows_every_file_with_both_boundaries(tmp_path, monkeypatch):
    """``plot_lofo`` on three synthetic files: one panel per file, each with the learned
    boundary (a contour), our polygon and the events."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench import real_gating

    rng = np.random.default_rng(4)
    files = {}
    for k in range(3):
        z = np.vstack([rng.normal(0, 1, (2000, 2)), rng.normal(4, 1, (300, 2))])
        flowjo = np.r_[np.zeros(2000, bool), np.ones(300, bool)]
        polygon = np.array([[0.5, 9.0], [0.5, 2.3], [2.1, 0.75], [9.0, 0.75], [9.0, 9.0]])
        files[f"f{k}.fcs"] = real_gating.NormalisedCD4(z, flowjo, 0, 13.0, polygon)
    lofo = real_gating.leave_one_file_out(files)
    assert (lofo.lofo_f1 > 0.8).all()  # two clean clusters: learned from the others
    shown = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", shown.append)  # keep the figure to inspect it
    real_gating.plot_lofo(tmp_path / "lofo.png", files, lofo)
    monkeypatch.undo()
    assert (tmp_path / "lofo.png").stat().st_size > 10_000
    panels = [ax for ax in shown[0].axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["f0", "f1", "f2"]
    for ax in panels:
        assert ax.collections and ax.patches  # events + contour, and our polygon
        labels = ax.get_legend_handles_labels()[1]
        assert "our Treg gate" in labels and any(lb.startswith("learned") for lb in labels)
    real_close(shown[0])


@needs_flowatlas
def test_cd8_and_cd19_limits_apply_only_where_the_tube_stains_them():
    """The same file with and without CD8 and CD19 in the panel: without them CD4 T is still
    measured (its note says which limits were left out) and counts the CD4+CD8+ cells and the
    CD3-IgD+ B cells the stained tube excludes."""
    from gating.pipeline import gate_sample

    data = _exported("412C_mLN_026.fcs")
    strategy = load_strategy("treg")
    full = replace(load_panel("treg"), enters_at="lymphocytes")
    bare = replace(
        full, markers={k: v for k, v in full.markers.items() if k not in ("CD8", "CD19")}
    )
    stained = gate_sample(data, resolve_panel(full, data.header), strategy)
    resolved_bare = resolve_panel(bare, data.header)
    unstained = gate_sample(data, resolved_bare, strategy)
    assert not unstained.not_measured
    notes = {g.name: g.note for g in unstained.gates}
    assert "not applied: CD8" in notes["cd4_t"] and "not applied: CD19" in notes["t_cells"]
    # The CD8- lymphocytes (where t_cd4 is placed) are then every lymphocyte, a gate that
    # still exports: flowkit counts what we count.
    assert "not applied: CD8" in notes["cd8_negative"]
    assert np.array_equal(unstained.masks["cd8_negative"], unstained.masks["lymphocytes"])
    import flowkit as fk

    from gating.export import to_flowkit_strategy

    exported = to_flowkit_strategy(unstained.gates, resolved_bare, data.header)
    result = exported.gate_sample(fk.Sample(str(FLOWATLAS / "fcs" / "412C_mLN_026.fcs")))
    for name in ("cd8_negative", "t_cells", "cd4_t", "treg"):
        assert result.get_gate_count(name) == int(unstained.masks[name].sum()), name
    assert "not applied" not in {g.name: g.note for g in stained.gates}["cd4_t"]
    t_stained, t_unstained = stained.masks["t_cells"], unstained.masks["t_cells"]
    assert not (t_stained & ~t_unstained).any()  # the same CD3 boundary, less the CD19+
    t_cd8 = next(g.gate.value for g in stained.gates if g.name == "t_cd8")
    cd8_high = stained.space["CD8"] >= t_cd8
    assert not (stained.masks["cd4_t"] & cd8_high).any()
    assert (unstained.masks["cd4_t"] & cd8_high).sum() >= 30  # FlowJo: 50 CD4+CD8+
    # IgD+ B cells in CD3-IgD: several hundred T "cells" more without CD19.
    assert unstained.masks["t_cells"].sum() - stained.masks["t_cells"].sum() > 300
    assert strategy.not_measurable(("CD8", "CD19")) == {}
    assert "  cd4_t = t_cells where CD4 >= t_cd4 and CD8 < t_cd8 (where stained)" in (
        strategy.definitions()
    )


def _two_normals(distance_in_sd: float, n: int = 6000, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate(
        [rng.normal(0.3, 0.03, n), rng.normal(0.3 + 0.03 * distance_in_sd, 0.03, n)]
    )


def test_a_mixture_boundary_below_the_separation_floor_is_not_taken():
    """Two components about 2 SD apart (Ashman's D ~2, what the real Treg and transitional B
    boundaries came from) give the default, saying why; well apart they give a boundary
    between them, with its D recorded."""
    close = place_threshold_by_mixture(_two_normals(2.1), (0.2, 0.6), 0.5)
    assert not close.from_data and close.value == 0.5
    assert "below the separation floor" in close.note
    assert close.separation is not None and close.separation < SEPARATION_FLOOR
    apart = place_threshold_by_mixture(_two_normals(5.0), (0.2, 0.6), 0.5)
    assert apart.from_data and 0.33 < apart.value < 0.42
    assert apart.separation >= SEPARATION_FLOOR


def test_the_treg_arm_gate_follows_the_cloud_and_finds_the_arm():
    """A CD4 cloud with a CD25-high arm at intermediate CD127: the polygon takes the arm, and
    moves with the cloud when gains shift every event."""
    from flowutils.gating import points_in_polygon

    rng = np.random.default_rng(5)
    cloud = rng.multivariate_normal([0.68, 0.34], [[0.055**2, 0.0], [0.0, 0.06**2]], 9000)
    t = rng.normal(1.0, 0.25, 900)
    arm = np.column_stack([0.68 - 0.15 * t, 0.34 + 0.24 * t]) + rng.normal(0, 0.03, (900, 2))
    points = np.vstack([cloud, arm])
    truth = np.r_[np.zeros(9000, bool), np.ones(900, bool)]
    placed = place_cloud_arm(points[:, 0], points[:, 1], (0.6, 0.05, 0.3, 0.05), min_rise=0.75)
    assert placed.from_data
    inside = points_in_polygon(np.asarray(placed.vertices), points).astype(bool)
    f1 = 2 * (inside & truth).sum() / (inside.sum() + truth.sum())
    assert f1 >= 0.8
    moved = place_cloud_arm(
        points[:, 0] + 0.05, points[:, 1] - 0.04, (0.6, 0.05, 0.3, 0.05), min_rise=0.75
    )
    shift = np.asarray(moved.vertices) - np.asarray(placed.vertices)
    vertices = np.asarray(placed.vertices)
    inner = (vertices > -0.49) & (vertices < 1.49)  # not clipped to the span
    assert np.allclose(shift[inner[:, 0], 0], 0.05, atol=0.01)
    assert np.allclose(shift[inner[:, 1], 1], -0.04, atol=0.01)


def _cloud_arm_and_haze(haze_events: int, seed: int = 8):
    """A CD4 cloud, a Treg arm riding high (CD25 ~4 SD up, CD127 ~4 SD down, as in the lung
    files) and a haze of CD25-dim CD127-lower cells between them (lung's activated
    conventional cells), which fills any dip along the diagonal."""
    rng = np.random.default_rng(seed)
    cloud = rng.multivariate_normal([0.68, 0.34], [[0.055**2, 0.0], [0.0, 0.06**2]], 9000)
    arm = rng.multivariate_normal([0.45, 0.60], [[0.07**2, 0.0], [0.0, 0.06**2]], 500)
    haze = np.column_stack(
        [rng.uniform(0.35, 0.62, haze_events), rng.uniform(0.385, 0.46, haze_events)]
    )
    kind = np.repeat([0, 1, 2], [9000, 500, haze_events])
    return np.vstack([cloud, arm, haze]), kind


def test_the_cd25_edge_rises_with_an_arm_that_rides_high():
    """Where no dip separates the arm, ``below_arm`` puts the CD25 edge 1.5 SD under the
    arm's own median: the haze between arm and cloud is mostly left out, the arm kept."""
    from flowutils.gating import points_in_polygon

    points, kind = _cloud_arm_and_haze(300)
    inside = {}
    for below_arm in (None, 1.5):
        placed = place_cloud_arm(
            points[:, 0], points[:, 1], (0.6, 0.05, 0.3, 0.05), min_rise=0.75, below_arm=below_arm
        )
        assert placed.from_data and "dip" not in placed.note
        inside[below_arm] = points_in_polygon(np.asarray(placed.vertices), points).astype(bool)
    assert "1.5 SD below the arm's median y" in placed.note
    haze_before, haze_after = (inside[k][kind == 2].sum() for k in (None, 1.5))
    assert haze_after < 0.5 * haze_before, (haze_before, haze_after)
    assert inside[1.5][kind == 1].mean() >= 0.95  # the arm itself


def test_the_arm_rule_leaves_low_arms_and_separated_arms_alone():
    """A low arm (its median under min_rise + below_arm) keeps the edge at min_rise; an arm
    a dip separates keeps the dip's diagonal: the same polygon either way."""
    rng = np.random.default_rng(6)
    cloud = rng.multivariate_normal([0.68, 0.34], [[0.055**2, 0.0], [0.0, 0.06**2]], 9000)
    low = rng.multivariate_normal([0.55, 0.43], [[0.04**2, 0.0], [0.0, 0.03**2]], 600)
    rng = np.random.default_rng(5)  # the arm of the test above, which a dip separates
    cloud_5 = rng.multivariate_normal([0.68, 0.34], [[0.055**2, 0.0], [0.0, 0.06**2]], 9000)
    t = rng.normal(1.0, 0.25, 900)
    apart = np.column_stack([0.68 - 0.15 * t, 0.34 + 0.24 * t]) + rng.normal(0, 0.03, (900, 2))
    for points, dip in ((np.vstack([cloud, low]), False), (np.vstack([cloud_5, apart]), True)):
        plain, ruled = (
            place_cloud_arm(points[:, 0], points[:, 1], (0.6, 0.05, 0.3, 0.05), min_rise=0.75, **kw)
            for kw in ({}, {"below_arm": 1.5})
        )
        assert ("dip" in ruled.note) is dip
        assert ruled.vertices == plain.vertices and "arm's median" not in ruled.note


def test_the_treg_strategy_uses_and_states_the_arm_rule():
    """The yaml's ``below_arm`` reaches the placement and the gate's description."""
    spec = next(g for g in load_strategy("treg").gates if g.name == "treg")
    assert spec.below_arm == 1.5
    assert "1.5 SD below the arm's median" in spec.describe()


def test_too_small_a_cloud_falls_back_to_the_default_cloud():
    rng = np.random.default_rng(2)
    placed = place_cloud_arm(
        rng.normal(0.6, 0.05, 80), rng.normal(0.3, 0.05, 80), (0.6, 0.05, 0.3, 0.05)
    )
    assert not placed.from_data and placed.method == "default"
    assert placed.cloud == (0.6, 0.05, 0.3, 0.05)


def test_a_panel_file_declares_where_its_files_enter(tmp_path):
    path = tmp_path / "treg_export.yaml"
    path.write_text(
        "name: treg\nmarkers: {CD3: [CD3], CD4: [CD4], CD25: [CD25], CD127: [CD127]}\n"
        "strategy: treg\nenters_at: lymphocytes\n"
    )
    assert load_panel(str(path)).enters_at == "lymphocytes"
    assert load_panel("treg").enters_at == ""
