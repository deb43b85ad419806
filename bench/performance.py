"""Per-file processing speed and memory, side by side with the read bound and plain flowkit.

    .venv/bin/python bench/performance.py [--repeats 5] [--skip-cohort] [--out DIR]

Writes B-cell panel files of 100k, 300k, 1M and 3M events x 11 channels and one of 1M events x
30 channels (the 7 panel detectors plus 19 spectral detectors, all in a 26 x 26 spillover),
then measures each file in fresh single-threaded processes (BLAS/OpenMP held to one thread, so
"per core" means one core):

- read bound: the DATA segment's bytes into a NumPy array;
- flowkit: ``fk.Sample`` load plus ``GatingStrategy.gate_sample`` with the very gates immunomon
  applied to that file (exported with ``gating.export``), compensation and logicle included;
- immunomon: ``read_events`` + ``gate_sample`` (panel resolution, compensation, transforms, QC,
  gate placement, all gates, counts);
- the whole ``immunomon process FILE --json`` command, as a user runs it.

Wall time is the median of ``--repeats`` runs after one warm-up (files are in the page cache
for every contender alike); peak RSS is the process's high-water mark, also given above the
process's own level after its imports. Counts from flowkit and immunomon are compared gate by
gate. A linear fit of immunomon's time against events over 100k..3M is printed, and finally a
demo cohort is run with ``immunomon run`` to compare wall time with total CPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SINGLE_THREAD = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "PREFECT_LOGGING_LEVEL": "WARNING",
}
SPECTRAL_DETECTORS = [
    *(f"UV{k}-A" for k in (2, 4, 7, 9)),
    *(f"V{k}-A" for k in (3, 5, 8, 11, 13)),
    *(f"B{k}-A" for k in (2, 4, 6, 9)),
    *(f"YG{k}-A" for k in (2, 6, 8)),
    *(f"R{k}-A" for k in (3, 6, 8)),
]


def write_benchmark_file(path: Path, n_events: int, spectral: bool = False, seed: int = 3) -> Path:
    """A simulated B-cell tube; ``spectral`` adds 19 detectors and widens the spillover."""
    from simulate.demo import PANEL_CHANNELS, channel_label, population_frequencies, simulate_sample
    from simulate.fcs_writer import write_fcs

    rng = np.random.default_rng(seed)
    shares = population_frequencies("BCELL", "child", "BL", rng, rng)
    events, pnn, _, spill = simulate_sample("BCELL", shares, n_events, rng)
    channels = PANEL_CHANNELS["BCELL"]
    pns = ["", "", "", *[channel_label("marker_fluor", m, f) for _, f, m in channels], ""]
    detectors = pnn[3 : 3 + len(channels)]
    if spectral:
        k, extra = len(channels), len(SPECTRAL_DETECTORS)
        full = np.eye(k + extra)
        full[:k, :k] = spill
        full[:k, k:] = rng.uniform(0.0, 0.08, (k, extra))  # panel dyes into spectral detectors
        full[k:, :k] = rng.uniform(0.0, 0.01, (extra, k))  # autofluorescence into panel ones
        panel_true = events[:, 3 : 3 + k] @ np.linalg.inv(spill)
        extra_true = 80.0 * 10 ** rng.normal(0, 0.3, (n_events, extra))
        observed = np.hstack([panel_true, extra_true]) @ full
        observed += rng.normal(0, 25.0, observed.shape)
        events = np.hstack([events[:, :3], observed, events[:, -1:]])
        detectors = [*detectors, *SPECTRAL_DETECTORS]
        pnn = [*pnn[:3], *detectors, pnn[-1]]
        pns = [*pns[: 3 + k], *[""] * extra, ""]
        spill = full
    spill_text = ",".join([str(len(detectors)), *detectors, *(f"{v:.6g}" for v in spill.ravel())])
    keywords = {"$SPILLOVER": spill_text, "$TIMESTEP": "0.01", "$CYT": "benchmark"}
    return write_fcs(path, events.astype(np.float32), pnn, pns, keywords)


# --- measurements, each run in its own process -------------------------------------------


def _peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Unlike ``ru_maxrss``, which Linux carries over
    from the parent at fork, it counts only this program's own memory."""
    with open("/proc/self/status") as fh:
        line = next(x for x in fh if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def _measure_raw(path: Path) -> dict:
    from panels.fcs import scan_header

    header = scan_header(path)

    def run() -> None:
        with open(path, "rb") as fh:
            fh.seek(header.data_start)
            raw = fh.read(header.data_bytes_expected)
        dtype = np.dtype(f"{header.byteorder}f4")
        np.frombuffer(raw, dtype=dtype).reshape(header.n_events, header.n_channels)

    return {"run": run, "reset": lambda: None}


def _measure_flowkit(path: Path, gatingml: Path) -> dict:
    import flowkit as fk

    strategy = fk.parse_gating_xml(str(gatingml))
    result = {}

    def run() -> None:
        sample = fk.Sample(str(path))
        result["gates"] = strategy.gate_sample(sample)

    def counts() -> dict:
        report = result["gates"].report
        return {g: int(c) for g, c in zip(report.gate_name, report["count"], strict=True)}

    return {"run": run, "counts": counts, "reset": result.clear}


def _measure_immunomon(path: Path) -> dict:
    from gating.pipeline import gate_sample
    from gating.strategy import load_strategy
    from panels.fcs import read_events
    from panels.resolve import load_panel, resolve_panel

    panel = load_panel("bcell")
    strategy = load_strategy(panel.strategy)
    result = {}

    def run() -> None:
        data = read_events(path)
        result["gating"] = gate_sample(data, resolve_panel(panel, data.header), strategy)

    def counts() -> dict:
        masks = result["gating"].masks
        return {n: int(np.count_nonzero(m)) for n, m in masks.items() if n != "all_events"}

    return {"run": run, "counts": counts, "reset": result.clear}


def measure_in_this_process(kind: str, path: Path, repeats: int, gatingml: Path | None) -> dict:
    """Time ``kind`` on ``path``: one warm-up, then ``repeats`` runs. Prints JSON."""
    after_imports = _peak_rss_mb()
    if kind == "raw":
        job = _measure_raw(path)
    elif kind == "flowkit":
        job = _measure_flowkit(path, gatingml)
    else:
        job = _measure_immunomon(path)
    after_imports = _peak_rss_mb()  # libraries imported by the job's setup included
    times = []
    for k in range(repeats + 1):
        job["reset"]()  # the previous run's result is not part of this run's memory
        start = time.perf_counter()
        job["run"]()
        if k:
            times.append(time.perf_counter() - start)
    return {
        "seconds": statistics.median(times),
        "all_seconds": times,
        "peak_rss_mb": _peak_rss_mb(),
        "rss_after_imports_mb": after_imports,
        "counts": job["counts"]() if "counts" in job else {},
    }


def _run_measurement(kind: str, path: Path, repeats: int, gatingml: Path | None = None) -> dict:
    command = [sys.executable, __file__, "--measure", kind, str(path), "--repeats", str(repeats)]
    if gatingml:
        command += ["--gatingml", str(gatingml)]
    out = subprocess.run(
        command, check=True, capture_output=True, text=True, env={**os.environ, **SINGLE_THREAD}
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _run_command(command: list[str], env: dict | None = None) -> tuple[float, float]:
    """Wall seconds and CPU seconds (the process and the children it waited for)."""
    start = time.perf_counter()
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {process.stderr.read().decode()}")
    return wall, usage.ru_utime + usage.ru_stime


# The installed `immunomon` script calls flows.cli.main; this does the same and then reports
# the process's peak memory on stderr.
_PROCESS_COMMAND = (
    "import sys; from flows.cli import main; code = main(sys.argv[1:]); "
    "hwm = next(x for x in open('/proc/self/status') if x.startswith('VmHWM:')); "
    "print(int(hwm.split()[1]) / 1024, file=sys.stderr); sys.exit(code)"
)


def _process_command(path: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of ``immunomon process FILE --panel bcell --json``."""
    command = [sys.executable, "-c", _PROCESS_COMMAND, "process", str(path), "--panel", "bcell"]
    start = time.perf_counter()
    out = subprocess.run(
        [*command, "--json"],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **SINGLE_THREAD},
    )
    return time.perf_counter() - start, float(out.stderr.strip().splitlines()[-1])


def _export_gates(path: Path, out: Path) -> Path:
    """The gates immunomon applies to ``path``, as GatingML for the flowkit baseline."""
    from gating.export import write_gatingml
    from gating.pipeline import gate_sample
    from gating.strategy import load_strategy
    from panels.fcs import read_events
    from panels.resolve import load_panel, resolve_panel

    data = read_events(path)
    panel = load_panel("bcell")
    resolved = resolve_panel(panel, data.header)
    gating = gate_sample(data, resolved, load_strategy(panel.strategy))
    return write_gatingml(out, gating.gates, resolved, data.header)


def bench_files(workdir: Path, repeats: int) -> list[dict]:
    """Measure every file; returns one row per file."""
    files = [
        ("100k x 11", 100_000, False, True),
        ("300k x 11", 300_000, False, False),
        ("1M x 11", 1_000_000, False, True),
        ("3M x 11", 3_000_000, False, False),
        ("1M x 30", 1_000_000, True, True),
    ]
    rows = []
    for label, n, spectral, with_flowkit in files:
        path = write_benchmark_file(workdir / f"{label.replace(' ', '')}.fcs", n, spectral)
        size_mb = (path.stat().st_size) / 2**20
        row = {"file": label, "events": n, "data_mb": n * (30 if spectral else 11) * 4 / 2**20}
        row["raw"] = _run_measurement("raw", path, repeats)
        row["immunomon"] = _run_measurement("immunomon", path, repeats)
        if with_flowkit:
            gatingml = _export_gates(path, workdir / f"{path.stem}.xml")
            row["flowkit"] = _run_measurement("flowkit", path, repeats, gatingml)
            ours, theirs = row["immunomon"]["counts"], row["flowkit"]["counts"]
            differing = [g for g in ours if theirs.get(g) != ours[g]]
            row["gates_compared"] = len(ours)
            row["gates_differing"] = differing
        runs = [_process_command(path) for _ in range(max(3, repeats // 2))]
        row["process_command"] = {
            "seconds": statistics.median(w for w, _ in runs),
            "peak_rss_mb": max(r for _, r in runs),
        }
        row["file_mb"] = size_mb
        rows.append(row)
        print(_row_text(row), file=sys.stderr, flush=True)  # progress
    return rows


def _row_text(row: dict) -> str:
    """One markdown table row per file (see ``TABLE_HEADER``)."""
    raw, ours = row["raw"]["seconds"], row["immunomon"]["seconds"]
    peak = row["immunomon"]["peak_rss_mb"]
    above = peak - row["immunomon"]["rss_after_imports_mb"]
    cells = [
        row["file"],
        f"{row['data_mb']:.0f}",
        f"{raw * 1e3:.1f}",
        f"{ours:.3f}",
        f"{row['events'] / ours / 1e6:.2f}",
        f"{ours / raw:.1f}x",
        f"{peak:.0f} (+{above:.0f}; {above / row['data_mb']:.1f}x data)",
        f"{row['process_command']['seconds']:.2f} ({row['process_command']['peak_rss_mb']:.0f})",
    ]
    if "flowkit" in row:
        fk_s = row["flowkit"]["seconds"]
        equal = row["gates_compared"] - len(row["gates_differing"])
        cells += [
            f"{fk_s:.3f}",
            f"{row['flowkit']['peak_rss_mb']:.0f}",
            f"{fk_s / ours:.1f}x",
            f"{equal}/{row['gates_compared']}",
        ]
    else:
        cells += ["", "", "", ""]
    return "| " + " | ".join(cells) + " |"


TABLE_HEADER = (
    "| file | data MB | read ms | immunomon s | M events/s/core | vs read | immunomon peak RSS MB "
    "(above imports) | `immunomon process` s (peak MB) | flowkit s | flowkit peak RSS MB | "
    "speed-up | gates equal |\n|" + "---|" * 12
)


def linear_fit(rows: list[dict]) -> str:
    """Least-squares fit of immunomon's seconds against events for the 11-channel files."""
    points = [(r["events"], r["immunomon"]["seconds"]) for r in rows if r["file"].endswith("x 11")]
    n = np.array([p[0] for p in points], float)
    t = np.array([p[1] for p in points])
    slope, intercept = np.polyfit(n, t, 1)
    predicted = slope * n + intercept
    r2 = 1 - np.sum((t - predicted) ** 2) / np.sum((t - t.mean()) ** 2)
    worst = np.max(np.abs(t - predicted) / t)
    return (
        f"time = {intercept * 1e3:.1f} ms + {slope * 1e9:.1f} ns x events over "
        f"{', '.join(f'{int(v):,}' for v in n)} events: R^2 = {r2:.4f}, "
        f"largest deviation from the line {worst:.1%}"
    )


def bench_cohort(workdir: Path) -> str:
    """Run a default demo cohort with ``immunomon run`` and compare wall with CPU time."""
    study = workdir / "cohort"
    cli = [sys.executable, "-m", "flows.cli"]
    subprocess.run([*cli, "demo", str(study), "--no-run"], check=True, capture_output=True)
    files = len(list((study / "inbox").glob("*.fcs")))
    wall, cpu = _run_command([*cli, "run", "--study", str(study)])
    return (
        f"demo cohort, {files} files in inbox: immunomon run wall {wall:.1f} s, "
        f"CPU (all processes) {cpu:.1f} s, wall / CPU = {wall / cpu:.2f} "
        f"on {os.cpu_count()} cores"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-cohort", action="store_true")
    parser.add_argument("--out", type=Path, help="keep files and results.json here")
    parser.add_argument("--measure", nargs=2, metavar=("KIND", "FILE"), help=argparse.SUPPRESS)
    parser.add_argument("--gatingml", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        kind, path = args.measure
        result = measure_in_this_process(kind, Path(path), args.repeats, args.gatingml)
        print(json.dumps(result))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.out or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        print(f"{os.cpu_count()} cores; median of {args.repeats} runs after one warm-up")
        rows = bench_files(workdir, args.repeats)
        print(TABLE_HEADER)
        for row in rows:
            print(_row_text(row))
        print(linear_fit(rows))
        cohort = "" if args.skip_cohort else bench_cohort(workdir)
        if cohort:
            print(cohort)
        (workdir / "results.json").write_text(json.dumps({"files": rows, "cohort": cohort}))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
