"""The fast paths (table logicle, comparisons in stored or linear units) decide as the exact
computations flowkit does: approximate values only place and draw gates, never count."""

from __future__ import annotations

import numpy as np
import pytest

from gating.membership import raw_within
from gating.space import GatingSpace
from gating.transforms import FAST_ERROR, Logicle
from panels.fcs import read_events
from panels.resolve import load_panel, resolve_panel
from simulate.fcs_writer import write_fcs
from tests.conftest import write_simulated, write_sixteen_bit_copy


@pytest.mark.parametrize("top", [262144.0, 65536.0, 4096.0])
def test_table_logicle_matches_flowutils(top):
    logicle = Logicle(top, 0.5, 4.5, 0.0)
    rng = np.random.default_rng(0)
    values = np.concatenate(
        [
            rng.normal(0, 50, 20000),  # around zero, both signs
            80 * 10 ** rng.normal(0, 1.0, 20000),  # over the decades
            np.array([0.0, -0.0, 1e-30, -1e-30, top, top * 0.999, -top / 10, top * 3]),
        ]
    )
    error = np.abs(logicle.fast(values) - logicle.exact(values))
    # float32 output: its own rounding is ~6e-8; the table adds well under a millionth.
    assert error.max() < FAST_ERROR, float(error.max())


def test_inverse_logicle_round_trips():
    logicle = Logicle(262144.0, 0.5, 4.5, 0.0)
    levels = np.linspace(-0.1, 1.0, 23)
    np.testing.assert_allclose(logicle.exact(logicle.inverse(levels)), levels, atol=1e-9)


def _space(path, panel="bcell"):
    data = read_events(path)
    return data, GatingSpace.of_sample(data, resolve_panel(load_panel(panel), data.header))


@pytest.mark.parametrize("integer_file", [False, True])
def test_limits_decide_as_the_exact_transform(tmp_path, integer_file):
    path, _ = write_simulated(tmp_path / "f.fcs", "BCELL", n_events=20000, seed=4)
    if integer_file:
        path = write_sixteen_bit_copy(path, tmp_path / "i.fcs")
    _, space = _space(path)
    rng = np.random.default_rng(1)
    for dim in space:
        exact = space.exact(dim)
        # Thresholds are placed on a grid, so they coincide with no event's exact value; at
        # random levels the linear-unit comparison must agree event for event.
        for limit in rng.uniform(-0.05, 1.0, 40):
            np.testing.assert_array_equal(space.at_least(dim, limit), exact >= limit)
            np.testing.assert_array_equal(space.below(dim, limit), exact < limit)


def test_stored_limits_decide_as_float64(tmp_path):
    # More events than one block of rows (the last block partial), and Time scaled by
    # $TIMESTEP: compared as float64 values, not as stored.
    path, _ = write_simulated(tmp_path / "f.fcs", "BCELL", n_events=40_000, seed=6)
    simulated = read_events(path)
    keywords = {"$SPILLOVER": simulated.header.keywords["$SPILLOVER"], "$TIMESTEP": "0.01"}
    path = write_fcs(
        tmp_path / "timestep.fcs",
        simulated.events,
        simulated.header.pnn,
        simulated.header.pns,
        keywords,
    )
    data = read_events(path)
    assert data.channel("Time")[-1] == pytest.approx(0.01 * simulated.channel("Time")[-1])
    rng = np.random.default_rng(2)
    every_channel, expected_all = {}, np.ones(data.header.n_events, bool)
    for channel in data.header.pnn:
        values = data.channel(channel)
        lo, hi = np.quantile(values, [0.01, 0.995])
        every_channel[channel] = (float(lo), float(hi))
        expected_all &= (values >= lo) & (values < hi)
    np.testing.assert_array_equal(raw_within(data, every_channel), expected_all)
    for channel in data.header.pnn:
        values = data.channel(channel)
        # Limits between float32 neighbours, on stored values, and wide open.
        picks = rng.choice(values, 5)
        for lo, hi in [
            (float(picks[0]) + 1e-9, None),
            (None, float(picks[1])),
            (float(picks[2]) - 1e-9, float(picks[3]) + 1e-9),
            (None, None),
        ]:
            expected = np.ones(values.size, bool)
            if lo is not None:
                expected &= values >= lo
            if hi is not None:
                expected &= values < hi
            np.testing.assert_array_equal(raw_within(data, {channel: (lo, hi)}), expected)


def test_limits_between_float32_and_float64_values_are_decided_in_float64(tmp_path):
    """A limit falling between an event's float32 and float64 compensated value is decided as
    flowkit decides it, in float64."""
    path, _ = write_simulated(tmp_path / "f.fcs", "BCELL", n_events=5000, seed=9)
    _, space = _space(path)
    dim = "CD19"
    transform = space.transforms[dim]
    precise = space.linear(dim)
    rounded = space.compensated[dim].astype(np.float64)
    differs = np.flatnonzero(rounded != precise)
    assert differs.size > 100
    for event in differs[:20]:
        between = (rounded[event] + precise[event]) / 2
        limit = float(transform.exact(np.array([between]))[0])
        exact = transform.exact(precise)
        np.testing.assert_array_equal(space.at_least(dim, limit), exact >= limit)
        np.testing.assert_array_equal(space.below(dim, limit), exact < limit)


@pytest.mark.parametrize("kind", ["ellipse", "polygon"])
def test_two_dimensional_gates_on_markers_decide_on_exact_values(tmp_path, kind):
    """Ellipse and polygon gates on logicle dimensions agree event for event with flowutils'
    tests on exactly compensated and transformed values (flowkit's decision)."""
    from flowutils.gating import points_in_ellipsoid, points_in_polygon

    from gating.gates import gate_from_record
    from gating.records import ALL_EVENTS

    path, _ = write_simulated(tmp_path / "f.fcs", "BCELL", n_events=20000, seed=12)
    data, space = _space(path)
    dims = ("CD19", "CD27")
    exact = np.column_stack([space.exact(d) for d in dims])
    centre = np.median(exact[exact[:, 0] > 0.5], axis=0)  # the B cells
    if kind == "ellipse":
        parameters = {
            "mean": centre.tolist(),
            "covariance": [[0.004, 0.001], [0.001, 0.02]],
            "distance_square": 6.0,
        }
        expected = points_in_ellipsoid(
            np.array(parameters["covariance"]), centre, parameters["distance_square"], exact
        )
    else:
        x, y = centre
        vertices = [[x - 0.08, y - 0.2], [x + 0.1, y - 0.15], [x + 0.05, y + 0.2], [x - 0.1, y]]
        parameters = {"vertices": vertices}
        expected = points_in_polygon(np.array(vertices), exact)
    gate = gate_from_record(kind, dims, parameters)
    everything = {ALL_EVENTS: np.ones(data.header.n_events, dtype=bool)}
    inside = gate.apply(everything[ALL_EVENTS], everything, space)
    assert 100 < inside.sum() < inside.size - 100  # the gate cuts through the data
    np.testing.assert_array_equal(inside, expected.astype(bool))
