"""Drop-to-result latency of the watched inbox, with the default settle time.

    .venv/bin/python bench/latency.py [--files 3] [--events 100000] [--settle 10]

Starts ``immunomon watch`` on a fresh study (clinical data of the demo, empty inbox), then
copies FCS files of ``--events`` events into the inbox one at a time and measures, for each,
the seconds from the end of the copy until the sample's rows are in
``results/populations.csv``, and until the cohort report has been rewritten.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.performance import write_benchmark_file  # noqa: E402
from simulate.demo import DemoOptions, simulate_study  # noqa: E402


def wait_for(condition, timeout: float, what: str) -> float:
    """Poll ``condition`` every 0.1 s; returns the time it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return time.monotonic()
        time.sleep(0.1)
    raise TimeoutError(f"waited {timeout:.0f} s for {what}")


def has_sample(populations: Path, sample_id: str) -> bool:
    try:
        return sample_id in set(pd.read_csv(populations, usecols=["sample_id"]).sample_id)
    except (FileNotFoundError, ValueError, pd.errors.EmptyDataError):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=3)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--settle", type=float, default=10.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "study"
        simulate_study(root, DemoOptions(events_per_file=1000, include_bad_files=False))
        shutil.rmtree(root / "inbox")
        (root / "inbox").mkdir()
        staged = []
        for k in range(args.files):
            name = f"P{k + 1:02d}_BL_BCELL.fcs"
            staged.append(write_benchmark_file(Path(tmp) / name, args.events, seed=k))
        env = {**os.environ, "PREFECT_HOME": str(Path(tmp) / "prefect")}
        watcher = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "watch", "--study", str(root)]
            + ["--settle", str(args.settle)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        try:
            assert watcher.stdout is not None
            while "watching" not in watcher.stdout.readline():
                pass
            time.sleep(3)  # the start-up scan of the (empty) inbox
            populations = root / "results" / "populations.csv"
            report = root / "reports" / "cohort_report.pdf"
            rows = []
            for path in staged:
                before = report.stat().st_mtime if report.exists() else 0.0
                shutil.copy(path, root / "inbox" / path.name)
                dropped = time.monotonic()
                in_results = wait_for(
                    lambda p=path: has_sample(populations, p.stem), 600, f"{path.stem} results"
                )
                reported = wait_for(
                    lambda b=before: report.exists() and report.stat().st_mtime > b,
                    600,
                    "the cohort report",
                )
                rows.append((path.stem, in_results - dropped, reported - dropped))
                print(
                    f"{path.stem}: in populations.csv after {in_results - dropped:.1f} s, "
                    f"cohort report rewritten after {reported - dropped:.1f} s",
                    flush=True,
                )
        finally:
            watcher.terminate()
            watcher.wait(30)
    results = [r[1] for r in rows]
    print(
        f"{args.events:,}-event files, settle {args.settle:g} s: drop-to-result median "
        f"{statistics.median(results):.1f} s, max {max(results):.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
