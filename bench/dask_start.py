"""How long a ``--dask`` pass takes from connecting to the cluster to its first file's work.

    .venv/bin/python bench/dask_start.py [--workers 2] [--files 12]

Starts a local Dask cluster of fresh worker processes (nothing of immunomon or Prefect loaded
in them, as a cluster a lab starts with ``dask worker``), runs one pass of a small demo study
on it (``flows.nightly.run_study(dask_address=...)``, a temporary Prefect API in this
process) and reads from the scheduler, through a plugin: when the pass's client connected,
when the first task began computing on a worker and when the first result came back. Works
on any version of the flow, so before and after a change compare on the same host.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def dask_start_times(workers: int = 2, files: int = 12) -> dict[str, float]:
    """Seconds from the pass's client connecting to the first compute start on a worker
    (``first_work``) and to the first result (``first_result``); and the pass's wall time."""
    from dask.utils import key_split
    from distributed import LocalCluster
    from distributed.diagnostics.plugin import SchedulerPlugin
    from prefect.testing.utilities import prefect_test_harness

    from flows.nightly import run_study
    from simulate.demo import DemoOptions, simulate_study

    class Timeline(SchedulerPlugin):
        def __init__(self) -> None:
            self.connected: list[float] = []
            self.computing: list[float] = []
            self.results: list[float] = []

        def add_client(self, scheduler, client: str) -> None:
            if not client.startswith("fire-and-forget"):
                self.connected.append(time.time())

        def transition(self, key, start, finish, *args, **kwargs) -> None:
            if "prepare_dask_worker" in key_split(key):  # the warm-up, not a file
                return
            if start == "processing" and finish == "memory":
                self.results.append(time.time())
                for span in kwargs.get("startstops") or ():
                    if span["action"] == "compute":
                        self.computing.append((span["start"], key_split(key)))

    with tempfile.TemporaryDirectory(prefix="dask-start-") as tmp:
        root = simulate_study(
            Path(tmp) / "study", DemoOptions(events_per_file=3000, include_bad_files=False)
        )
        for path in sorted((root / "inbox").iterdir())[files:]:
            path.unlink()
        with open(root / "study.yaml", "a") as fh:
            fh.write("qc_reports: none\n")
        with prefect_test_harness(server_startup_timeout=120):
            with LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
            ) as cluster:
                timeline = Timeline()
                cluster.scheduler.add_plugin(timeline)
                started = time.time()
                summary = run_study(root, dask_address=cluster.scheduler_address)
                ended = time.time()
        shutil.rmtree(root, ignore_errors=True)
    connected = min(timeline.connected)
    return {
        "processed": summary.processed,
        "first_work": min(timeline.computing)[0] - connected,
        "first_task": min(timeline.computing)[1],
        "first_result": min(timeline.results) - connected,
        "connect_after": connected - started,
        "wall": ended - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--files", type=int, default=12)
    args = parser.parse_args()
    if str(ROOT) not in sys.path:  # PYTHONPATH first: the bench measures the code it names
        sys.path.append(str(ROOT))
    t = dask_start_times(args.workers, args.files)
    print(
        f"{t['processed']} files on {args.workers} Dask workers: connected "
        f"{t['connect_after']:.1f} s into the pass; first work on a worker "
        f"{t['first_work']:.1f} s after connecting ({t['first_task']}), first result "
        f"{t['first_result']:.1f} s after; pass {t['wall']:.1f} s"
    )


if __name__ == "__main__":
    main()
