"""What a sample's QC PDF adds to processing it (issue 25: at most half).

    .venv/bin/python bench/qc_reports.py [--files 6] [--events 30000]

Processes the same simulated B-cell tubes as a worker does (``flows.sample_work``) with
``qc_reports: none`` and with ``all``, alternating, and reports the CPU seconds per file of
each and the QC PDF's share. The first file of each kind warms the process (imports, fonts,
the reused gates page), as in a worker that processes many files, and is not counted. One
thread, as in the workers; the order of the two runs alternates between files.
Processing here is the worker's part only (read, gate, count), without the store and the
flow, so the share is if anything overstated.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def qc_report_cost(files: int = 6, events: int = 30000) -> dict[str, float]:
    """CPU seconds per file processed with and without its QC PDF (medians over ``files``
    files after one warm-up of each) and ``qc_share``: (all - none) / none."""
    from threadpoolctl import threadpool_limits

    from bench.performance import write_benchmark_file
    from cohort.study import Study
    from flows.sample_work import process_sample_file
    from simulate.demo import DemoOptions, simulate_study

    with tempfile.TemporaryDirectory() as tmp:
        root = simulate_study(
            Path(tmp) / "study", DemoOptions(events_per_file=500, include_bad_files=False)
        )
        study = Study(root)
        panel, strategy = study.panels["BCELL"], study.strategies["BCELL"]
        name = study.parse_name("P01_BL_BCELL.fcs")
        qc_dir = Path(tmp) / "qc"
        cpu: dict[str, list[float]] = {"none": [], "all": []}
        threadpool_limits(1)  # one thread, as in the workers (flows.worker_pool)
        for k in range(files + 1):
            path = write_benchmark_file(Path(tmp) / f"bench_{k}.fcs", events, seed=k)
            # Alternating which goes first: the second run of a file is the cheaper one.
            for mode in ("none", "all") if k % 2 else ("all", "none"):
                start = time.process_time()
                process_sample_file(path, "0" * 64, name, panel, strategy, str(qc_dir), mode)
                if k:  # the first file of each mode warms the process
                    cpu[mode].append(time.process_time() - start)
    none, with_pdf = statistics.median(cpu["none"]), statistics.median(cpu["all"])
    return {"none": none, "all": with_pdf, "qc_share": (with_pdf - none) / none}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=6)
    parser.add_argument("--events", type=int, default=30000)
    args = parser.parse_args()
    cost = qc_report_cost(args.files, args.events)
    print(
        f"{args.events} events, {args.files} files: processing {cost['none']:.3f} CPU-s/file "
        f"with qc_reports none, {cost['all']:.3f} with all; the QC PDF adds "
        f"{100 * cost['qc_share']:.0f}% (goal: at most 50%)"
    )


if __name__ == "__main__":
    main()
