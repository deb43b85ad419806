"""A pass over cohorts of 1x, 4x and 10x the demo study: wall and CPU per stage and per process.

    .venv/bin/python bench/cohort_scale.py [--scales 1,4,10] [--events 5000] [--workers 2]
                                            [--qc both|none|all] [--out DIR]

Each cohort is the demo study re-seeded: replicate k (k = 0..N-1) is ``simulate_study`` with
seed + k, its patients renamed P01 -> P{k}01 in the file names and in every clinical CSV, so
10x is 160 patients and 1,850 files (the demo's bad files included). Each is run with
``immunomon run`` (a temporary Prefect server, as a lab runs it without PREFECT_API_URL),
``-v`` so Prefect's task lines mark the stages, and then run a second time (nothing new).

While a pass runs, every process of its tree is sampled from /proc every 0.2 s: CPU seconds
(user + system) per process, classed as the flow process (the command), the workers (its
process pool), Prefect's temporary server (uvicorn) and other (multiprocessing's resource
tracker). Each CPU sample is also given to the stage running at that moment, the stages
being read from the timestamps of Prefect's task lines: start-up (until intake starts),
intake, processing (until the results task), results and statistics, cohort report, and
stopping (after the report until the command exits). Prefect's share is the server's CPU plus
the flow process's CPU outside the stages' own work, over all CPU: it is reported both as
'server only' and 'server + flow process' (the flow process is mostly Prefect's client, the
store writes being a few ms a file), so the number is an upper bound.

Processing (intake and the files' batches), writing (results and statistics, cohort
report) and the fixed cost (start-up, stopping) are each the CPU of their own stages: an
unchanged second pass writes nothing (``reports.written_from``), so a first pass minus a
second is processing and writing together. With ``--qc both`` each scale runs twice on fresh
copies: ``qc_reports: none`` and ``all`` (a QC PDF for every sample), so the cost of the QC
PDFs is the difference of their processing stages.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")
STAGES = ("start-up", "intake", "processing", "results and statistics", "cohort report", "stopping")
# Prefect's lines with -v: "10:27:39.493 | INFO    | Task run 'intake-3f2' - Finished in ..."
RUN_LINE = re.compile(
    r"^(?P<clock>\d\d:\d\d:\d\d\.\d{3}) \| \w+\s*\| (?P<kind>Task|Flow) run "
    r"'(?P<name>[^']+)' - (?P<what>Beginning|Finished)"
)


def build_cohort(root: Path, scale: int, events: int, seed: int = 20261125) -> int:
    """The demo study ``scale`` times over (re-seeded, patients renamed); returns its files."""
    from simulate.demo import DemoOptions, simulate_study

    simulate_study(root, DemoOptions(events_per_file=events, seed=seed))
    shutil.rmtree(root / "truth", ignore_errors=True)
    for k in range(1, scale):
        with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
            replicate = Path(tmp) / "study"
            simulate_study(replicate, DemoOptions(events_per_file=events, seed=seed + k))
            for path in (replicate / "inbox").iterdir():
                path.rename(root / "inbox" / _renamed(path.name, k))
            for table in (replicate / "clinical").glob("*.csv"):
                with open(table, newline="") as source:
                    rows = list(csv.reader(source))
                with open(root / "clinical" / table.name, "a", newline="") as target:
                    csv.writer(target).writerows([[_renamed(v, k) for v in r] for r in rows[1:]])
    return len(list((root / "inbox").iterdir()))


def _renamed(text: str, replicate: int) -> str:
    """P01 of replicate 3 is P301, in a file name or a CSV cell."""
    return re.sub(r"(?<![A-Za-z0-9])P(\d\d)(?![0-9])", rf"P{replicate}\1", text)


def _descendants(pid: int) -> list[int]:
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        found += [int(c) for c in children]
        frontier += [int(c) for c in children]
    return found


def _cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def _kind(pid: int, command_pid: int) -> str:
    if pid == command_pid:
        return "flow process"
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "other"
    if "uvicorn" in cmdline:
        return "Prefect server"
    if "resource_tracker" in cmdline:
        return "other"
    if "multiprocessing" in cmdline or "spawn_main" in cmdline:
        return "workers"
    return "other"


@dataclass
class PassMeasure:
    wall: float = 0.0
    cpu_by_process: dict[str, float] = field(default_factory=dict)
    cpu_by_stage: dict[str, float] = field(default_factory=dict)
    wall_by_stage: dict[str, float] = field(default_factory=dict)
    cpu_total_rusage: float = 0.0
    exit_code: int = 0
    summary_line: str = ""

    @property
    def cpu(self) -> float:
        return sum(self.cpu_by_process.values())


def _stage_bounds(stderr: str, day: dt.date, started: float, ended: float) -> list[tuple]:
    """(stage, start, end) in epoch seconds. Prefect logs when a run begins and when each task
    finishes: start-up lasts until the flow run begins, and each stage until its task (for
    processing, the last batch) finished."""
    finished: dict[str, float] = {}
    begun = None
    for line in stderr.splitlines():
        match = RUN_LINE.match(line)
        if not match:
            continue
        clock = dt.datetime.combine(day, dt.time.fromisoformat(match.group("clock")))
        when = clock.astimezone().timestamp()
        if match.group("kind") == "Flow" and match.group("what") == "Beginning":
            begun = begun or when
        elif match.group("kind") == "Task" and match.group("what") == "Finished":
            name = re.sub(r"-[0-9a-f]{3}$", "", match.group("name"))
            finished["processing" if name.startswith("process ") else name] = when
    ends = [begun or started]
    for stage in STAGES[1:-1]:
        ends.append(max(finished.get(stage, ends[-1]), ends[-1]))
    ends.append(ended)
    starts = [started, *ends[:-1]]
    return list(zip(STAGES, starts, ends, strict=True))


def measure_pass(study: Path, workers: int, log: Path | None = None) -> PassMeasure:
    """One ``immunomon run`` over ``study``, its process tree sampled every 0.2 s."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PREFECT_API_URL", None)
    command = [
        sys.executable,
        "-m",
        "flows.cli",
        "-v",
        "run",
        "--study",
        str(study),
        "--workers",
        str(workers),
    ]
    day = dt.datetime.now().date()
    before = os.times()
    started = time.time()
    with tempfile.TemporaryFile("w+") as err, tempfile.TemporaryFile("w+") as out:
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env, cwd=ROOT)
        last_cpu: dict[int, float] = {}
        kind_of: dict[int, str] = {}
        samples: list[tuple[float, dict[int, float]]] = []
        while process.poll() is None:
            now = time.time()
            snapshot = {}
            for pid in [process.pid, *_descendants(process.pid)]:
                cpu = _cpu_seconds(pid)
                if cpu is not None:
                    snapshot[pid] = cpu
                    if kind_of.get(pid, "other") == "other":  # a child seen before its exec
                        kind_of[pid] = _kind(pid, process.pid)
            samples.append((now, snapshot))
            last_cpu.update(snapshot)
            time.sleep(0.2)
        ended = time.time()
        after = os.times()
        err.seek(0)
        out.seek(0)
        stderr, stdout = err.read(), out.read()
    if log is not None:
        log.write_text(stderr)
    measure = PassMeasure(wall=ended - started, exit_code=process.returncode)
    measure.cpu_total_rusage = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    for pid, cpu in last_cpu.items():
        kind = kind_of[pid]
        measure.cpu_by_process[kind] = measure.cpu_by_process.get(kind, 0.0) + cpu
    # What the samples missed (the last 0.2 s of each process, and short-lived ones) is put on
    # the flow process's line from the kernel's total for the whole tree.
    missed = max(measure.cpu_total_rusage - measure.cpu, 0.0)
    measure.cpu_by_process["not sampled"] = missed
    bounds = _stage_bounds(stderr, day, started, ended)
    previous: dict[int, float] = {}
    for when, snapshot in samples:
        delta = sum(cpu - previous.get(pid, 0.0) for pid, cpu in snapshot.items())
        previous.update(snapshot)
        stage = next((s for s, a, b in bounds if a <= when < b), "stopping")
        measure.cpu_by_stage[stage] = measure.cpu_by_stage.get(stage, 0.0) + delta
    measure.cpu_by_stage["stopping"] = measure.cpu_by_stage.get("stopping", 0.0) + missed
    for stage, start, end in bounds:
        measure.wall_by_stage[stage] = measure.wall_by_stage.get(stage, 0.0) + max(end - start, 0)
    measure.summary_line = next(
        (line for line in stdout.splitlines() if line.startswith("run ")), stderr[-300:]
    )
    return measure


def _report(label: str, files: int, m: PassMeasure) -> str:
    processes = ", ".join(f"{k} {v:.1f}" for k, v in sorted(m.cpu_by_process.items()))
    stages = ", ".join(
        f"{s} {m.wall_by_stage.get(s, 0):.1f}/{m.cpu_by_stage.get(s, 0):.1f}" for s in STAGES
    )
    server = m.cpu_by_process.get("Prefect server", 0.0)
    flow = m.cpu_by_process.get("flow process", 0.0)
    return (
        f"{label}: {files} files, exit {m.exit_code}, wall {m.wall:.1f} s, CPU {m.cpu:.1f} s "
        f"({m.cpu / files:.3f} s/file)\n"
        f"  CPU-s by process: {processes}\n"
        f"  wall/CPU s by stage: {stages}\n"
        f"  Prefect share of CPU: server only {100 * server / m.cpu:.1f}%, "
        f"server + flow process {100 * (server + flow) / m.cpu:.1f}%\n"
        f"  {m.summary_line}"
    )


# What each stage's CPU is counted as: the work on the files, the writing of the results,
# statistics and cohort report, and what every pass pays whatever it does.
PROCESSING_STAGES = ("intake", "processing")
WRITING_STAGES = ("results and statistics", "cohort report")
FIXED_STAGES = ("start-up", "stopping")


def stage_cpu(measure: dict, stages: tuple[str, ...]) -> float:
    """CPU-s of a pass (``PassMeasure.__dict__``) in these stages."""
    return sum(measure["cpu_by_stage"].get(stage, 0.0) for stage in stages)


def cost_lines(results: list[dict]) -> list[str]:
    """Per scale and QC setting: the first pass's processing (intake and the files' batches),
    its writing (results, statistics, cohort report) and its fixed cost (start-up, stopping),
    each from its own stages, and the unchanged second pass's total and writing (none: it
    leaves the outputs as they are). Then what QC PDFs for every sample add to processing
    (the processing stages with ``qc_reports: all`` minus those with ``none``; issue 25: at
    most half), so neither the writing nor start-up's run-to-run noise enters it."""
    lines = []
    for r in sorted(results, key=lambda r: (r["scale"], r["qc_reports"])):
        first = r["first"]
        line = (
            f"{r['scale']}x, QC PDFs {r['qc_reports']}, first pass: processing "
            f"{stage_cpu(first, PROCESSING_STAGES):.1f} CPU-s, writing "
            f"{stage_cpu(first, WRITING_STAGES):.1f}, start-up and stopping "
            f"{stage_cpu(first, FIXED_STAGES):.1f}"
        )
        if "second" in r:
            second = r["second"]
            line += (
                f"; unchanged second pass {sum(second['cpu_by_process'].values()):.1f} CPU-s, "
                f"of it writing {stage_cpu(second, WRITING_STAGES):.1f}"
            )
        lines.append(line)
    for scale in sorted({r["scale"] for r in results}):
        rows = {r["qc_reports"]: r for r in results if r["scale"] == scale}
        if "none" not in rows or "all" not in rows:
            continue
        processing = stage_cpu(rows["none"]["first"], PROCESSING_STAGES)
        added = stage_cpu(rows["all"]["first"], PROCESSING_STAGES) - processing
        lines.append(
            f"{scale}x: QC PDFs for every sample add {added:.1f} CPU-s to processing's "
            f"{processing:.1f} = {added / processing:.2f}x (goal: at most 0.5x)"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="1,4,10")
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--qc", choices=("both", "none", "all"), default="both")
    parser.add_argument("--second-pass", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", type=Path, help="keep the studies and results.json here")
    args = parser.parse_args(argv)
    modes = ("none", "all") if args.qc == "both" else (args.qc,)
    workdir = args.out or Path(tempfile.mkdtemp(prefix="cohort-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, "
        f"{args.events} events a file, {args.workers} workers",
        flush=True,
    )
    results = []
    try:
        for scale in (int(s) for s in args.scales.split(",")):
            template = workdir / f"x{scale}-template"
            files = build_cohort(template, scale, args.events)
            for mode in modes:
                study = workdir / f"x{scale}-qc-{mode}"
                shutil.rmtree(study, ignore_errors=True)
                shutil.copytree(template, study)
                with open(study / "study.yaml", "a") as fh:
                    fh.write(f"qc_reports: {mode}\n")
                first = measure_pass(study, args.workers, workdir / f"{study.name}-first.log")
                print(_report(f"{scale}x, QC PDFs {mode}, first pass", files, first), flush=True)
                row = {"scale": scale, "files": files, "qc_reports": mode, "first": first.__dict__}
                if args.second_pass:
                    second = measure_pass(study, args.workers, workdir / f"{study.name}-second.log")
                    print(
                        _report(f"{scale}x, QC PDFs {mode}, second pass", files, second), flush=True
                    )
                    row["second"] = second.__dict__
                results.append(row)
                if not args.out:
                    shutil.rmtree(study)
            shutil.rmtree(template)
        for line in cost_lines(results):
            print(line, flush=True)
        (workdir / "results.json").write_text(json.dumps(results, indent=1))
    finally:
        if not args.out:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
