"""Property-based tests of the reader: random valid files round-trip; corruption never crashes."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from panels.fcs import FcsReadError, read_events
from simulate.fcs_writer import write_fcs

layouts = st.sampled_from([("F", 32), ("D", 64), ("I", 8), ("I", 16), ("I", 24), ("I", 32)])


@st.composite
def fcs_files(draw):
    datatype, bits = draw(layouts)
    n_events = draw(st.integers(1, 300))
    n_channels = draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if datatype == "I":
        events = rng.integers(0, 2**bits, (n_events, n_channels)).astype(np.float64)
        ranges = [float(2**bits)] * n_channels
    else:
        events = rng.normal(0, 1e4, (n_events, n_channels))
        ranges = [262144.0] * n_channels
    return {
        "events": events,
        "pnn": [f"C{j}" for j in range(n_channels)],
        "datatype": datatype,
        "bits": bits,
        "byteorder": draw(st.sampled_from(["<", ">"])),
        "offsets_in_header": draw(st.booleans()),
        "pnr": ranges,
    }


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=fcs_files())
def test_random_valid_files_read_back_exactly(spec):
    with tempfile.TemporaryDirectory() as folder:
        path = write_fcs(
            Path(folder) / "r.fcs",
            spec["events"],
            spec["pnn"],
            datatype=spec["datatype"],
            byteorder=spec["byteorder"],
            bits=spec["bits"],
            pnr=spec["pnr"],
            offsets_in_header=spec["offsets_in_header"],
        )
        data = read_events(path)
    expected = spec["events"]
    if spec["datatype"] == "F":
        expected = expected.astype(np.float32).astype(np.float64)
    np.testing.assert_array_equal(data.events, expected)
    assert data.header.pnn == spec["pnn"]


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    flips=st.lists(
        st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8
    ),
    cut=st.one_of(st.none(), st.floats(0, 1)),
)
def test_corruption_never_crashes(seed, flips, cut):
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as folder:
        path = write_fcs(
            Path(folder) / "v.fcs",
            rng.normal(0, 1e3, (50, 4)),
            ["FSC-A", "SSC-A", "PE-A", "Time"],
            keywords={"$CYT": "x"},
        )
        raw = bytearray(path.read_bytes())
        for position, value in flips:
            raw[int(position * len(raw))] = value
        if cut is not None:
            raw = raw[: int(cut * len(raw))]
        path.write_bytes(bytes(raw))
        try:
            data = read_events(path)
        except FcsReadError as exc:
            assert exc.reason  # rejected, with a reason
        else:
            assert data.events.shape == (data.header.n_events, data.header.n_channels)


def test_duplicate_channel_names_are_made_unique_and_reported(tmp_path):
    path = write_fcs(tmp_path / "d.fcs", np.ones((3, 3)), ["FL1-A", "FL1-A", "Time"])
    data = read_events(path)
    assert data.header.pnn == ["FL1-A_P1", "FL1-A_P2", "Time"]
    assert any("duplicate channel name 'FL1-A'" in n for n in data.header.notes)
