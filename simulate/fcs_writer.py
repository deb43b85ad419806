"""Writing FCS 3.1 list-mode files, for the simulators, tests and benchmarks.

The reader (``panels.fcs``) must read every layout written here: float32/float64, 8/16/24/32-bit
integers, either byte order, offsets in the HEADER or only in TEXT.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def write_fcs(
    path: str | os.PathLike,
    events: np.ndarray,
    pnn: list[str],
    pns: list[str] | None = None,
    keywords: dict[str, str] | None = None,
    *,
    datatype: str = "F",
    byteorder: str = "<",
    bits: int = 32,
    pnr: list[float] | None = None,
    offsets_in_header: bool = True,
) -> Path:
    """Write an FCS 3.1 list-mode file (used by the demo generator, tests and benchmarks)."""
    path = Path(path)
    events = np.asarray(events)
    n, p = events.shape
    if len(pnn) != p:
        raise ValueError("one $PnN name per column is needed")
    pns = pns or [""] * p
    pnr = pnr or [262144.0] * p
    if datatype == "F":
        data = events.astype(f"{byteorder}f4").tobytes()
        width = 32
    elif datatype == "D":
        data = events.astype(f"{byteorder}f8").tobytes()
        width = 64
    elif datatype == "I":
        if bits not in (8, 16, 24, 32):
            raise ValueError("integer bit width must be 8, 16, 24 or 32")
        limit = (1 << bits) - 1
        ints = np.clip(np.rint(events), 0, limit).astype(np.uint32)
        if bits == 24:
            as_bytes = ints.astype("<u4").view(np.uint8).reshape(n, p, 4)[:, :, :3]
            if byteorder == ">":
                as_bytes = as_bytes[:, :, ::-1]
            data = np.ascontiguousarray(as_bytes).tobytes()
        else:
            data = ints.astype(f"{byteorder}u{bits // 8}").tobytes()
        width = bits
    else:
        raise ValueError("datatype must be I, F or D")
    kw: dict[str, str] = {
        "$BYTEORD": "1,2,3,4" if byteorder == "<" else "4,3,2,1",
        "$DATATYPE": datatype,
        "$MODE": "L",
        "$NEXTDATA": "0",
        "$PAR": str(p),
        "$TOT": str(n),
    }
    for j in range(p):
        kw[f"$P{j + 1}N"] = pnn[j]
        if pns[j]:
            kw[f"$P{j + 1}S"] = pns[j]
        kw[f"$P{j + 1}B"] = str(width)
        kw[f"$P{j + 1}E"] = "0,0"
        kw[f"$P{j + 1}R"] = str(int(pnr[j]))
    for key, value in (keywords or {}).items():
        kw[key] = str(value)

    delim = "|"

    def text_for(begin: int, end: int) -> bytes:
        items = dict(kw)
        items.update({"$BEGINDATA": str(begin), "$ENDDATA": str(end)})
        items.update({"$BEGINANALYSIS": "0", "$ENDANALYSIS": "0", "$BEGINSTEXT": "0"})
        items["$ENDSTEXT"] = "0"
        body = "".join(
            f"{delim}{k.replace(delim, delim * 2)}{delim}{str(v).replace(delim, delim * 2)}"
            for k, v in items.items()
        )
        return (body + delim).encode("latin-1")

    text_start = 58
    # Offsets are written into TEXT, whose length depends on them: pad to a fixed width.
    data_start = text_start + len(text_for(10**12, 10**12)) + 1
    data_end = data_start + len(data) - 1
    text = text_for(data_start, data_end)
    text_end = text_start + len(text) - 1
    # Bytes between TEXT and DATA belong to neither segment: pad there, not inside TEXT.
    padding = b" " * (data_start - text_end - 1)
    if offsets_in_header and data_end <= 99_999_999:
        hd = f"{data_start:>8}{data_end:>8}"
    else:
        hd = f"{0:>8}{0:>8}"
    header = f"FCS3.1    {text_start:>8}{text_end:>8}{hd}{0:>8}{0:>8}".encode("ascii")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as fh:
        fh.write(header)
        fh.write(text)
        fh.write(padding)
        fh.write(data)
    os.replace(tmp, path)
    return path
