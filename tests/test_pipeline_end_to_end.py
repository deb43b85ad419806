"""The whole path on the demo study: inbox -> store -> CSVs -> statistics -> PDF, twice."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow


def test_first_run_processes_every_good_file_and_explains_the_rest(demo_run):
    root, summary, _ = demo_run
    samples = pd.read_csv(root / "results" / "samples.csv")
    assert summary.failed == 0 and summary.cohort_error == ""
    assert summary.processed == (samples.status == "processed").sum() == 182
    quarantined = samples[samples.status == "quarantined"].set_index("file").reason
    assert "truncated" in quarantined["P03_M9_BCELL.fcs"]
    assert "visit 'M2' is not in study.yaml" in quarantined["P02_M2_BCELL.fcs"]
    assert "not an FCS file" in quarantined["P03_M9_TREG.FCS"]
    for name in quarantined.index:
        assert (root / "quarantine" / f"{name}.reason.txt").is_file()


def test_inbox_is_never_modified(demo_run):
    root, _, before = demo_run
    assert {p.name: p.read_bytes() for p in (root / "inbox").iterdir()} == before


def test_populations_agree_with_ground_truth(demo_run):
    root, _, _ = demo_run
    got = pd.read_csv(root / "results" / "populations.csv")
    truth = pd.read_csv(root / "truth" / "populations.csv")
    merged = got.merge(truth, on=["sample_id", "population"], suffixes=("", "_true"))
    assert len(merged) == len(got)
    error = (merged.pct_parent - merged.pct_parent_true).abs().groupby(merged.population).median()
    error = error.drop(list(TREG_SUBSETS))
    assert (error <= 3.0).all(), error.to_dict()
    # Tighter than the spine's 3 points: the gating issue's 1 point (Treg itself: see below).
    assert error.drop("treg").max() <= 1.0, error.to_dict()


# The Treg subsets are shares of a small gate (about 100 Tregs in a 6,000-event tube): they
# have their own test and targets below (issue 22), not the 1-point one above.
TREG_SUBSETS = ("memory_treg", "hladr_memory_treg")


def test_treg_subsets_agree_with_ground_truth(demo_run):
    """Treg within 1 point of the truth, memory Treg within 1 and HLA-DR+ memory Treg within 2
    (median over the tubes). Under treg v5 they were +1.2-1.3, +5.2 and -4.6 points: the arm
    polygon took the CD4 cloud's edge (memory cells) beside the demo's separate Treg cluster;
    the empty gap along the arm's diagonal now places its edge (gating.adaptive.place_cloud_arm;
    measured on 30 demo tubes at 6,000 events: +0.04, +0.03, 0.00)."""
    root, _, _ = demo_run
    got = pd.read_csv(root / "results" / "populations.csv")
    truth = pd.read_csv(root / "truth" / "populations.csv")
    merged = got.merge(truth, on=["sample_id", "population"], suffixes=("", "_true"))
    error = (merged.pct_parent - merged.pct_parent_true).abs().groupby(merged.population).median()
    assert error["treg"] <= 1.0, error.to_dict()
    assert error["memory_treg"] <= 1.0, error.to_dict()
    assert error["hladr_memory_treg"] <= 2.0, error.to_dict()


def test_the_designed_effect_is_found(demo_run):
    """Children lose B cells at M1 in the simulation; the statistics say so. (Every p-value
    is recomputed independently in test_report_integrity.)"""
    root, _, _ = demo_run
    table = pd.read_csv(root / "results" / "statistics.csv")
    rows = table[table.analysis == "wilcoxon_vs_baseline"]
    assert len(rows) == 3 * 5 * 3 * (7 + 5)  # groups x visits x measures x populations
    child_b = rows[
        (rows.group == "child")
        & (rows.population == "cd19_b")
        & (rows.measure == "pct_parent")
        & (rows.visit == "M1")
    ].iloc[0]
    assert child_b.p_value < 0.01 and child_b.effect < 0


def test_second_run_changes_nothing(demo_run):
    from flows.nightly import run_study

    root, _, _ = demo_run
    before = {
        n: (root / "results" / n).read_bytes()
        for n in ("samples.csv", "populations.csv", "statistics.csv")
    }
    report_before = _pdf_text(root / "reports" / "cohort_report.pdf")
    report_stat = (root / "reports" / "cohort_report.pdf").stat().st_mtime_ns
    quarantine = {p.name: p.stat().st_mtime_ns for p in (root / "quarantine").iterdir()}
    summary = run_study(root, workers=2)
    assert summary.processed == 0 and summary.unchanged == 182
    # The three bad files are not quarantined, copied or reported again: counts are per pass.
    assert (summary.quarantined, summary.still_quarantined) == (0, 3)
    assert {p.name: p.stat().st_mtime_ns for p in (root / "quarantine").iterdir()} == quarantine
    for name, content in before.items():
        assert (root / "results" / name).read_bytes() == content, name
    assert _pdf_text(root / "reports" / "cohort_report.pdf") == report_before
    # Nothing they are made from changed: not rewritten at all (flows.outcome).
    assert summary.outputs.startswith("left the cohort report"), summary.outputs
    assert report_stat == (root / "reports" / "cohort_report.pdf").stat().st_mtime_ns


def test_a_pass_after_a_clinical_edit_writes_the_statistics_again(demo_run, tmp_path):
    from flows.nightly import run_study

    root, _, _ = demo_run
    copy = tmp_path / "study"
    shutil.copytree(root, copy)
    statistics = (copy / "results" / "statistics.csv").read_bytes()
    visits = copy / "clinical" / "visits.csv"
    frame = pd.read_csv(visits, dtype=str)
    frame.loc[frame.visit == "M3", "lymphocytes_per_ul"] = "900"
    frame.to_csv(visits, index=False)
    summary = run_study(copy, workers=2)
    assert summary.processed == 0 and summary.outputs.startswith("wrote the cohort report")
    assert (copy / "results" / "statistics.csv").read_bytes() != statistics


def _pdf_text(path) -> str:
    from pypdf import PdfReader

    return "\n".join(page.extract_text() for page in PdfReader(path).pages)


def test_report_drawn_on_the_workers_equals_one_drawn_in_one_process(demo_run):
    """run_study draws the report's pages on its two workers and joins the parts; the report
    command draws them all in one process. Same pages, same text, same order."""
    from pypdf import PdfReader

    from cohort.store import Store
    from cohort.study import Study
    from reports.outputs import update_outputs

    root, _, _ = demo_run
    path = root / "reports" / "cohort_report.pdf"
    joined = PdfReader(path)
    assert joined.metadata.producer.startswith("pypdf")  # the parts were joined
    pages_joined = [page.extract_text() for page in joined.pages]
    study = Study(root)
    store = Store(study.db_path)
    try:
        assert update_outputs(study, store) == ""
    finally:
        store.close()
    one_process = PdfReader(path)
    assert "Matplotlib" in one_process.metadata.producer
    assert [page.extract_text() for page in one_process.pages] == pages_joined
    assert one_process.metadata.title == joined.metadata.title


def test_report_has_sections_and_the_p_values(demo_run):
    from reports.numbers import format_p

    root, _, _ = demo_run
    text = _pdf_text(root / "reports" / "cohort_report.pdf")
    for section in (
        "Cohort immunomonitoring report",
        "Data completeness",
        "Paired Wilcoxon signed-rank tests against baseline",
        "Methods",
        "Appendix: input files",
        "CD19+ B cells (% of lymphocytes)",
        "BCELL panel; cd19_b",
        "TREG panel; treg",
        "Figure 2A. Relapse-free survival",
        "Clinical outcome statistics",
        "Stratified: HR",
        "P14 (254 days)",  # lost at +8 months: infusion to last follow-up, both days in
    ):
        assert section in text, section
    stats_table = pd.read_csv(root / "results" / "statistics.csv")
    for p in stats_table.p_value.dropna().sample(25, random_state=1):
        assert format_p(p) in text  # the report's one rule (reports.numbers)
    sha = pd.read_csv(root / "results" / "samples.csv").sha256.iloc[0]
    assert sha in text


@pytest.mark.skipif(shutil.which("pdftoppm") is None, reason="pdftoppm not installed")
def test_report_pages_are_not_blank(demo_run, tmp_path):
    root, _, _ = demo_run
    subprocess.run(
        [
            "pdftoppm",
            "-r",
            "50",  # at 30 dpi the appendix's small text greys out below the darkness cut
            "-gray",
            str(root / "reports" / "cohort_report.pdf"),
            str(tmp_path / "page"),
        ],
        check=True,
    )
    pages = sorted(tmp_path.glob("page*.pgm"))
    assert len(pages) > 10
    for page in pages:
        pixels = np.frombuffer(page.read_bytes().split(b"\n", 3)[3], dtype=np.uint8)
        assert (pixels < 200).sum() > 300, page.name  # a blank page has none


def test_cli_process_one_file(demo_run, capsys):
    from flows.cli import main

    root, _, _ = demo_run
    assert (
        main(["process", str(root / "inbox" / "P01_BL_TREG.fcs"), "--panel", "treg", "--json"]) == 0
    )
    import json

    out = json.loads(capsys.readouterr().out)
    assert [p["population"] for p in out["populations"]] == [
        "lymphocytes",
        "t_cells",
        "cd4_t",
        "treg",
        "memory_treg",
        "hladr_memory_treg",
    ]


def test_clinical_error_stops_cohort_step_but_keeps_samples(demo_run, tmp_path):
    from cohort.store import Store
    from cohort.study import Study
    from reports.outputs import update_outputs

    root, _, _ = demo_run
    copy = tmp_path / "study"
    shutil.copytree(root, copy)
    visits = copy / "clinical" / "visits.csv"
    lines = visits.read_text().splitlines()
    lines[4] = lines[4].replace("-", "/", 2)
    visits.write_text("\n".join(lines) + "\n")
    study = Study(copy)
    store = Store(study.db_path)
    error = update_outputs(study, store)
    assert "visits.csv, line 5, column visit_date" in error
    assert (pd.read_csv(copy / "results" / "samples.csv").status == "processed").sum() == 182
    store.close()


def test_patient_missing_from_clinical_data_is_processed_flagged_and_left_out(demo_run, tmp_path):
    from flows.nightly import run_study

    root, _, _ = demo_run
    copy = tmp_path / "study"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("quarantine", "truth"))
    shutil.copy(root / "inbox" / "P01_BL_TREG.fcs", copy / "inbox" / "P17_BL_TREG.fcs")
    # Same bytes as P01_BL_TREG would be a duplicate: change one TEXT keyword's value.
    data = (copy / "inbox" / "P17_BL_TREG.fcs").read_bytes()
    (copy / "inbox" / "P17_BL_TREG.fcs").write_bytes(data.replace(b"P01_BL_TREG", b"P17_BL_TREG"))
    summary = run_study(copy, workers=1)
    assert summary.processed == 1 and summary.cohort_error == ""
    pops = pd.read_csv(copy / "results" / "populations.csv")
    flags = pops[pops.patient_id == "P17"].population_flags
    assert len(flags) == 6 and flags.str.contains("patient_not_in_patients_csv").all()
    assert "qc_flags" not in pops  # sample-level flags are in samples.csv only
    from pypdf import PdfReader

    first_page = PdfReader(copy / "reports" / "cohort_report.pdf").pages[0].extract_text()
    assert "left" in first_page and "P17" in first_page
    table = pd.read_csv(copy / "results" / "statistics.csv")
    before = pd.read_csv(root / "results" / "statistics.csv")
    pd.testing.assert_frame_equal(table, before)


def test_exported_gatingml_reproduces_stored_counts(demo_run, tmp_path):
    import flowkit as fk

    from flows.cli import main

    root, _, _ = demo_run
    out = tmp_path / "P04_M3_BCELL.xml"
    assert (
        main(
            ["gates", "export", "--study", str(root), "--sample", "P04_M3_BCELL", "--out", str(out)]
        )
        == 0
    )
    strategy = fk.parse_gating_xml(str(out))
    result = strategy.gate_sample(fk.Sample(str(root / "inbox" / "P04_M3_BCELL.fcs")))
    pops = pd.read_csv(root / "results" / "populations.csv")
    mine = pops[pops.sample_id == "P04_M3_BCELL"]
    for r in mine.itertuples():
        assert result.get_gate_count(r.population) == r.count, r.population


def test_qc_report_regenerated_from_the_store_shows_stored_counts(demo_run):
    import re

    from pypdf import PdfReader

    from flows.cli import main

    root, _, _ = demo_run
    pops = pd.read_csv(root / "results" / "populations.csv")
    sample = "P02_M3_BCELL"
    assert main(["report", "--study", str(root), "--sample", sample]) == 0
    reader = PdfReader(root / "reports" / "qc" / f"{sample}.pdf")
    text = "\n".join(p.extract_text() for p in reader.pages)
    assert f"Sample QC report: {sample}" in text and "time_anomalies" in text
    for r in pops[pops.sample_id == sample].itertuples():  # replayed gates, stored counts
        assert re.search(rf"{r.population}\s+{r.parent}\s+{r.count}\s+{r.parent_count}", text)
    cd19 = pops[(pops.sample_id == sample) & (pops.population == "cd19_b")].iloc[0]
    assert f"cd19_b  {cd19['count']}/{cd19.parent_count}" in text  # the plot title
    # The transitional tip replayed from the store is drawn over the CD27- B cells it was
    # placed on (the store keeps no ``within``: the strategy restores it), its count the
    # transitional B count.
    transitional = pops[(pops.sample_id == sample) & (pops.population == "transitional_b")]
    assert re.search(
        rf"transitional_tip  {transitional['count'].iloc[0]}/\d+ \([0-9.]+%\) of cd27neg_b", text
    )
    assert main(["report", "--study", str(root), "--sample", "P99_BL_BCELL"]) == 2


def test_mfi_csv_matches_flowkit_medians_on_the_stored_gates(demo_run):
    """results/mfi.csv: per sample, population and marker, the median of the compensated
    values, checked against flowkit's own compensation of the file over the stored gates."""
    import flowkit as fk

    from cohort.store import Store
    from cohort.study import Study
    from gating.pipeline import replay_gates
    from panels.fcs import read_events
    from panels.resolve import resolve_panel

    root, _, _ = demo_run
    mfi = pd.read_csv(root / "results" / "mfi.csv")
    assert list(mfi.columns) == [
        "sample_id",
        "patient_id",
        "visit",
        "panel",
        "population",
        "marker",
        "channel",
        "median",
        "median_logicle",
        "n",
    ]
    assert mfi.sample_id.nunique() == 182
    study, store = Study(root), Store(Study(root).db_path)
    sample = store.current_sample("P04_M3_BCELL")
    data = read_events(root / "inbox" / sample["file_name"])
    resolved = resolve_panel(study.panels["BCELL"], data.header)
    masks = replay_gates(data, resolved, store.applied_gates(sample["sample_key"]))
    store.close()
    flowkit_sample = fk.Sample(str(root / "inbox" / sample["file_name"]))
    flowkit_sample.apply_compensation(flowkit_sample.metadata["spillover"])
    compensated = flowkit_sample.get_events(source="comp")
    rows = mfi[mfi.sample_id == "P04_M3_BCELL"].set_index(["population", "marker"])
    for population, marker in (("cd19_b", "CD19"), ("memory_b", "CD27"), ("naive_b", "IgD")):
        column = flowkit_sample.pnn_labels.index(resolved.marker_channels[marker])
        expected = np.median(compensated[masks[population], column])
        row = rows.loc[(population, marker)]
        assert row["n"] == masks[population].sum()
        assert row["median"] == pytest.approx(expected, rel=1e-4, abs=0.5)
        assert 0.3 < row["median_logicle"] < 1.0  # these markers are positive there


def test_a_clinical_error_that_cannot_affect_cell_counts_does_not_blank_them(demo_run, tmp_path):
    """patients.csv without its sex column stops the cohort step, but cells/uL need only
    visits.csv: populations.csv keeps them, equal to the full run's."""
    from cohort.store import Store
    from cohort.study import Study
    from reports.outputs import update_outputs

    root, _, _ = demo_run
    copy = tmp_path / "study"
    shutil.copytree(root, copy)
    patients = pd.read_csv(copy / "clinical" / "patients.csv")
    patients.drop(columns="sex").to_csv(copy / "clinical" / "patients.csv", index=False)
    study = Study(copy)
    store = Store(study.db_path)
    error = update_outputs(study, store)
    store.close()
    assert "patients.csv: missing column(s) sex" in error
    got = pd.read_csv(copy / "results" / "populations.csv")
    full = pd.read_csv(root / "results" / "populations.csv")
    assert got.cells_per_ul.notna().sum() > 1000
    pd.testing.assert_series_equal(got.cells_per_ul, full.cells_per_ul)


def test_a_broken_relapses_file_leaves_out_only_what_it_feeds(demo_run, tmp_path):
    """A relapse dated before birth: the relapse analyses and Kaplan-Meier are left out, the
    rest (immunology, drugs, prednisone, cells/uL) is computed as before, and the report's
    first page names the broken file and what is missing."""
    from cohort.store import Store
    from cohort.study import Study
    from reports.outputs import update_outputs

    root, _, _ = demo_run
    copy = tmp_path / "study"
    shutil.copytree(root, copy)
    relapses = pd.read_csv(copy / "clinical" / "relapses.csv")
    relapses.loc[2, "relapse_date"] = "1900-01-01"
    relapses.to_csv(copy / "clinical" / "relapses.csv", index=False)
    (copy / "reports" / "cohort_report.pdf").unlink()
    study = Study(copy)
    store = Store(study.db_path)
    error = update_outputs(study, store)
    store.close()
    assert "relapses.csv, line 4, column relapse_date" in error
    assert "before the patient's birth_date" in error

    got = pd.read_csv(copy / "results" / "statistics.csv")
    full = pd.read_csv(root / "results" / "statistics.csv")
    fed = ("relapses_before_after", "relapse_free_cox", "kaplan_meier_median")
    relapse_rows = full.analysis.str.startswith(fed)
    # per group: rates (Wilcoxon) and the rate ratio; Cox tests (unmatched: Wald, LR, Firth;
    # stratified: those and exact); KM medians
    assert relapse_rows.sum() == 3 * 2 + 3 * (3 + 4) + 6
    assert not got.analysis.str.startswith(fed).any()
    pd.testing.assert_frame_equal(
        got.reset_index(drop=True), full[~relapse_rows].reset_index(drop=True)
    )
    windows = pd.read_csv(copy / "results" / "clinical_windows.csv")
    assert windows.relapses_after.isna().all() and windows.time_to_relapse_after.isna().all()
    assert windows.prednisone_mg_before.notna().all()

    text = subprocess.run(
        ["pdftotext", "-l", "1", str(copy / "reports" / "cohort_report.pdf"), "-"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "clinical input could not be used" in text
    assert "relapses.csv is broken, so this report leaves out relapse rates" in text
