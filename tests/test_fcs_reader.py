"""The FCS reader: exact round trips, agreement with flowkit, and clear rejections."""

from __future__ import annotations

from pathlib import Path

import flowkit as fk
import numpy as np
import pytest

from panels.fcs import FcsReadError, FcsTruncatedError, read_events, scan_header
from simulate.fcs_writer import write_fcs

LAYOUTS = [
    ("F", "<", 32),
    ("F", ">", 32),
    ("D", "<", 64),
    ("I", "<", 16),
    ("I", ">", 16),
    ("I", ">", 32),
    ("I", "<", 24),
    ("I", ">", 24),
]


@pytest.mark.parametrize(("datatype", "byteorder", "bits"), LAYOUTS)
def test_round_trip_every_layout(tmp_path, datatype, byteorder, bits):
    rng = np.random.default_rng(3)
    events = rng.uniform(0, 60000, (500, 5))
    path = write_fcs(
        tmp_path / "x.fcs",
        events,
        ["FSC-A", "FSC-H", "SSC-A", "PE-A", "Time"],
        datatype=datatype,
        byteorder=byteorder,
        bits=bits,
        pnr=[65536] * 5,
    )
    data = read_events(path)
    expected = {"F": events.astype(np.float32), "D": events, "I": np.rint(events)}[datatype]
    np.testing.assert_array_equal(data.events, expected.astype(np.float64))


@pytest.mark.parametrize(
    ("datatype", "byteorder", "bits"), [layout for layout in LAYOUTS if layout[2] != 24]
)
def test_events_equal_flowkit(tmp_path, datatype, byteorder, bits):
    rng = np.random.default_rng(4)
    events = rng.uniform(0, 60000, (400, 4))
    path = write_fcs(
        tmp_path / "x.fcs",
        events,
        ["FSC-A", "FSC-H", "CD19", "Time"],
        datatype=datatype,
        byteorder=byteorder,
        bits=bits,
        pnr=[65536] * 4,
    )
    ours = read_events(path).events
    theirs = fk.Sample(str(path)).get_events(source="raw")
    np.testing.assert_array_equal(ours, theirs)


def test_offsets_only_in_text_segment(tmp_path):
    events = np.arange(40, dtype=float).reshape(10, 4)
    path = write_fcs(tmp_path / "x.fcs", events, ["A", "B", "C", "D"], offsets_in_header=False)
    np.testing.assert_array_equal(read_events(path).events, events)


def test_truncated_copy_is_named_as_such(tmp_path):
    path = write_fcs(tmp_path / "x.fcs", np.ones((1000, 4)), ["A", "B", "C", "D"])
    whole = path.read_bytes()
    cut = tmp_path / "cut.fcs"
    cut.write_bytes(whole[: len(whole) - 100])
    with pytest.raises(FcsTruncatedError) as err:
        scan_header(cut)
    assert "truncated" in err.value.reason and "copy the file again" in err.value.reason


def test_not_fcs_and_zero_events(tmp_path):
    text = tmp_path / "notes.fcs"
    text.write_text("hello")
    with pytest.raises(FcsReadError, match="not an FCS file"):
        scan_header(text)
    empty = write_fcs(tmp_path / "empty.fcs", np.zeros((0, 3)), ["A", "B", "C"])
    with pytest.raises(FcsReadError, match="no events"):
        scan_header(empty)


def test_spillover_keyword_parsed(tmp_path):
    spill = "2,PE-A,FITC-A,1,0.1,0.02,1"
    path = write_fcs(
        tmp_path / "s.fcs",
        np.ones((5, 3)),
        ["FITC-A", "PE-A", "Time"],
        keywords={"$SPILLOVER": spill},
    )
    names, matrix = scan_header(path).spillover()
    assert names == ["PE-A", "FITC-A"]
    np.testing.assert_allclose(matrix, [[1, 0.1], [0.02, 1]])


def _instrument_files() -> list[Path]:
    fcsparser = pytest.importorskip("fcsparser")
    root = Path(fcsparser.__file__).parent / "tests" / "data" / "FlowCytometers"
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() == ".fcs")


def test_real_instrument_files_load_or_are_rejected_with_a_reason():
    files = _instrument_files()
    assert len(files) >= 12
    outcomes = {}
    for path in files:
        try:
            data = read_events(path)
            assert data.events.shape == (data.header.n_events, data.header.n_channels)
            assert np.isfinite(data.events).all()
            outcomes[path.name] = "loaded"
        except FcsReadError as exc:
            assert len(exc.reason) > 30, exc.reason
            outcomes[path.name] = exc.reason
    loaded = [k for k, v in outcomes.items() if v == "loaded"]
    assert len(loaded) == 12, outcomes
    assert "no event data" in outcomes["sample_header.fcs"]
    assert "not an FCS file" in outcomes["corrupted.fcs"]


def test_macsquant_spillover_naming_channels_without_values_means_no_compensation(capsys):
    """Miltenyi MACSQuant writes $SPILLOVER as a channel count and names, no values: the
    instrument recorded no compensation. Read as none, with a note; `inspect` shows it."""
    from flows.cli import main

    macsquant = [p for p in _instrument_files() if "FCS3.1" in str(p) and p.name.startswith("EY_")]
    assert len(macsquant) == 3
    for path in macsquant:
        header = scan_header(path)
        assert header.spillover() is None
        assert any("gives no values: read as no compensation" in n for n in header.notes)
        assert main(["inspect", str(path)]) == 0
        assert "spillover: none" in capsys.readouterr().out


def test_real_files_equal_flowkit_where_flowkit_loads():
    compared = 0
    for path in _instrument_files():
        try:
            theirs = fk.Sample(str(path), ignore_offset_error=True).get_events(source="raw")
        except Exception:
            continue
        ours = read_events(path).events
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=0, err_msg=path.name)
        compared += 1
    assert compared >= 10


def _independent_decode(path: Path, start: int, n: int, p: int, width: int, big: bool):
    """Decode a DATA segment straight from the bytes, written apart from panels.fcs."""
    raw = np.frombuffer(path.read_bytes()[start : start + n * p * width // 8], dtype=np.uint8)
    if width == 32:  # float32
        return raw.view(">f4" if big else "<f4").reshape(n, p).astype(np.float64)
    cells = raw.reshape(n, p, width // 8).astype(np.uint64)
    if not big:
        cells = cells[:, :, ::-1]
    value = np.zeros((n, p), dtype=np.uint64)
    for k in range(width // 8):
        value = (value << np.uint64(8)) | cells[:, :, k]
    return value


def test_cytek_xp5_24_bit_big_endian_matches_independent_decoding():
    path = next(p for p in _instrument_files() if p.name == "Cytek_xP5.fcs")
    data = read_events(path)
    h = data.header
    assert h.pnb == [24] * 8 and h.byteorder == ">"
    value = _independent_decode(path, h.data_start, h.n_events, h.n_channels, 24, big=True)
    # FCS 3.1: bits above the next power of two of $PnR are not data.
    masks = np.array([2 ** int(np.ceil(np.log2(r))) - 1 for r in h.pnr], dtype=np.uint64)
    expected = (value & masks).astype(np.float64)
    for j in range(h.n_channels):  # $PnE f1,f2: log-amplified channel, value = f2*10^(f1*x/r)
        decades, offset = (float(v) for v in h.keywords[f"$P{j + 1}E"].split(","))
        if decades > 0:
            expected[:, j] = (offset or 1.0) * 10 ** (decades * expected[:, j] / h.pnr[j])
    timestep = float(h.keywords.get("$TIMESTEP", "1") or 1)
    expected[:, h.pnn.index("TIME")] *= timestep
    np.testing.assert_array_equal(data.events, expected)


def test_fake_large_file_offsets_from_text_match_independent_decoding():
    path = next(p for p in _instrument_files() if p.name == "fake_large_fcs.fcs")
    data = read_events(path)
    h = data.header
    begin = int(h.keywords["$BEGINDATA"].strip())
    value = _independent_decode(path, begin, h.n_events, h.n_channels, 32, big=True)
    timestep = float(h.keywords.get("$TIMESTEP", "1") or 1)
    value[:, h.pnn.index("Time")] *= timestep
    np.testing.assert_array_equal(data.events, value)


def test_inspect_prints_what_was_read(capsys):
    from flows.cli import main

    path = next(p for p in _instrument_files() if p.name.startswith("SG_2014"))
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "FCS version: FCS3.1" in out and "events: 8129" in out
    assert "repair: DATA segment length" in out
    corrupted = next(p for p in _instrument_files() if p.name == "corrupted.fcs")
    assert main(["inspect", str(corrupted)]) == 2
    assert "not an FCS file" in capsys.readouterr().err


def _patched(tmp_path, name: str, old: bytes, new: bytes, datatype: str = "F") -> Path:
    """A valid file whose TEXT has ``old`` replaced by ``new`` (same total length, by a pad)."""
    events = np.arange(300, dtype=np.float64).reshape(100, 3)
    pad = b"x" * 40
    path = write_fcs(
        tmp_path / name,
        events,
        ["FSC-A", "SSC-A", "Time"],
        keywords={"$ZPAD": pad.decode()},
        datatype=datatype,
        bits=16 if datatype == "I" else 32,
        pnr=[1024.0] * 3,
    )
    raw = path.read_bytes()
    assert old in raw
    grown = len(new) - len(old)
    raw = raw.replace(old, new, 1).replace(pad, pad[: len(pad) - grown], 1)
    path.write_bytes(raw)
    return path


@pytest.mark.parametrize(
    ("old", "new", "datatype", "says"),
    [
        (b"|$TOT|100|", b"|$TOT|1000000000000|", "F", "keyword $TOT=1000000000000 asks for"),
        (b"|$P1R|1024|", b"|$P1R|0.5|", "I", "keyword $P1R='0.5' is not a range"),
    ],
    ids=["TOT-too-large", "PnR-below-1"],
)
def test_a_header_that_cannot_describe_its_data_is_bad_data_with_the_keyword_named(
    tmp_path, old, new, datatype, says
):
    """Not 'truncated' (that sends the scientist to copy again), not a crash retried every
    night: a FcsReadError naming the keyword."""
    path = _patched(tmp_path, "bad.fcs", old, new, datatype)
    with pytest.raises(FcsReadError) as bad:
        read_events(path)
    assert says in bad.value.reason and not isinstance(bad.value, FcsTruncatedError)


def test_negative_data_offsets_are_bad_data_not_an_io_error(tmp_path):
    path = _patched(tmp_path, "neg.fcs", b"|$BEGINDATA|", b"|$BEGINDATA|-")
    raw = bytearray(path.read_bytes())
    raw[26:42] = b"       0       0"  # no HEADER offsets: only TEXT's (negative) are left
    path.write_bytes(bytes(raw))
    with pytest.raises(FcsReadError, match="offsets of the DATA segment .* are impossible"):
        read_events(path)
