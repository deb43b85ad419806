"""Unattended operation: copies in progress, concurrent passes, strategy changes, kill -9."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from flows.watch import CopyTracker

pytestmark = pytest.mark.slow


def _small_study(root: Path, keep=("P01", "P02", "P11"), visits=("BL", "M1")) -> Path:
    from simulate.demo import DemoOptions, simulate_study

    simulate_study(root, DemoOptions(events_per_file=3000, include_bad_files=False))
    for path in list((root / "inbox").iterdir()):
        patient, visit = path.name.split("_")[:2]
        if patient not in keep or visit not in visits:
            path.unlink()
    with open(root / "study.yaml", "a") as fh:
        fh.write("qc_reports: none\n")
    return root


def test_copy_tracker_waits_for_size_and_header(tmp_path):
    from tests.conftest import write_simulated

    whole, _ = write_simulated(tmp_path / "whole.fcs", "TREG", n_events=2000)
    part = tmp_path / "part.fcs"
    data = whole.read_bytes()
    part.write_bytes(data[:3000])
    tracker = CopyTracker(settle_seconds=5, incomplete_timeout=100)
    assert tracker.look([part], now=0.0) == ([], [part])
    assert tracker.look([part], now=6.0) == ([], [part])  # size settled, DATA does not fit
    part.write_bytes(data)
    assert tracker.look([part], now=7.0) == ([], [part])  # grew: settle time starts again
    assert tracker.look([part], now=12.5) == ([part], [])
    stuck = tmp_path / "stuck.fcs"
    stuck.write_bytes(data[:3000])
    tracker.look([stuck], now=0.0)
    assert tracker.look([stuck], now=101.0) == ([stuck], [])  # handed over, to be quarantined


def test_watcher_waits_for_a_growing_file_then_processes_it(tmp_path, prefect_harness):
    from flows.nightly import run_study
    from flows.watch import watch_inbox

    root = _small_study(tmp_path / "study", keep=("P01",), visits=("BL",))
    growing = root / "inbox" / "P01_BL_TREG.fcs"
    content = growing.read_bytes()
    growing.unlink()
    runs, stop = [], threading.Event()

    def run(hold):
        runs.append(list(hold))
        run_study(root, 1, hold)

    watcher = threading.Thread(
        target=watch_inbox,
        args=(root, run),
        kwargs={"settle_seconds": 1.0, "poll_interval": 0.2, "stop": stop, "polling": True},
    )
    watcher.start()
    with open(growing, "wb") as fh:  # a slow copy: 10 chunks over ~3 s
        step = len(content) // 10 + 1
        for k in range(0, len(content), step):
            fh.write(content[k : k + step])
            fh.flush()
            time.sleep(0.3)
    deadline = time.monotonic() + 120
    samples = root / "results" / "samples.csv"
    while time.monotonic() < deadline:
        if samples.exists() and (pd.read_csv(samples).status == "processed").sum() == 2:
            break
        time.sleep(0.5)
    stop.set()
    watcher.join(timeout=60)
    table = pd.read_csv(samples)
    assert sorted(table.file) == ["P01_BL_BCELL.fcs", "P01_BL_TREG.fcs"]
    assert (table.status == "processed").all()  # the partial copy was never quarantined
    assert not (root / "quarantine" / "files" / "P01_BL_TREG.fcs").exists()
    assert any("P01_BL_TREG.fcs" in hold for hold in runs)  # held back while copying


def test_concurrent_passes_process_each_file_once(tmp_path, prefect_harness):
    from flows.nightly import run_study

    root = _small_study(tmp_path / "study")
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(run_study(root, 1))) for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.processed for r in results) == [0, 12]
    with sqlite3.connect(root / "immunomon.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0] == 12


def test_strategy_change_reprocesses_and_keeps_the_old_results(tmp_path, prefect_harness):
    from importlib import resources

    from flows.nightly import run_study

    root = _small_study(tmp_path / "study")
    (root / "local").mkdir()
    strategy = yaml.safe_load((resources.files("gating") / "strategies" / "bcell.yaml").read_text())
    panel = yaml.safe_load((resources.files("panels") / "bcell.yaml").read_text())
    panel["strategy"] = "local/bcell_strategy.yaml"
    (root / "local" / "bcell_panel.yaml").write_text(yaml.safe_dump(panel))
    (root / "local" / "bcell_strategy.yaml").write_text(yaml.safe_dump(strategy))
    config = yaml.safe_load((root / "study.yaml").read_text())
    config["panels"]["BCELL"] = "local/bcell_panel.yaml"
    (root / "study.yaml").write_text(yaml.safe_dump(config))
    assert run_study(root, 1).processed == 12
    strategy["thresholds"]["t_igd"]["default"] = 0.50  # a reviewer revises a gate
    (root / "local" / "bcell_strategy.yaml").write_text(yaml.safe_dump(strategy))
    second = run_study(root, 1)
    assert second.processed == 6 and second.unchanged == 6  # only the B-cell tubes
    with sqlite3.connect(root / "immunomon.db") as conn:
        rows = conn.execute(
            "SELECT sample_id, strategy_sha256, superseded_by FROM samples WHERE panel='BCELL'"
        ).fetchall()
    assert len(rows) == 12
    assert sum(r[2] is not None for r in rows) == 6  # old versions kept, marked superseded
    pops = pd.read_csv(root / "results" / "populations.csv")
    assert pops.groupby(["sample_id", "population"]).size().max() == 1  # never counted twice


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, grandchildren...), from ps."""
    table = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    for line in table.splitlines():
        child, parent = map(int, line.split())
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def _alive(pids: list[int]) -> list[int]:
    def running(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
        except OSError:
            return False

    return [pid for pid in pids if running(pid)]


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL], ids=["TERM", "KILL"])
def test_stopped_mid_run_leaves_nothing_behind_and_a_rerun_equals_an_uninterrupted_run(
    tmp_path, stop_signal
):
    """SIGTERM (systemd, Docker, Prefect cancellation) and kill -9 of `immunomon run` part-way:
    within 10 s no worker, resource tracker or temporary Prefect server of the run is alive,
    the study lock is free, no sample is half-stored, and a rerun gives exactly the results of
    a run never stopped."""
    import fcntl

    root = _small_study(tmp_path / "study", keep=("P01", "P02", "P03", "P11", "P12"))
    clean = tmp_path / "clean"
    shutil.copytree(root, clean)
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)  # the run starts (and must stop) its own server
    cli = [sys.executable, "-m", "flows.cli"]
    proc = subprocess.Popen(
        [*cli, "run", "--study", str(root), "--workers", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=Path(__file__).parents[1],
    )
    db = root / "immunomon.db"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # wait until a few samples are stored, then stop
        try:
            with sqlite3.connect(db, timeout=1) as conn:
                if conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0] >= 3:
                    break
        except sqlite3.OperationalError:
            pass
        time.sleep(0.05)
    family = _descendants(proc.pid)
    assert len(family) >= 3  # two workers and the temporary Prefect server, at least
    stopped_at = time.monotonic()
    proc.send_signal(stop_signal)
    output, _ = proc.communicate(timeout=10)
    if stop_signal == signal.SIGTERM:
        assert proc.returncode == 143, output[-2000:]
        assert "stopped (SIGTERM)" in output
    while _alive(family) and time.monotonic() - stopped_at < 10:
        time.sleep(0.1)
    assert not _alive(family), subprocess.run(
        ["ps", "-fp", ",".join(map(str, family))], capture_output=True, text=True
    ).stdout
    with open(root / ".immunomon.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if still held
    with sqlite3.connect(db) as conn:
        stored = conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
        orphans = conn.execute(
            "SELECT COUNT(*) FROM populations WHERE sample_key NOT IN "
            "(SELECT sample_key FROM samples)"
        ).fetchone()[0]
    assert 3 <= stored < 20 and orphans == 0  # stopped part-way, no partial sample
    for study in (root, clean):
        done = subprocess.run(
            [*cli, "run", "--study", str(study), "--workers", "1"],
            env=env,
            capture_output=True,
            text=True,
            cwd=Path(__file__).parents[1],
        )
        assert done.returncode == 0, done.stderr[-2000:]
    for name in ("populations.csv", "statistics.csv"):
        assert (root / "results" / name).read_bytes() == (clean / "results" / name).read_bytes()


def test_new_content_under_a_processed_name_is_a_new_acquisition(tmp_path, prefect_harness):
    from flows.nightly import run_study
    from tests.conftest import write_simulated

    root = _small_study(tmp_path / "study", keep=("P01",), visits=("BL",))
    target = root / "inbox" / "P01_BL_BCELL.fcs"
    original = target.read_bytes()
    run_study(root, workers=1)
    first = pd.read_csv(root / "results" / "populations.csv")

    write_simulated(tmp_path / "rerun.fcs", "BCELL", n_events=3000, seed=77)
    target.write_bytes((tmp_path / "rerun.fcs").read_bytes())  # the lab re-ran the tube
    summary = run_study(root, workers=1)
    assert (summary.processed, summary.quarantined) == (1, 0)
    pops = pd.read_csv(root / "results" / "populations.csv")
    assert pops.groupby(["sample_id", "population"]).size().max() == 1  # never counted twice
    bcell = pops[pops.sample_id == "P01_BL_BCELL"].set_index("population")["count"]
    before = first[first.sample_id == "P01_BL_BCELL"].set_index("population")["count"]
    assert not bcell.equals(before)  # the new acquisition's numbers are the current ones
    files = pd.read_csv(root / "results" / "samples.csv")
    rows = files[files.file == "P01_BL_BCELL.fcs"]
    assert len(rows) == 2 and sorted(rows.status) == ["processed", "superseded"]
    assert rows[rows.status == "superseded"].reason.str.contains("replaced on").all()
    assert rows.reason.str.contains("replaces sha256").sum() == 1  # the conflict is reported
    assert rows.reason.str.contains("replaced on").sum() == 1
    with sqlite3.connect(root / "immunomon.db") as conn:
        kept = conn.execute(
            "SELECT COUNT(*), COUNT(superseded_by) FROM samples WHERE sample_id='P01_BL_BCELL'"
        ).fetchone()
    assert kept == (2, 1)  # the earlier results are kept, superseded

    target.write_bytes(original)  # and back again: the original is current once more
    run_study(root, workers=1)
    again = pd.read_csv(root / "results" / "populations.csv")
    pd.testing.assert_frame_equal(again, first)


def test_dask_cluster_gives_the_same_results_as_local_processing(tmp_path, prefect_harness):
    """Byte for byte the local results; the files are plain functions on the workers (no
    Prefect there), and the first file's work starts within seconds of connecting (it was
    41 s with Prefect's task engine on the workers; generous bound for a loaded host)."""
    from dask.utils import key_split
    from distributed import LocalCluster
    from distributed.diagnostics.plugin import SchedulerPlugin

    from flows.nightly import run_study

    class Timeline(SchedulerPlugin):
        def __init__(self) -> None:
            self.connected: list[float] = []
            self.work: list[tuple[float, str]] = []

        def add_client(self, scheduler, client: str) -> None:
            self.connected.append(time.time())

        def transition(self, key, start, finish, *args, **kwargs) -> None:
            for span in kwargs.get("startstops") or ():
                if span["action"] == "compute" and "prepare_dask_worker" not in key_split(key):
                    self.work.append((span["start"], key_split(key)))

    root = _small_study(tmp_path / "study")
    local = tmp_path / "local"
    shutil.copytree(root, local)
    run_study(local, workers=2)
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        timeline = Timeline()
        cluster.scheduler.add_plugin(timeline)
        summary = run_study(root, dask_address=cluster.scheduler_address)
        prefixes = set(cluster.scheduler.task_prefixes)
    assert "process_sample_file_noting_warnings" in prefixes  # ran on the cluster
    assert not any("task" in p for p in prefixes)  # no Prefect task run on a worker
    assert (summary.processed, summary.failed) == (12, 0)
    for name in ("populations.csv", "statistics.csv"):
        assert (root / "results" / name).read_bytes() == (local / "results" / name).read_bytes()
    first_work = min(timeline.work)[0] - min(timeline.connected)
    assert first_work < 30, first_work  # 20.9 s at load 13 on 2 cores; 52.7 s before


def test_a_dask_address_that_does_not_answer_is_one_line(tmp_path, capsys, monkeypatch):
    from flows import worker_pool
    from flows.cli import main

    monkeypatch.setattr(worker_pool, "DASK_CONNECT_SECONDS", 2)
    root = _small_study(tmp_path / "study", keep=("P01",), visits=("BL",))
    assert main(["run", "--study", str(root), "--dask", "tcp://127.0.0.1:8839"]) == 2
    err = capsys.readouterr().err
    assert "--dask tcp://127.0.0.1:8839: no Dask scheduler answered" in err
    assert "Traceback" not in err
    assert not (root / "results").exists() or not any((root / "results").iterdir())


def test_deployments_carry_the_study_schedule(tmp_path):
    from flows.serve import build_deployments

    root = _small_study(tmp_path / "study", keep=("P01",), visits=("BL",))
    nightly, report = build_deployments(root, workers=2)
    assert re.fullmatch(r"msc-ins-phase-i-demo-[0-9a-f]{6}-nightly", nightly.name)
    twin = tmp_path / "twin"  # same study.yaml, another folder: another deployment
    shutil.copytree(root, twin)
    assert build_deployments(twin, workers=2)[0].name != nightly.name
    assert nightly.schedules[0].schedule.cron == "0 2 * * *"
    assert nightly.parameters == {"study_root": str(root.resolve()), "workers": 2}
    assert report.parameters == {"study_root": str(root.resolve())}
    nightly, _ = build_deployments(root, workers=2, dask_address="tcp://scheduler:8786")
    assert nightly.parameters["dask_address"] == "tcp://scheduler:8786"
    assert nightly.parameters["workers"] == 1  # the cluster does the work


def _worker_state() -> tuple[bool, bool, int | None]:
    """What a pool worker has loaded: Prefect (it must not), the sample code, BLAS threads."""
    from threadpoolctl import threadpool_info

    threads = [lib["num_threads"] for lib in threadpool_info()]
    return "prefect" in sys.modules, "flows.sample_work" in sys.modules, max(threads, default=None)


def test_workers_load_the_sample_code_without_prefect_and_use_one_thread():
    """Only the flow process talks to Prefect; a worker is one core (BLAS limited after the
    libraries are loaded, or the limit would not reach them)."""
    from flows.worker_pool import run_in_worker_pool, sample_worker_pool

    with sample_worker_pool(2):
        prefect_loaded, sample_code_loaded, threads = run_in_worker_pool(_worker_state)
    assert not prefect_loaded
    assert sample_code_loaded
    assert threads == 1


def test_an_unreachable_prefect_server_is_named_with_what_to_do():
    """The API is started in a thread, in the caller's settings: a server address set for this
    block (as a test harness or a deployment sets it) is the one tried, and its failure reads
    as an instruction, not a traceback."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.prefect_api import PrefectApiError, prefect_api_starting

    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        with pytest.raises(PrefectApiError, match=r"127\.0\.0\.1:9/api did not answer.*unset"):
            with prefect_api_starting():
                pass


def test_study_reference_registers_thresholds_and_regates_the_panel(tmp_path, prefect_harness):
    """`immunomon reference build`: the registered CD45RA threshold is placed once on the
    study's Treg tubes aligned on their landmarks; the next run re-gates only that panel with
    it (old results kept, superseded), and every sample's threshold is its landmark plus the
    study's offset."""
    from cohort.store import Store
    from flows.cli import main
    from flows.nightly import run_study
    from gating.registration import landmark_peak

    root = _small_study(tmp_path / "study", keep=("P01", "P02", "P03", "P11"), visits=("BL", "M1"))
    assert run_study(root, 1).processed == 16
    assert main(["reference", "build", "--study", str(root), "--panel", "TREG"]) == 0
    reference = yaml.safe_load((root / "references" / "treg.yaml").read_text())
    offset = reference["thresholds"]["t_cd45ra"]["offset"]
    assert reference["thresholds"]["t_cd45ra"]["samples"] == 8
    assert sorted(reference["samples"]) == sorted(
        f"{p}_{v}_TREG" for p in ("P01", "P02", "P03", "P11") for v in ("BL", "M1")
    )
    second = run_study(root, 1)
    assert second.processed == 8 and second.unchanged == 8  # only the Treg tubes
    store = Store(root / "immunomon.db")
    sample = store.current_sample("P02_M1_TREG")
    gates = {g.name: g for g in store.applied_gates(sample["sample_key"])}
    store.close()
    mark = gates["t_cd45ra"].gate
    assert mark.method == "registered"
    # Independently: the sample's CD45RA-high peak among CD4 T cells, plus the offset.
    from cohort.study import Study
    from gating.pipeline import gate_sample
    from panels.fcs import read_events
    from panels.resolve import resolve_panel

    study = Study(root)
    data = read_events(root / "inbox" / "P02_M1_TREG.fcs")
    gating = gate_sample(
        data, resolve_panel(study.panels["TREG"], data.header), study.strategies["TREG"]
    )
    landmark = landmark_peak(gating.space["CD45RA"][gating.masks["cd4_t"]], "high")
    assert mark.value == pytest.approx(landmark + offset, abs=1e-9)
    # Without a panel that registers anything, there is nothing to build: one clear line.
    assert main(["reference", "build", "--study", str(root), "--panel", "BCELL"]) == 2


def test_a_broken_clinical_file_is_a_failed_flow_run_saying_what_was_written(
    tmp_path, prefect_harness
):
    """What a Prefect automation and the lab see: the run is named after the study folder and
    the day, ends Failed when a clinical file is broken (samples still committed) with a
    message saying what was written and what was left out, logs each quarantine, and carries
    a table of every file seen and a summary whose quarantine count is the total, new beside
    it, on the pass that quarantined the file and on the next one."""
    import datetime as dt
    import json

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterName,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    from flows.nightly import run_study
    from flows.tasks import sample_batches

    root = _small_study(tmp_path / "failing")
    (root / "inbox" / "P01_BL_NOPANEL.fcs").write_bytes(b"not cytometry")
    visits = root / "clinical" / "visits.csv"
    visits.write_text(visits.read_text().replace("visit_date", "visit_day", 1))
    summary = run_study(root, 1)
    assert summary.processed == 12 and (summary.quarantined, summary.quarantined_total) == (1, 1)
    assert "visits.csv" in summary.cohort_error
    again = run_study(root, 1)
    assert (again.processed, again.quarantined, again.quarantined_total) == (0, 0, 1)
    name = f"failing-{dt.datetime.now(dt.UTC).date().isoformat()}"
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)  # logs are sent in batches: send them before reading
    seen = {}
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])),
            sort=FlowRunSort.START_TIME_ASC,
        )
        assert len(runs) == 2
        for run in runs:
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
            )
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id]))
            )
            seen[run.id] = ({a.key: a for a in artifacts if a.key}, artifacts, logs)
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [runs[0].id]}))
    for run in runs:
        message = run.state.message
        assert run.state.is_failed(), run.state
        assert "wrote the cohort report" in message and "left out: cells/µL" in message, message
        assert "visits.csv" in message and "cohort step stopped" not in message, message
    stages = {t.name.rsplit("-", 1)[0] for t in tasks}
    assert {"intake", "results and statistics", "cohort report"} <= stages, stages
    # Fewer, larger tasks than files; every file is still a row of the files table.
    batches = sample_batches(list(range(12)), 1)
    assert sum(t.name.startswith("process ") for t in tasks) == len(batches) < 12
    by_key, artifacts, logs = seen[runs[0].id]
    table = by_key["failing-files"].data
    rows = json.loads(table) if isinstance(table, str) else table
    assert len(rows) == 13
    assert {r["status"] for r in rows} == {"processed", "quarantined"}
    first_summary = by_key["failing-summary"].data
    assert "| 1 (1 new) |" in first_summary and "left out: cells/µL" in first_summary
    assert "| 1 (0 new) |" in seen[runs[1].id][0]["failing-summary"].data
    assert any(a.type == "progress" and a.data == 100.0 for a in artifacts)
    assert sum("P01_BL_NOPANEL.fcs quarantined" in log.message for log in logs) == 1
    errors = [log.message for log in logs if log.level >= 40]
    assert errors and all("left out: cells/µL" in m for m in errors), errors


def test_watcher_does_not_wait_for_a_file_a_pass_already_quarantined(tmp_path, prefect_harness):
    """A truncated file the nightly run has quarantined stays in the inbox (inputs are never
    modified): the watcher must not report it as 'still copying' on every pass."""
    from flows.nightly import run_study
    from flows.watch import watch_inbox

    root = _small_study(tmp_path / "study", keep=("P01",), visits=("BL",))
    late = root / "inbox" / "P01_BL_TREG.fcs"
    content = late.read_bytes()
    late.unlink()
    whole = (root / "inbox" / "P01_BL_BCELL.fcs").read_bytes()
    (root / "inbox" / "P01_M1_BCELL.fcs").write_bytes(whole[: len(whole) // 2])
    first = run_study(root, 1)
    assert (first.processed, first.quarantined) == (1, 1)
    runs, stop = [], threading.Event()

    def run(hold):
        runs.append(list(hold))
        return run_study(root, 1, hold)

    watcher = threading.Thread(
        target=watch_inbox,
        args=(root, run),
        kwargs={"settle_seconds": 0.5, "poll_interval": 0.2, "stop": stop, "polling": True},
    )
    watcher.start()
    late.write_bytes(content)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not runs:
        time.sleep(0.2)
    stop.set()
    watcher.join(timeout=60)
    assert runs == [[]]  # one pass, for the new file, holding nothing back
    table = pd.read_csv(root / "results" / "samples.csv").set_index("file")
    assert table.loc["P01_BL_TREG.fcs", "status"] == "processed"
    assert table.loc["P01_M1_BCELL.fcs", "status"] == "quarantined"


def test_the_cli_sends_info_logs_to_the_prefect_api(tmp_path, prefect_harness):
    """`immunomon run` without any logging setting: each processed file is an INFO line in
    the flow run's logs on the server (what the lab reads in the UI), not only warnings."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterName,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.settings import PREFECT_API_URL

    root = _small_study(tmp_path / "chatty", keep=("P02",), visits=("BL",))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_LOGGING")}
    env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--study", str(root), "--workers", "1"],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).parents[1],
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_="chatty-"))
        )
        assert len(runs) == 1
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[runs[0].id]))
        )
    info = [log.message for log in logs if log.level == 20]
    assert any("files in inbox: 2 to process" in m for m in info), info
    assert sum(m.startswith("processed ") for m in info) == 2, info


def test_report_waits_for_a_pass_and_says_what_the_flow_says(tmp_path, capsys):
    """`immunomon report` and the served report deployment are one function
    (``flows.outcome.rewrite_cohort_outputs``): the same sentence, exit 2 with a broken
    visits.csv, and like the deployment it waits for a pass holding the study."""
    from cohort.study import Study
    from flows.cli import main

    root = _small_study(tmp_path / "study", keep=("P01",), visits=("BL",))
    visits = root / "clinical" / "visits.csv"
    visits.write_text(visits.read_text().replace("visit_date", "visit_day", 1))
    study = Study(root)
    held, said = threading.Event(), []

    def a_pass() -> None:  # holds the study until the report says it waits
        with study.exclusive():
            held.set()
            deadline = time.monotonic() + 60
            while "waiting for the pass started at" not in "".join(said):
                if time.monotonic() > deadline:
                    break
                said.append(capsys.readouterr().err)
                time.sleep(0.2)

    holder = threading.Thread(target=a_pass)
    holder.start()
    held.wait(30)
    assert main(["report", "--study", str(root)]) == 2
    holder.join(60)
    said.append(capsys.readouterr().err)
    err = "".join(said)
    assert "waiting for the pass started at" in err
    assert re.search(r"incomplete: wrote .*; left out: .*visits\.csv: missing column", err), err


def test_served_deployments_end_failed_with_our_message_and_no_engine_error(
    tmp_path, prefect_harness
):
    """`immunomon serve` as Prefect runs it (a Runner starting each flow run in its own
    process): with visits.csv broken, the nightly and the report deployments both end Failed
    with our message (what was written, what was left out), logged once at ERROR by us, and
    no error of Prefect's engine ('Unexpected result for failed state', a traceback)."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker
    from prefect.runner import Runner

    from flows.serve import build_deployments

    root = _small_study(tmp_path / "served", keep=("P01",), visits=("BL",))
    visits = root / "clinical" / "visits.csv"
    visits.write_text(visits.read_text().replace("visit_date", "visit_day", 1))

    deployments = build_deployments(root, workers=1)  # outside a loop: to_deployment is sync

    async def serve_once() -> list:
        runner = Runner(name="served-test", pause_on_shutdown=False)
        ids = [await runner.aadd_deployment(d) for d in deployments]
        async with get_client() as client:
            runs = [await client.create_flow_run_from_deployment(i) for i in ids]
        await runner.start(run_once=True)  # runs what is due, then returns
        return [run.id for run in runs]

    run_ids = asyncio.run(serve_once())
    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        for run_id in run_ids:
            run = client.read_flow_run(run_id)
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))
            )
            message = run.state.message or ""
            assert run.state.is_failed(), (run.name, run.state)
            assert "left out: cells/µL" in message and "visits.csv" in message, message
            errors = [log.message for log in logs if log.level >= 40]
            assert errors == [message], errors  # ours, once; nothing of Prefect's engine
            text = "\n".join(log.message for log in logs)
            assert "Traceback" not in text and "Unexpected result" not in text, text[-2000:]
    assert (root / "results" / "populations.csv").is_file()


def test_prefect_keeps_a_study_runs_for_the_retention_period_only(tmp_path, prefect_harness):
    """Pruning takes the study's own runs (FOLDER-YYYY-MM-DD) that ended before the retention
    period, with their artifacts; another study's runs, even one whose folder name starts the
    same, and runs still inside the period stay. The temporary server's database is the
    study's own, and compacting it keeps the runs it holds."""
    import datetime as dt
    import sqlite3

    from prefect import flow
    from prefect.artifacts import create_markdown_artifact
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    from flows.prefect_api import compact_database, prune_study_runs, retention

    def a_run(name: str) -> None:
        @flow(name="immunomon-nightly", flow_run_name=name)
        def nightly() -> None:
            create_markdown_artifact(key=f"{name[:5]}-summary", markdown="x")

        nightly()

    for name in ("prunable-2026-11-01", "prunable-2026-11-02", "prunable-copy-2026-11-01"):
        a_run(name)
    assert prune_study_runs("prunable", retention()) == 0  # all inside 30 days
    assert prune_study_runs("prunable", dt.timedelta(0)) == 2
    with get_client(sync_client=True) as client:
        left = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_="prunable"))
        )
    assert [r.name for r in left] == ["prunable-copy-2026-11-01"]
    # compact_database on a Prefect-shaped file: orphan logs go, the file stays usable
    path = tmp_path / "prefect.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE flow_run (id TEXT); CREATE TABLE log (flow_run_id TEXT, m TEXT);"
            "INSERT INTO flow_run VALUES ('kept');"
            "INSERT INTO log VALUES ('kept', 'a'), ('gone', 'b'), (NULL, 'c');"
        )
    db.close()
    compact_database(path)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT m FROM log ORDER BY m").fetchall() == [("a",), ("c",)]
    db.close()


def test_batches_keep_tasks_few_and_workers_busy():
    """Prefect's cost is per task: the demo's 185 files are 8 tasks on 2 workers and 1,850
    are 47 (not 1,850), in file order, every file in exactly one batch; a single file (the
    watcher's usual drop) is one task."""
    from flows.tasks import BATCH_FILES, sample_batches

    for files, workers, tasks in ((185, 2, 8), (1850, 2, 47), (1, 2, 1), (12, 1, 4)):
        batches = sample_batches(list(range(files)), workers)
        assert len(batches) == tasks, (files, workers, len(batches))
        assert [i for b in batches for i in b] == list(range(files))
        assert max(map(len, batches)) <= BATCH_FILES
    assert sample_batches([], 2) == []


def test_cohort_scale_bench_builds_replicates_of_the_demo(tmp_path):
    """bench/cohort_scale.py's 2x cohort: twice the demo's files, the second replicate's
    patients renamed in file names and every clinical table, so intake and the clinical
    checks accept it as one study of 32 patients."""
    import pandas as pd

    from bench.cohort_scale import build_cohort
    from cohort.clinical import load_clinical_parts

    one = build_cohort(tmp_path / "x1", 1, events=300)
    two = build_cohort(tmp_path / "x2", 2, events=300)
    assert two == 2 * one
    names = {p.name for p in (tmp_path / "x2" / "inbox").iterdir()}
    assert {"P01_BL_BCELL.fcs", "P101_BL_BCELL.fcs", "P116_M12_TREG.fcs"} <= names
    patients = pd.read_csv(tmp_path / "x2" / "clinical" / "patients.csv")
    assert len(patients) == 32 and patients.patient_id.is_unique
    loaded = load_clinical_parts(tmp_path / "x2" / "clinical")
    assert loaded.broken == {}, loaded.broken
