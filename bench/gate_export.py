"""Export time of a whole study's gates, and flowkit's reading of them, count for count.

    .venv/bin/python bench/gate_export.py [--study STUDY] [--events 3000]

Without ``--study`` it writes and runs the demo study (185 files, ``--events`` events each)
in a temporary folder first. Then, for ``--format wsp`` and ``--format gatingml``: the seconds
the export takes (store, replay of every sample's gates for the counts, XML), the seconds
flowkit takes to read it back and gate every sample, and how many gate counts are equal to
ours, within the ellipse tolerance, or different.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cohort.store import Store  # noqa: E402
from cohort.study import Study  # noqa: E402
from flows.gates_export import check_export, export_study_gates  # noqa: E402


def measure(root: Path, out_dir: Path) -> list[str]:
    study = Study(root)
    store = Store(study.db_path)
    lines = []
    try:
        for fmt, out in (("wsp", out_dir / "study.wsp"), ("gatingml", out_dir / "gatingml")):
            started = time.perf_counter()
            export = export_study_gates(study, store, fmt, out)
            exported = time.perf_counter() - started
            started = time.perf_counter()
            checks = check_export(export, fmt)
            checked = time.perf_counter() - started
            equal = sum(c.theirs == c.ours for c in checks)
            wrong = sum(not c.agrees for c in checks)
            size = sum(p.stat().st_size for p in set(export.files.values()))
            lines.append(
                f"{fmt}: {len(export.samples)} samples exported in {exported:.1f} s "
                f"({size / 1e6:.1f} MB); flowkit read back and gated them in {checked:.1f} s: "
                f"{len(checks)} gate counts, {equal} equal, {len(checks) - equal - wrong} within "
                f"the ellipse tolerance, {wrong} different; {len(export.skipped)} left out"
            )
    finally:
        store.close()
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", help="a processed study (default: a new demo study)")
    parser.add_argument("--events", type=int, default=3000, help="events per demo file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.study) if args.study else Path(tmp) / "study"
        if not args.study:
            from flows.cli import main as cli

            if cli(["demo", str(root), "--events", str(args.events)]) not in (0, 1):
                return 1
        for line in measure(root, Path(tmp) / "export"):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
