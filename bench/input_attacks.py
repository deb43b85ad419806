"""Costs of two input attacks, measured: a header declaring an absurd $PAR (refused before
anything is allocated per channel) and intake's sha256 lookup with and without its index.

    PYTHONPATH=. .venv/bin/python bench/input_attacks.py
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from cohort.store import SCHEMA, Store
from panels.fcs import FcsReadError, scan_header
from simulate.fcs_writer import write_fcs

LOOKUP = (
    "SELECT file_name FROM files WHERE sha256=? AND file_name<>? AND status='processed' "
    "ORDER BY first_seen LIMIT 1"
)  # Store.processed_under_other_name


def absurd_par(folder: Path, n_par: str) -> tuple[float, float]:
    """Seconds and traced peak bytes to refuse a small file declaring ``n_par`` channels."""
    pad = b"x" * 40
    path = write_fcs(
        folder / "par.fcs",
        np.arange(300.0).reshape(100, 3),
        ["A", "B", "C"],
        keywords={"$ZPAD": pad.decode()},
    )
    new = f"|$PAR|{n_par}|".encode()
    raw = path.read_bytes().replace(b"|$PAR|3|", new, 1)
    path.write_bytes(raw.replace(pad, pad[: len(pad) - (len(new) - 8)], 1))
    tracemalloc.start()
    started = time.perf_counter()
    try:
        scan_header(path)
    except FcsReadError:
        pass
    took = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return took, peak


def sha_lookup_us(folder: Path, n_files: int, indexed: bool) -> float:
    """Mean microseconds per sha256 lookup in a files table of ``n_files`` rows."""
    db = folder / f"files-{n_files}-{indexed}.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(SCHEMA)
        conn.executemany(
            "INSERT INTO files VALUES (?,?,1,1,'processed','',NULL,'t','t')",
            [(f"F{i}.fcs", f"{i:064x}") for i in range(n_files)],
        )
    store = Store(db) if indexed else None  # opening a Store creates the indexes
    conn = store.conn if store else sqlite3.connect(db)
    probes = range(0, n_files, max(1, n_files // 500))
    started = time.perf_counter()
    for i in probes:
        conn.execute(LOOKUP, (f"{i:064x}", "other.fcs")).fetchone()
    took = (time.perf_counter() - started) / len(probes) * 1e6
    conn.close()
    return took


def main() -> None:
    folder = Path(tempfile.mkdtemp())
    for n_par in ("20000000", "1000000000"):
        took, peak = absurd_par(folder, n_par)
        print(f"$PAR={n_par}: refused in {took * 1000:.1f} ms, traced peak {peak / 1e6:.2f} MB")
    for n_files in (2000, 20000):
        print(
            f"{n_files} files: sha256 lookup {sha_lookup_us(folder, n_files, False):.1f} us "
            f"without the index, {sha_lookup_us(folder, n_files, True):.1f} us with it"
        )


if __name__ == "__main__":
    main()
