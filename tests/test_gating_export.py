"""Recorded gates reproduce our counts in flowkit, directly and through GatingML 2.0 text."""

from __future__ import annotations

import io

import flowkit as fk
import numpy as np
import pytest

from gating.export import gatingml_text, to_flowkit_strategy
from gating.pipeline import gate_sample, replay_gates
from gating.strategy import load_strategy
from panels.fcs import read_events
from panels.resolve import load_panel, resolve_panel
from simulate.demo import population_frequencies, simulate_sample
from simulate.fcs_writer import write_fcs
from tests.conftest import write_simulated


def _gated(path, name):
    data = read_events(path)
    resolved = resolve_panel(load_panel(name), data.header)
    return data, resolved, gate_sample(data, resolved, load_strategy(name))


def _assert_flowkit_counts_equal(path, gating, strategy):
    result = strategy.gate_sample(fk.Sample(str(path)))
    compared = 0
    for gate in gating.gates:
        if gate.kind == "threshold":
            continue
        assert result.get_gate_count(gate.name) == int(gating.masks[gate.name].sum()), gate.name
        compared += 1
    return compared


# Every gate of the tree, QC included (treg v5: the Treg polygon replaced two rectangles).
@pytest.mark.parametrize(("panel", "name", "gates"), [("BCELL", "bcell", 11), ("TREG", "treg", 10)])
def test_flowkit_reproduces_every_gate_count(tmp_path, panel, name, gates):
    path, _ = write_simulated(tmp_path / "s.fcs", panel, n_events=15000, seed=21)
    data, resolved, gating = _gated(path, name)
    strategy = to_flowkit_strategy(gating.gates, resolved, data.header)
    assert _assert_flowkit_counts_equal(path, gating, strategy) >= gates


def test_gatingml_text_round_trip_reproduces_counts(tmp_path):
    path, _ = write_simulated(tmp_path / "s.fcs", "TREG", n_events=15000, seed=22)
    data, resolved, gating = _gated(path, "treg")
    text = gatingml_text(gating.gates, resolved, data.header)
    assert "gating:Gating-ML" in text and "EllipsoidGate" in text
    parsed = fk.parse_gating_xml(io.BytesIO(text.encode()))
    _assert_flowkit_counts_equal(path, gating, parsed)


def test_clogged_file_exports_its_time_ranges(tmp_path):
    rng = np.random.default_rng(8)
    shares = population_frequencies("BCELL", "adult", "BL", rng, rng)
    events, pnn, _, spill = simulate_sample("BCELL", shares, 30000, rng, clog=True)
    spill_text = ",".join(["7", *pnn[3:10], *(f"{v:.6g}" for v in spill.ravel())])
    pns = ["", "", "", "IgD", "CD24", "CD27", "CD19", "CD38", "CD45", "IgM", ""]
    path = write_fcs(tmp_path / "clog.fcs", events, pnn, pns, {"$SPILLOVER": spill_text})
    data, resolved, gating = _gated(path, "bcell")
    time_gate = next(g for g in gating.gates if g.name == "stable_flow")
    assert len(time_gate.parameters["keep"]) >= 2  # the clog cut the run in two
    removed = next(s for s in gating.qc_steps if s.name == "time_anomalies").removed
    assert 0.03 * 30000 < removed < 0.15 * 30000
    strategy = to_flowkit_strategy(gating.gates, resolved, data.header)
    _assert_flowkit_counts_equal(path, gating, strategy)


def test_replay_of_recorded_gates_gives_the_same_masks(tmp_path):
    path, _ = write_simulated(tmp_path / "s.fcs", "BCELL", n_events=10000, seed=23)
    data, resolved, gating = _gated(path, "bcell")
    replayed = replay_gates(data, resolved, gating.gates)
    for name, mask in gating.masks.items():
        np.testing.assert_array_equal(replayed[name], mask, err_msg=name)
