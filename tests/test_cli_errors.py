"""A user's mistake is one line on stderr and exit code 2, quickly, before any worker or Prefect
server starts; never a traceback."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from simulate.demo import FILENAME_PATTERN

GOOD = {
    "study": "errors",
    "visits": {"BL": 0, "M1": 1},
    "baseline": "BL",
    "filename_pattern": FILENAME_PATTERN,
    "panels": {"BCELL": "bcell"},
}


def _study(root: Path, config: dict | str, inbox: bool = True) -> Path:
    root.mkdir(parents=True)
    text = config if isinstance(config, str) else yaml.safe_dump(config)
    (root / "study.yaml").write_text(text)
    if inbox:
        (root / "inbox").mkdir()
    return root


def _cases(tmp: Path) -> list[tuple[list[str], str]]:
    bad_panel = tmp / "panel.yaml"
    bad_panel.write_text("name: p\nmarkers: {CD19: null}\nlogicle: {w: wide}\n")
    missing_strategy = tmp / "panel2.yaml"
    missing_strategy.write_text("name: p\nmarkers: {CD19: null}\nstrategy: nowhere.yaml\n")
    return [
        (["run", "--study", str(tmp / "nowhere")], "study.yaml not found"),
        (
            ["run", "--study", str(_study(tmp / "s1", {**GOOD, "schedul": "0 2 * * *"}))],
            "did you mean 'schedule'",
        ),
        (
            ["run", "--study", str(_study(tmp / "s2", {**GOOD, "timezone": "Mars/Olympus"}))],
            "unknown time zone 'Mars/Olympus'",
        ),
        (
            ["run", "--study", str(_study(tmp / "s3", {**GOOD, "absolute_counts": "beads"}))],
            "'beads' (single-platform counting with counting beads) is not implemented",
        ),
        (["run", "--study", str(_study(tmp / "s4", GOOD, inbox=False))], "inbox does not exist"),
        (["run", "--study", str(_study(tmp / "s5", "study: [unclosed\n"))], "not valid YAML"),
        (
            [
                "run",
                "--study",
                str(_study(tmp / "s6", {**GOOD, "filename_pattern": "(?P<patient>P)"})),
            ],
            "needs named groups",
        ),
        (
            [
                "run",
                "--study",
                str(_study(tmp / "s7", {**GOOD, "panels": {"BCELL": str(missing_strategy)}})),
            ],
            "nowhere.yaml",
        ),
        (
            [
                "run",
                "--study",
                str(_study(tmp / "s8", {**GOOD, "analysis": {"familly": ["group"]}})),
            ],
            "analysis.familly: unknown key",
        ),
        (
            [
                "run",
                "--study",
                str(
                    _study(
                        tmp / "s9",
                        {**GOOD, "analysis": {"figure_4": {"group": "toddlers"}}},
                    )
                ),
            ],
            "figure_4.group 'toddlers' is not one of the groups",
        ),
        (["process", str(tmp / "none.fcs"), "--panel", "bcell"], "none.fcs: no such file"),
        (["process", str(tmp), "--panel", "bcell"], "is a folder, not an FCS file"),
        (["inspect", str(tmp / "none.fcs")], "none.fcs: no such file"),
        (["process", str(bad_panel), "--panel", str(bad_panel)], "logicle.w"),
    ]


# What a mistake must be reported before: the gating stack (scikit-learn), the statistics
# (scipy.stats), Prefect and the drawing code each cost a second or more of imports.
HEAVY_MODULES = ("sklearn", "gating.pipeline", "scipy.stats", "prefect", "matplotlib", "pandas")

# Runs the command as `python -m flows.cli` does, then lists the heavy modules it imported.
_DRIVER = """
import json, sys
from flows.cli import main
out, argv = sys.argv[1], sys.argv[2:]
try:
    code = main(argv)
finally:
    with open(out, "w") as fh:
        json.dump(sorted(m for m in {heavy!r} if m in sys.modules), fh)
sys.exit(code)
"""


def test_each_user_mistake_is_one_line_and_exit_2_before_any_heavy_import(tmp_path):
    """Deterministic: no heavy module is imported before the line is printed (what made a
    missing inbox take 5 s on a loaded machine); the wall-time bound is generous."""
    import json

    driver = _DRIVER.format(heavy=HEAVY_MODULES)
    slowest = 0.0
    for argv, expected in _cases(tmp_path):
        imported = tmp_path / "imported.json"
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", driver, str(imported), *argv],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parents[1],
            timeout=120,
        )
        elapsed = time.perf_counter() - started
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2, (argv, done.stderr[-1500:])
        assert len(lines) == 1 and expected in lines[0], (argv, done.stderr[-1500:])
        assert "Traceback" not in done.stderr and not done.stdout.strip()
        assert json.loads(imported.read_text()) == [], argv
        slowest = max(slowest, elapsed)
    # Two cores at load 4 take a light command (pydantic, numpy, yaml) to ~3 s.
    assert slowest < 20.0, slowest
    print(f"slowest mistake: {slowest:.2f} s")


@pytest.mark.parametrize("flag", ["--version"])
def test_version(flag, capsys):
    from flows.cli import main

    with pytest.raises(SystemExit) as done:
        main([flag])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("immunomon ")


def test_no_wait_names_the_pass_that_holds_the_study(tmp_path):
    """While another pass holds a study, `run --no-wait` says which (pid, host, start) in one
    line with exit code 2 instead of waiting."""
    import os

    from cohort.study import Study

    root = _study(tmp_path / "busy", GOOD)
    with Study(root).exclusive():
        assert f"by pid {os.getpid()}" in (root / ".immunomon.lock").read_text()
        done = subprocess.run(
            [sys.executable, "-m", "flows.cli", "run", "--study", str(root), "--no-wait"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parents[1],
            timeout=60,
        )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-1500:]
    assert "another pass holds the study" in lines[0] and f"by pid {os.getpid()}" in lines[0]
    assert (root / ".immunomon.lock").read_text() == ""  # released, and says so


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (OSError(16, "Device or resource busy"), True),  # EBUSY: a copy tool holds the file
        (OSError(28, "No space left on device"), True),  # ENOSPC
        (OSError(22, "Invalid argument"), False),  # EINVAL: a header asking for a bad seek
        (FileNotFoundError(2, "No such file"), False),
        (ValueError("negative shift count"), False),  # a bug or bad data, not the weather
    ],
)
def test_only_io_errors_that_can_pass_are_retried(error, retried):
    from flows.tasks import process_with_retries

    waits: list[float] = []
    calls: list[int] = []

    def flaky(*_args):
        calls.append(1)
        raise error

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("flows.tasks.process_sample_file_noting_warnings", flaky)
        with pytest.raises(type(error)):
            process_with_retries(
                {"path": "x", "sha256": "", "name": None, "panel": None, "strategy": None},
                sleep=waits.append,
            )
    assert (len(calls), waits) == ((4, [5.0, 30.0, 120.0]) if retried else (1, []))


HOLDER = """
import sys, time
from cohort.study import Study
with Study(sys.argv[1]).exclusive() as lease:
    print("held", flush=True)
    for _ in range(int(sys.argv[2])):
        time.sleep(0.5)
        if sys.argv[3] == "renew":
            lease.renew()
"""


def _holder(root: Path, ticks: int, renew: bool) -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(root), str(ticks), "renew" if renew else "silent"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[1],
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_hung_pass_is_stopped_and_its_lock_taken_over(tmp_path):
    """A holder that shows no progress for longer than stale_lock_minutes is stopped and the
    waiting pass gets the study; one that keeps renewing is waited for, not stopped."""
    from cohort.study import Study

    root = _study(tmp_path / "hung", {**GOOD, "stale_lock_minutes": 0.05})  # 3 s
    silent = _holder(root, 600, renew=False)  # would hold for 5 min
    told: list[str] = []
    started = time.monotonic()
    with Study(root).exclusive(waiting=told.append):
        took = time.monotonic() - started
    assert silent.wait(timeout=10) == -15  # SIGTERM
    assert 2.5 < took < 10, took
    assert any("has shown no progress" in m and "stopping it" in m for m in told), told

    alive = _holder(root, 12, renew=True)  # 6 s of progress, then done
    told.clear()
    with Study(root).exclusive(waiting=told.append):
        assert alive.wait(timeout=1) == 0  # it finished on its own
    assert told and all("waiting for the pass started" in m for m in told), told


def test_process_takes_the_study_panel_token(tmp_path, capsys):
    """`process FILE --panel BCELL` (the token in the study's file names) gates with the
    built-in bcell panel, as `--panel bcell` does; an unknown token is still one line."""
    import json

    from flows.cli import main
    from tests.conftest import write_simulated

    path, _ = write_simulated(tmp_path / "P01_BL_BCELL.fcs", "BCELL", n_events=3000)
    outputs = []
    for token in ("BCELL", "bcell"):
        assert main(["process", str(path), "--panel", token, "--json"]) == 0
        outputs.append(json.loads(capsys.readouterr().out)["populations"])
    assert outputs[0] == outputs[1] and outputs[0]
    assert main(["process", str(path), "--panel", "NKCELL"]) == 2
    assert "panel 'NKCELL'" in capsys.readouterr().err


def test_the_commands_store_is_closed_and_the_lock_released_whatever_happens(tmp_path):
    """flows.outcome.study_store, what every command opens the store with: the block holds
    the study's lock when asked (another pass is refused meanwhile), and a mistake inside it
    still closes the store and frees the lock."""
    import sqlite3

    from cohort.study import Study, StudyError
    from flows.outcome import study_store

    study = Study(_study(tmp_path / "study", GOOD))
    with pytest.raises(StudyError, match="another pass holds the study"):
        with study_store(study, exclusive=True):
            with study.exclusive(wait=False):
                pass
    with pytest.raises(ValueError, match="a mistake"):
        with study_store(study, exclusive=True) as store:
            kept = store
            raise ValueError("a mistake")
    with pytest.raises(sqlite3.ProgrammingError):
        kept.conn.execute("SELECT 1")  # closed
    with study.exclusive(wait=False):  # free again
        pass
    with study_store(study) as store:  # without the lock: a pass may hold it meanwhile
        with study.exclusive(wait=False):
            assert store.runs().empty
