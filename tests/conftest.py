"""Shared fixtures: small simulated samples, a demo study run once per session, Prefect."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from simulate.demo import PANEL_CHANNELS, channel_label, population_frequencies, simulate_sample  # noqa: E402
from simulate.fcs_writer import write_fcs  # noqa: E402


def write_simulated(
    path: Path,
    panel: str,
    group: str = "child",
    visit: str = "BL",
    n_events: int = 20000,
    seed: int = 1,
    style: str = "marker_fluor",
    **write_options,
) -> tuple[Path, np.ndarray]:
    """Write one simulated tube with its $SPILLOVER; returns the path and event labels."""
    rng = np.random.default_rng(seed)
    shares = population_frequencies(panel, group, visit, rng, rng)
    events, pnn, labels, spill = simulate_sample(panel, shares, n_events, rng)
    channels = PANEL_CHANNELS[panel]
    pns = ["", "", "", *[channel_label(style, m, f) for _, f, m in channels], ""]
    spill_text = ",".join(
        [str(len(channels)), *pnn[3 : 3 + len(channels)], *(f"{v:.6g}" for v in spill.ravel())]
    )
    write_fcs(path, events, pnn, pns, {"$SPILLOVER": spill_text, "$CYT": "test"}, **write_options)
    return path, labels


def write_sixteen_bit_copy(source: Path, target: Path) -> Path:
    """The same cells as a 16-bit instrument writes them: integers on a 0..65535 scale."""
    from panels.fcs import read_events

    data = read_events(source)
    events = data.events
    events[:, :-1] = np.round(np.clip(events[:, :-1] / 4.0, 0, 65535))
    return write_fcs(
        target,
        events,
        data.header.pnn,
        data.header.pns,
        {"$SPILLOVER": data.header.keywords["$SPILLOVER"]},
        datatype="I",
        bits=16,
        pnr=[65536.0] * len(data.header.pnn),
    )


def gate_and_record(store, study, path: Path, strategy, run_id: str):
    """Gate one inbox file with ``strategy`` and record it in ``store`` as its sample's
    current result, as a processing pass does (no review action); returns the record."""
    import hashlib

    from flows.sample_work import process_sample_file

    name = study.parse_name(path.name)
    record = process_sample_file(
        path,
        hashlib.sha256(path.read_bytes()).hexdigest(),
        name,
        study.panels[name.panel_token],
        strategy,
    )
    stat = path.stat()
    store.record_sample(
        file_name=path.name,
        size=stat.st_size,
        mtime_ns=stat.st_mtime_ns,
        result=record,
        run_id=run_id,
    )
    return record


def processed_demo_samples(root: Path, events: int, keep: tuple[str, ...]) -> Path:
    """A demo study at ``root`` cut to the samples named in ``keep`` (sample-id prefixes),
    each processed and recorded in the store as a pass would; returns ``root``."""
    from cohort.store import Store
    from cohort.study import Study
    from simulate.demo import DemoOptions, simulate_study

    simulate_study(root, DemoOptions(events_per_file=events, include_bad_files=False))
    for path in list((root / "inbox").iterdir()):
        if not path.name.startswith(keep):
            path.unlink()
    study = Study(root)
    store = Store(study.db_path)
    try:
        for path in sorted((root / "inbox").iterdir()):
            name = study.parse_name(path.name)
            gate_and_record(store, study, path, study.strategies[name.panel_token], "test")
    finally:
        store.close()
    return root


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, prefect_harness):
    """A full demo study (small files) processed once; tests read its outputs."""
    from flows.nightly import run_study
    from simulate.demo import DemoOptions, simulate_study

    root = tmp_path_factory.mktemp("demo") / "study"
    simulate_study(root, DemoOptions(events_per_file=6000))
    # Per-sample QC PDFs (~1.4 s each) are tested on single samples, not 182 times here.
    with open(root / "study.yaml", "a") as fh:
        fh.write("qc_reports: none\n")
    inbox_before = {p.name: p.read_bytes() for p in (root / "inbox").iterdir()}
    first = run_study(root, workers=2)
    return root, first, inbox_before


@pytest.fixture()
def study_copy(tmp_path):
    """An empty study folder with the demo's study.yaml and clinical CSVs."""
    from simulate.demo import DemoOptions, simulate_study

    root = tmp_path / "study"
    simulate_study(root, DemoOptions(events_per_file=3000, include_bad_files=False))
    shutil.rmtree(root / "inbox")
    (root / "inbox").mkdir()
    return root


REVIEW_PASSWORD = "a long enough password"  # ana's; bo's is this + " too"


@pytest.fixture(scope="session")
def reviewable(tmp_path_factory):
    """A small study with three processed B-cell samples, one Treg sample (its t_cd45ra has a
    landmark: it can take a study template) and two accounts (ana, an expert; bo, a
    reviewer), added as `users add` does (audit entries 1 and 2, anchored), built once for
    the review modules; each test works on a copy."""
    from cohort.accounts import add_user
    from cohort.audit import anchors_path
    from cohort.store import Store

    root = processed_demo_samples(
        tmp_path_factory.mktemp("reviewable") / "study",
        1000,
        ("P01_BL_BCELL", "P01_M1_BCELL", "P02_BL_BCELL", "P01_BL_TREG"),
    )
    store = Store(root / "immunomon.db")
    audit = {"by": "admin", "software": "test", "anchors": anchors_path(root)}
    add_user(store.conn, "ana", REVIEW_PASSWORD, ("expert",), **audit)  # she also sets templates
    add_user(store.conn, "bo", REVIEW_PASSWORD + " too", ("reviewer",), **audit)
    store.close()
    return root
