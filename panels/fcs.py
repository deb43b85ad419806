"""Reading FCS files: one entry point for intake, processing and inspection.

The TEXT segment is parsed by fcsparser's metadata-only parse (fast, works on every layout we
have seen). The DATA segment is decoded here with NumPy from the TEXT keywords: fcsparser's own
data reader breaks on big-endian files under NumPy 2, and flowio's pure-Python integer path is
slow on million-event files. Values follow flowio/flowkit pre-processing (PnE log decoding, PnG
gain, timestep) so event arrays equal flowkit's ``Sample`` events.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from panels.errors import ImmunomonError


class FcsReadError(ImmunomonError):
    """A file that cannot be read as FCS; ``reason`` is written for a lab scientist."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path.name}: {reason}")

    def __reduce__(self):  # picklable, so a worker process can report it
        return (type(self), (self.path, self.reason))


class FcsTruncatedError(FcsReadError):
    """The file is shorter than its TEXT segment declares: usually a copy still in progress."""


@dataclass(frozen=True)
class FcsHeader:
    """What the HEADER and TEXT segments say about a file, before any event is read."""

    path: Path
    version: str
    keywords: dict[str, str]
    n_events: int
    pnn: list[str]
    pns: list[str]
    pnb: list[int]
    pnr: list[float]
    datatype: str
    byteorder: str  # '<' or '>'
    data_start: int
    data_end: int  # inclusive, as in the FCS standard
    file_size: int
    notes: list[str] = field(default_factory=list)

    @property
    def n_channels(self) -> int:
        return len(self.pnn)

    @property
    def data_bytes_expected(self) -> int:
        return self.n_events * sum(self.pnb) // 8

    @property
    def instrument(self) -> str:
        return self.keywords.get("$CYT", "").strip()

    def labels(self) -> list[str]:
        """Per channel: ``$PnS`` when written, else ``$PnN``."""
        return [s if s.strip() else n for n, s in zip(self.pnn, self.pns, strict=True)]

    def spillover(self) -> tuple[list[str], np.ndarray] | None:
        """The acquisition spillover matrix (``$SPILLOVER``, ``$SPILL`` or ``SPILL``), if any.

        A keyword that names its channels and gives no values (Miltenyi MACSQuant) is the
        instrument's way of saying it recorded no compensation: None, noted at scan time."""
        for key in SPILLOVER_KEYWORDS:
            text = self.keywords.get(key, "").strip()
            if text:
                if names_without_values(text):
                    return None
                return parse_spillover(text, self.path, key)
        return None


@dataclass(frozen=True)
class FcsData:
    """Events of one FCS file with its header.

    ``stored`` holds the values as the file stores them (float32, float64 or unsigned
    integers, bits above $PnR masked), so a million-event float file costs its own size in
    memory. ``channel`` gives one channel as float64 scaled like flowkit's ``Sample`` ($PnE log
    decoding, $PnG gain, $TIMESTEP); ``events`` gives all of them at once.
    """

    header: FcsHeader
    stored: np.ndarray

    def channel(self, name: str, rows: slice | np.ndarray = slice(None)) -> np.ndarray:
        """One channel (optionally some events: a slice or indices) as float64 in flowkit's
        scale."""
        j = self.header.pnn.index(name)
        return _scale_channel(self.stored[rows, j].astype(np.float64), j, self.header)

    def channels(self, names: list[str], rows: slice | np.ndarray = slice(None)) -> np.ndarray:
        """Several channels as an (events x len(names)) float64 array."""
        columns = [self.header.pnn.index(name) for name in names]
        out = self.stored[rows][:, columns].astype(np.float64)
        for k, j in enumerate(columns):
            _scale_channel(out[:, k], j, self.header)
        return out

    def stored_as_scaled(self, name: str) -> bool:
        """Whether the channel's stored values are already in flowkit's scale (no $TIMESTEP,
        $PnE or $PnG to apply), so they can be compared without a float64 copy."""
        return _channel_scale(self.header.pnn.index(name), self.header).identity

    @property
    def events(self) -> np.ndarray:
        """All channels as an (events x channels) float64 array (a new array each call)."""
        return self.channels(self.header.pnn)


SPILLOVER_KEYWORDS = ("$SPILLOVER", "$SPILL", "SPILL", "SPILLOVER", "$COMP")


def names_without_values(text: str) -> int:
    """The channel count of a spillover keyword that lists ``n`` names and no values, else 0."""
    parts = [p.strip() for p in text.split(",")]
    try:
        n = int(parts[0])
    except ValueError:
        return 0
    return n if n >= 1 and len(parts) == 1 + n else 0


def parse_spillover(text: str, path: str | os.PathLike, key: str) -> tuple[list[str], np.ndarray]:
    """Parse the FCS spillover keyword: ``n, name1..namen, n*n values`` in row order."""
    parts = [p.strip() for p in text.split(",")]
    try:
        n = int(parts[0])
        names = parts[1 : 1 + n]
        values = np.array([float(v) for v in parts[1 + n : 1 + n + n * n]], dtype=np.float64)
        if n < 1 or len(names) != n or values.size != n * n:
            raise ValueError("wrong number of entries")
    except (ValueError, IndexError) as exc:
        raise FcsReadError(
            path,
            f"keyword {key} is not a valid spillover matrix ({exc}): re-export the file with "
            "compensation from the acquisition software, or give the matrix in the panel file",
        ) from exc
    return names, values.reshape(n, n)


def _int_keyword(kw: dict[str, str], key: str, path: Path) -> int:
    raw = str(kw.get(key, "")).strip()
    try:
        return int(float(raw))
    except ValueError:
        raise FcsReadError(
            path, f"keyword {key} is missing or not a number ({raw!r}): the TEXT segment is damaged"
        ) from None


def _to_debug_log(record: logging.LogRecord) -> bool:
    """fcsparser logs its complaints (an illegal UTF-8 byte...) as WARNINGs, which reached the
    terminal before our one-line reason: they go to our log at DEBUG instead. A filter on
    fcsparser's own logger drops the record before any handler, including ones a logging
    setup (Prefect's, pytest's) attaches to its parents later."""
    logging.getLogger("immunomon.fcs").debug("fcsparser: %s", record.getMessage())
    return False


def _quiet_fcsparser() -> None:
    logger = logging.getLogger("fcsparser.api")  # fcsparser's getLogger(__name__)
    if _to_debug_log not in logger.filters:
        logger.addFilter(_to_debug_log)


def _parse_text_segment(path: Path) -> dict:
    import fcsparser  # imported lazily: ~80 ms, and only intake needs it

    _quiet_fcsparser()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fcsparser.parse(str(path), meta_data_only=True, reformat_meta=False)
    except Exception as exc:  # fcsparser raises bare ValueErrors, struct errors, etc.
        raise FcsReadError(
            path,
            f"not a readable FCS file: its HEADER/TEXT segment could not be parsed ({exc}). "
            "Export the sample again from the instrument software as FCS 3.0 or 3.1",
        ) from None


NOT_REGULAR = {
    stat.S_IFIFO: "a named pipe (FIFO)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a folder",
    stat.S_IFLNK: "a symbolic link",
}


def not_a_regular_file(mode: int) -> str:
    """What a file of ``st_mode`` is when it is not a regular file ('' when it is one)."""
    if stat.S_ISREG(mode):
        return ""
    return NOT_REGULAR.get(stat.S_IFMT(mode), "not a regular file")


def open_regular(path: str | os.PathLike, follow_symlinks: bool = True):
    """Open ``path`` for reading only if it is a regular file: a FIFO or a device would block
    or never end, and (with ``follow_symlinks`` False) a link could point anywhere. Opened
    without blocking and checked on the open descriptor, so a swap after a check cannot
    slip through."""
    path = Path(path)
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if not follow_symlinks and os.path.islink(path):
            raise FcsReadError(path, not_regular_reason(NOT_REGULAR[stat.S_IFLNK])) from None
        if os.path.isdir(path):
            raise FcsReadError(path, not_regular_reason(NOT_REGULAR[stat.S_IFDIR])) from None
        raise FcsReadError(path, f"cannot be opened ({exc.strerror})") from None
    kind = not_a_regular_file(os.fstat(fd).st_mode)
    if kind:
        os.close(fd)
        raise FcsReadError(path, not_regular_reason(kind))
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def not_regular_reason(kind: str) -> str:
    """Why an inbox entry or a named file that is ``kind`` (a FIFO, a link...) is not read."""
    return (
        f"is {kind}, not a regular file: only FCS files are read (links are never followed "
        "in inbox/); put the FCS file itself there"
    )


# A HEADER is 58 bytes; TEXT offsets are in bytes 10-25. $PAR is checked against the $PnB
# keywords TEXT actually holds before fcsparser, which builds one key per declared channel.
_HEADER_TEXT_OFFSETS = slice(10, 26)


def _check_declared_channels(path: Path, fh, file_size: int) -> None:
    """Refuse a $PAR the TEXT segment cannot back ($PAR=2e7 in a 133 KB file made fcsparser
    build 2e7 keys: 30 s and 1.7 GB) before anything is allocated per channel."""
    fh.seek(0)
    head = fh.read(58)
    try:
        start, end = int(head[_HEADER_TEXT_OFFSETS][:8]), int(head[_HEADER_TEXT_OFFSETS][8:])
    except ValueError:
        return  # fcsparser names a damaged HEADER
    if not 0 < start < end < file_size:
        return
    fh.seek(start)
    text = fh.read(end - start + 1)
    delimiter = re.escape(text[:1])
    declared = re.search(rb"(?i)" + delimiter + rb"\$PAR" + delimiter + rb"\s*([0-9]+)", text)
    if declared is None:
        return
    widths = set(re.findall(rb"(?i)" + delimiter + rb"\$P([0-9]+)B" + delimiter, text))
    n_par = int(declared[1])
    if n_par > len(widths):
        raise FcsReadError(
            path,
            f"keyword $PAR={n_par} declares {n_par:,} channels but the TEXT segment describes "
            f"only {len(widths)} ($PnB): the header is damaged; export the sample again",
        )


_BYTEORDERS = {"1,2,3,4": "<", "1,2": "<", "1": "<", "4,3,2,1": ">", "2,1": ">"}


def scan_header(path: str | os.PathLike) -> FcsHeader:
    """Read HEADER and TEXT only and locate the DATA segment; never loads events.

    Raises ``FcsTruncatedError`` when the declared DATA segment runs past the end of the file
    and ``FcsReadError`` for anything else a lab scientist must fix.
    """
    path = Path(path)
    with open_regular(path) as fh:
        file_size = os.fstat(fh.fileno()).st_size
        magic = fh.read(6)
        if not re.fullmatch(rb"FCS[0-9]\.[0-9]", magic):
            raise FcsReadError(
                path,
                "not an FCS file (it does not start with 'FCS2.0'/'FCS3.0'/'FCS3.1'): "
                "export the sample from the instrument software as FCS",
            )
        _check_declared_channels(path, fh, file_size)
    meta = _parse_text_segment(path)
    head = meta.pop("__header__", {})
    kw = {str(k).upper(): str(v) for k, v in meta.items()}
    notes: list[str] = []

    n_par = _int_keyword(kw, "$PAR", path)
    n_events = _int_keyword(kw, "$TOT", path)
    if n_par < 1:
        raise FcsReadError(path, "keyword $PAR says the file has no channels")
    pnn = [kw.get(f"$P{i}N", "").strip() for i in range(1, n_par + 1)]
    pns = [kw.get(f"$P{i}S", "").strip() for i in range(1, n_par + 1)]
    pnn = _unique_channel_names(pnn, notes)
    for key in SPILLOVER_KEYWORDS:
        if n := names_without_values(kw.get(key, "")):
            notes.append(f"{key} names {n} channels and gives no values: read as no compensation")
            break
    datatype = kw.get("$DATATYPE", "").strip().upper()
    if datatype not in {"I", "F", "D"}:
        raise FcsReadError(
            path,
            f"keyword $DATATYPE is {datatype!r}; only I, F and D are defined for list-mode data. "
            "Export the file again as FCS 3.0 or 3.1",
        )
    if kw.get("$MODE", "L").strip().upper() != "L":
        raise FcsReadError(path, "the file is not list-mode ($MODE is not L): export list-mode")
    pnb = []
    for i in range(1, n_par + 1):
        width = _int_keyword(kw, f"$P{i}B", path)
        if datatype == "F":
            width = 32
        elif datatype == "D":
            width = 64
        elif width % 8 or width <= 0 or width > 64:
            raise FcsReadError(
                path, f"channel {i} has a bit width $P{i}B={width} that is not whole bytes"
            )
        pnb.append(width)
    pnr = []
    for i in range(1, n_par + 1):
        try:
            pnr.append(float(kw.get(f"$P{i}R", "0").strip() or 0))
        except ValueError:
            pnr.append(0.0)
        if datatype == "I" and not pnr[-1] >= 1:
            raise FcsReadError(
                path,
                f"keyword $P{i}R={kw.get(f'$P{i}R', '')!r} is not a range of integer data (a "
                "whole number of at least 1): the header is damaged; export the sample again",
            )
    byteord = re.sub(r"\s", "", kw.get("$BYTEORD", ""))
    if byteord not in _BYTEORDERS:
        raise FcsReadError(path, f"keyword $BYTEORD={byteord!r} is not a byte order we can decode")

    if n_events <= 0:
        raise FcsReadError(
            path, "the file holds no events ($TOT=0): acquire the sample again or check the export"
        )
    expected = n_events * sum(pnb) // 8
    start, end = _locate_data_segment(path, head, kw, expected, file_size, notes)
    if start >= file_size:
        raise FcsTruncatedError(
            path,
            "the file holds a header but no event data (its DATA segment would start at byte "
            f"{start}, past the end of the {file_size}-byte file): if it is still being copied, "
            "wait for the copy to finish; otherwise export it again from the instrument software",
        )
    if start + expected > file_size:
        raise FcsTruncatedError(
            path,
            f"the file is truncated: its DATA segment should end at byte {start + expected} "
            f"but the file has only {file_size} bytes. The copy was probably interrupted: "
            "copy the file again from the acquisition computer",
        )
    version = str(head.get("FCS format", b"")).strip("b'") or magic.decode()
    return FcsHeader(
        path=path,
        version=version,
        keywords=kw,
        n_events=n_events,
        pnn=pnn,
        pns=pns,
        pnb=pnb,
        pnr=pnr,
        datatype=datatype,
        byteorder=_BYTEORDERS[byteord],
        data_start=start,
        data_end=end,
        file_size=file_size,
        notes=notes,
    )


def _unique_channel_names(pnn: list[str], notes: list[str]) -> list[str]:
    """Make duplicate $PnN names unique by suffixing their channel number, and say so."""
    seen: dict[str, int] = {}
    for name in pnn:
        seen[name] = seen.get(name, 0) + 1
    out = []
    for i, name in enumerate(pnn, start=1):
        if not name:
            name = f"P{i}"
            notes.append(f"channel {i} has no $P{i}N name; called it {name}")
        elif seen[name] > 1:
            new = f"{name}_P{i}"
            notes.append(f"duplicate channel name {name!r} for channel {i}: renamed {new!r}")
            name = new
        out.append(name)
    return out


def _locate_data_segment(
    path: Path, head: dict, kw: dict[str, str], expected: int, file_size: int, notes: list[str]
) -> tuple[int, int]:
    """Choose DATA offsets from the HEADER or from $BEGINDATA/$ENDDATA, whichever fits.

    Writers disagree: blank header offsets for files over 99,999,999 bytes, off-by-one ends,
    header and TEXT offsets that differ. We take the candidate whose length matches
    $TOT x sum($PnB)/8 and record any disagreement as a note.
    """

    def as_int(value) -> int | None:
        try:
            return int(str(value).strip())
        except (TypeError, ValueError):
            return None

    candidates: list[tuple[str, int, int]] = []
    h_start, h_end = as_int(head.get("data start")), as_int(head.get("data end"))
    t_start, t_end = as_int(kw.get("$BEGINDATA")), as_int(kw.get("$ENDDATA"))
    for source, first, last in (
        ("HEADER", h_start, h_end),
        ("$BEGINDATA/$ENDDATA", t_start, t_end),
    ):
        if first is not None and last is not None and (first < 0 or last < first):
            raise FcsReadError(
                path,
                f"the {source} offsets of the DATA segment ({first}..{last}) are impossible "
                "(negative or reversed): the file's header is damaged; export the sample again",
            )
    if h_start and h_end:
        candidates.append(("HEADER", h_start, h_end))
    if t_start and t_end:
        candidates.append(("$BEGINDATA/$ENDDATA", t_start, t_end))
    if not candidates:
        raise FcsReadError(
            path,
            "the file holds a header but no event data (no DATA segment offsets): "
            "export it again from the instrument software",
        )
    for source, start, end in candidates:
        if end - start + 1 == expected:
            if source != candidates[0][0]:
                notes.append(f"DATA offsets taken from {source}: the HEADER offsets do not fit")
            return start, end
    # No candidate has the exact length: keep the start and take the length from $TOT x $PAR.
    source, start, end = candidates[0]
    if start >= file_size:
        raise FcsReadError(
            path,
            "the file holds a header but no event data (the DATA segment starts past the end of "
            "the file): export it again from the instrument software",
        )
    if start + expected > file_size >= end + 1:
        # The DATA segment the offsets declare is all there; $TOT asks for more than it holds.
        raise FcsReadError(
            path,
            f"keyword $TOT={kw.get('$TOT', '').strip()} asks for {expected:,} bytes of events "
            f"but the DATA segment ({source}) holds {end - start + 1:,}: the header is damaged "
            "(not an interrupted copy); export the sample again",
        )
    notes.append(
        f"DATA segment length from {source} is {end - start + 1} bytes but $TOT x $PnB gives "
        f"{expected}; read {expected} bytes from offset {start}"
    )
    return start, start + expected - 1


def read_events(path: str | os.PathLike, header: FcsHeader | None = None) -> FcsData:
    """Load all events of an FCS file; values decode like flowkit's ``Sample`` events.

    Raises FcsReadError when the DATA holds no usable events (all NaN, random bytes)."""
    header = header or scan_header(path)
    with open_regular(header.path) as fh:
        fh.seek(header.data_start)
        raw = fh.read(header.data_bytes_expected)
    if len(raw) != header.data_bytes_expected:
        raise FcsTruncatedError(header.path, "the file is truncated: copy it again")
    stored = _decode(raw, header)
    spans = _spans_to_check(header.n_events)
    _check_events_usable(header, np.concatenate([stored[a : a + n] for a, n in spans]))
    return FcsData(header=header, stored=stored)


# Events whose every value is finite and below this magnitude are plausible measurements:
# no cytometer's scale reaches 1e12, while random bytes read as floats exceed it (or are
# NaN/inf) in about one value in three.
PLAUSIBLE_MAGNITUDE = 1e12
SPANS_CHECKED, ROWS_PER_SPAN = 20, 500  # spread over the file: sees damage, cheap at intake


def _spans_to_check(n_events: int) -> list[tuple[int, int]]:
    """(first event, count) of up to SPANS_CHECKED runs of events spread over the file."""
    if n_events <= SPANS_CHECKED * ROWS_PER_SPAN:
        return [(0, n_events)]
    starts = np.linspace(0, n_events - ROWS_PER_SPAN, SPANS_CHECKED).astype(np.int64)
    return [(int(a), ROWS_PER_SPAN) for a in starts]


def _check_events_usable(header: FcsHeader, rows: np.ndarray) -> None:
    """FcsReadError unless at least half of ``rows`` (events x channels, stored values) hold
    plausible numbers. Integer data always do; float DATA that is all NaN or random is not
    a sample with 100% QC loss but a damaged file."""
    if header.datatype == "I" or rows.size == 0:
        return
    with np.errstate(invalid="ignore", over="ignore"):
        plausible = (np.isfinite(rows) & (np.abs(rows) <= PLAUSIBLE_MAGNITUDE)).all(axis=1)
    good = int(plausible.sum())
    if good * 2 < len(rows):
        raise FcsReadError(
            header.path,
            f"the DATA segment holds no usable events: of {len(rows):,} events checked, "
            f"{len(rows) - good:,} have NaN, infinite or impossibly large values (the data are "
            "damaged, or $DATATYPE/$BYTEORD are wrong); export the sample again",
        )


def check_events_usable(header: FcsHeader) -> None:
    """Read up to 10,000 events in runs spread over the DATA segment (not the whole file)
    and raise FcsReadError when they are not usable numbers (see ``read_events``)."""
    if header.datatype == "I":
        return
    dtype = np.dtype(f"{header.byteorder}{'f4' if header.datatype == 'F' else 'f8'}")
    row_bytes = dtype.itemsize * header.n_channels
    rows = []
    with open_regular(header.path) as fh:
        for first, count in _spans_to_check(header.n_events):
            fh.seek(header.data_start + first * row_bytes)
            rows.append(fh.read(count * row_bytes))
    raw = b"".join(rows)
    values = np.frombuffer(raw[: len(raw) - len(raw) % row_bytes], dtype=dtype)
    _check_events_usable(header, values.reshape(-1, header.n_channels))


def _decode(raw: bytes, h: FcsHeader) -> np.ndarray:
    """DATA bytes as an (events x channels) array in the file's own value type."""
    n, p = h.n_events, h.n_channels
    if h.datatype in {"F", "D"}:
        dtype = np.dtype(f"{h.byteorder}{'f4' if h.datatype == 'F' else 'f8'}")
        values = np.frombuffer(raw, dtype=dtype).reshape(n, p)
        # Native byte order without a copy when the file already has it.
        return values if dtype.isnative else values.astype(dtype.newbyteorder("="))
    widths = {w for w in h.pnb}
    if len(widths) == 1 and widths <= {8, 16, 32, 64}:
        dtype = np.dtype(f"{h.byteorder}u{h.pnb[0] // 8}")
        values = np.frombuffer(raw, dtype=dtype).reshape(n, p).astype(dtype.newbyteorder("="))
    else:
        # Mixed or odd widths (e.g. 24-bit): assemble each column from its bytes.
        rows = np.frombuffer(raw, dtype=np.uint8).reshape(n, sum(h.pnb) // 8)
        values = np.zeros((n, p), dtype=np.uint64)
        offset = 0
        for j, width in enumerate(h.pnb):
            nbytes = width // 8
            cols = rows[:, offset : offset + nbytes].astype(np.uint64)
            order = range(nbytes) if h.byteorder == "<" else range(nbytes - 1, -1, -1)
            for shift, k in enumerate(order):
                values[:, j] |= cols[:, k] << np.uint64(8 * shift)
            offset += nbytes
    # $PnR gives the range: bits above the next power of two are not data (FCS 3.1, 3.2.16).
    for j, r in enumerate(h.pnr):
        if r > 0:
            bits = int(np.ceil(np.log2(r)))
            if bits < h.pnb[j]:
                values[:, j] &= values.dtype.type((1 << bits) - 1)
    return values


@dataclass(frozen=True)
class _ChannelScale:
    """How flowkit scales one stored channel: $TIMESTEP (Time), $PnE log decoding, $PnG."""

    timestep: float | None
    log_decades: tuple[float, float] | None
    gain: float | None

    @property
    def identity(self) -> bool:
        return self.timestep is None and self.log_decades is None and self.gain is None


def _channel_scale(j: int, h: FcsHeader) -> _ChannelScale:
    kw = h.keywords
    is_time = h.pnn[j].lower() == "time"
    timestep = None
    if is_time:
        try:
            timestep = float(kw.get("$TIMESTEP", "").strip())
        except ValueError:
            pass
    pne = kw.get(f"$P{j + 1}E", "0,0").replace(" ", "").split(",")
    try:
        decades, log0 = float(pne[0]), float(pne[1]) if len(pne) > 1 else 0.0
    except ValueError:
        decades, log0 = 0.0, 0.0
    log_decades = None
    if decades > 0 and h.datatype == "I":
        log_decades = (decades, log0 or 1.0)  # FCS 3.1: f2=0 with f1>0 means f2=1
    try:
        gain = float(kw.get(f"$P{j + 1}G", "1").strip() or 1)
    except ValueError:
        gain = 1.0
    # Time is scaled by $TIMESTEP only; its $PnG is not an amplifier gain (as flowkit).
    keep_gain = gain not in (0.0, 1.0) and not is_time
    return _ChannelScale(timestep, log_decades, gain if keep_gain else None)


def _scale_channel(values: np.ndarray, j: int, h: FcsHeader) -> np.ndarray:
    """Scale one float64 channel in place as flowkit does: timestep, $PnE, $PnG."""
    scale = _channel_scale(j, h)
    if scale.timestep is not None:
        values *= scale.timestep
    if scale.log_decades is not None:
        decades, log0 = scale.log_decades
        values[:] = log0 * 10 ** (decades * values / h.pnr[j])
    if scale.gain is not None:
        values /= scale.gain
    return values
