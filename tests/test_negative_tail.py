"""A threshold above a reference population's negatives (``tail:``), where positives are a
shoulder with no boundary of their own: HLA-DR+ memory Tregs on real files and the
real-shaped study (``bench/treg_shapes.py``)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from gating.pipeline import gate_sample, place_beyond_negatives
from gating.registration import landmark_peak
from gating.strategy import load_strategy
from panels.fcs import read_events
from panels.resolve import load_panel, resolve_panel
from simulate import real_shaped as rs


def test_the_tail_lies_the_negatives_spreads_above_their_peak_whatever_the_positives():
    rng = np.random.default_rng(1)
    negatives = rng.normal(0.37, 0.035, 6000)
    for positives in (rng.normal(0.57, 0.08, 1500), rng.normal(0.50, 0.05, 300)):
        place = place_beyond_negatives(np.concatenate([negatives, positives]), 3.0, (0.2, 0.68))
        assert place is not None
        assert place.value == pytest.approx(0.37 + 3 * 0.035, abs=0.012)
        assert place.inside == pytest.approx(0.37 + 0.035, abs=0.008)
    # Too few events for a peak, or a tail outside the bounds: no placement.
    assert place_beyond_negatives(negatives[:100], 3.0, (0.2, 0.68)) is None
    assert place_beyond_negatives(negatives, 3.0, (0.2, 0.45)) is None


def _treg_tube(tmp_path, seed: tuple[int, int], child: bool):
    """A real-shaped Treg tube gated by the built-in strategy, and its true labels."""
    rng = np.random.default_rng(list(seed))
    tube = rs.simulate_tube("TREG", rs.sample_shares("TREG", child, rng), 20000, rng)
    path = tmp_path / "tube.fcs"
    labels = rs.write_tube(path, tube, "tube", with_scatter=True)
    data = read_events(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resolved = resolve_panel(load_panel("treg"), data.header)
        gating = gate_sample(data, resolved, load_strategy("treg"))
    return gating, np.array(rs.LABEL_NAMES)[labels]


@pytest.mark.parametrize(
    ("seed", "child", "before"),
    [((7, 4), True, "default"), ((7, 3), False, "valley at 0.23, inside the band")],
)
def test_hla_dr_of_memory_tregs_is_cut_above_the_cd4_band_where_no_boundary_is(
    tmp_path, seed, child, before
):
    """Tubes where treg v6 left ``t_hladr`` at its default (0.35, inside the 0.33-0.41 band:
    81% of memory Tregs "HLA-DR+") or at a valley inside the band (99%): the threshold now
    lies 3 spreads above the CD4 T cells' HLA-DR-negative band, from the data, unflagged, and
    splits the true memory Tregs as the truth does."""
    gating, kinds = _treg_tube(tmp_path, seed, child)
    applied = next(g for g in gating.gates if g.name == "t_hladr")
    assert applied.gate.method == "tail" and applied.from_data, applied.note
    assert "default_threshold:t_hladr" not in gating.flags
    hladr = gating.space["HLA-DR"]
    band = landmark_peak(hladr[gating.masks["cd4_t"]], "low")
    assert band + 0.08 < applied.gate.value < band + 0.16
    memory = np.isin(kinds, sorted(rs.TRUTH["TREG"]["memory_treg"][1]))
    positive = kinds == "treg_memory_hladr"
    above = hladr >= applied.gate.value
    assert above[positive].mean() > 0.7  # most true HLA-DR+ memory Tregs counted
    assert above[memory & ~positive].mean() < 0.05  # few negatives


def test_a_boundary_above_the_negatives_is_kept(tmp_path):
    """The tail replaces only a default or a boundary inside the negatives (below their peak
    + 1 spread): where the per-sample placement finds one above that, as on every demo and
    second-site tube (demo valleys 2.0-4.2 spreads above the CD4 band, dip 0.99-1.00), it
    stays."""
    gating, _ = _treg_tube(tmp_path, (7, 2), True)
    applied = next(g for g in gating.gates if g.name == "t_hladr")
    assert applied.gate.method in ("valley", "mixture_1d"), applied.note
    tail = place_beyond_negatives(
        gating.space["HLA-DR"][gating.masks["cd4_t"]], 3.0, applied.gate.bounds
    )
    assert applied.gate.value >= tail.inside


FLOWATLAS = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "flowatlas_tissues"


@pytest.mark.skipif(
    not (FLOWATLAS / "fcs" / "390C_Lung_029.fcs").is_file(),
    reason=f"FlowAtlas files not found at {FLOWATLAS} (shared/ beside the clone)",
)
def test_a_real_files_hla_dr_is_cut_above_its_band_not_at_the_default():
    """390C lung: no HLA-DR boundary among its memory Tregs; treg v6 took the default 0.35,
    below the file's HLA-DR-negative band at 0.37, and called 87% of them HLA-DR+. The tail
    places it above the band, from the data."""
    from dataclasses import replace

    data = read_events(FLOWATLAS / "fcs" / "390C_Lung_029.fcs")
    panel = replace(load_panel("treg"), enters_at="lymphocytes")
    gating = gate_sample(data, resolve_panel(panel, data.header), load_strategy("treg"))
    applied = next(g for g in gating.gates if g.name == "t_hladr")
    assert applied.gate.method == "tail" and applied.from_data, applied.note
    band = landmark_peak(gating.space["HLA-DR"][gating.masks["cd4_t"]], "low")
    assert 0.33 < band < 0.41 and applied.gate.value > band + 0.05
    share = {p.population: p.pct_parent for p in gating.populations}["hladr_memory_treg"]
    assert 20 < share < 70
