"""Review and sign-off in a real browser (Debian's Chromium driven by Playwright): a lab
scientist adjusts one sample's threshold, approves one sample and excludes another; the store,
results, statistics, the report and the audit trail all follow, and the nightly pass keeps the
override. Screenshots of each page are written to the test's folder."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed"),
]
# Headless as root on a closed network: no sandbox, no background connections.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).parents[1]
TEMPLATE_SAMPLE = "P04_BL_TREG"
ELLIPSE_SAMPLE = "P06_M3_BCELL"
ELLIPSE_REASON = "ellipse reaches into the monocytes"
TEMPLATE_REASON = "naive CD45RA peak is clean on this baseline"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _screenshot(page, path: Path, full_page: bool = False) -> None:
    """A screenshot, tried again when a loaded machine's compositor misses its deadline
    (Chromium: "Unable to capture screenshot")."""
    for attempt in range(4):
        try:
            page.screenshot(path=path, full_page=full_page, timeout=60_000)
            return
        except playwright.Error as exc:
            if "Unable to capture screenshot" not in str(exc) or attempt == 3:
                raise
            time.sleep(2.0)


def _cli(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *argv],
        capture_output=True,
        text=True,
        input=stdin,
        cwd=ROOT,
        timeout=300,
    )


@pytest.fixture(scope="module")
def reviewed(demo_run, tmp_path_factory):
    """A copy of the demo study, reviewed in the browser; yields what the test checks."""
    root, _, _ = demo_run
    study = tmp_path_factory.mktemp("review") / "study"
    shutil.copytree(root, study)
    shots = tmp_path_factory.mktemp("screenshots")
    port = _free_port()
    # The server's log goes to a file: a pipe nobody reads fills (uvicorn logs every request,
    # and the publish page polls) and the server then blocks writing, at shutdown too.
    log = open(shots / "server.log", "w")  # noqa: SIM115 (closed once the server is gone)
    server = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "review", "--study", str(study), "--port", str(port)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        server.kill()
        log.close()
        pytest.fail(f"the review server did not start: {(shots / 'server.log').read_text()}")
    pages = {}
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(180_000)  # publish redraws the report: slow on a busy machine
            page.goto(base + "/")
            assert "/whoami" in page.url  # the name is asked once per browser session
            page.fill("#name", "jdupont")
            page.click("#start")
            _screenshot(page, shots / "today.png")
            pages["today"] = page.inner_text("#files")

            page.goto(base + "/patient/P04?panel=BCELL")
            page.wait_for_load_state("networkidle")
            _screenshot(page, shots / "patient.png", full_page=True)
            pages["patient"] = page.inner_text("#thresholds")
            pages["patient_mfi"] = page.inner_text("#mfi")

            page.goto(base + "/sample/P04_M1_BCELL")
            # Drag the CD19 threshold on its histogram to 0.62: the form takes the value.
            page.select_option("#drag-threshold", "t_cd19")
            page.wait_for_function(
                "document.getElementById('drag-info').textContent.includes('CD19')"
            )
            box = page.locator("#hist").bounding_box()
            y = box["y"] + box["height"] / 2
            left, width = box["x"] + 1 + 10, box["width"] - 2 - 20  # border, padding
            page.mouse.move(left + 0.45 * width, y)
            page.mouse.down()
            page.mouse.move(left + 0.62 * width, y, steps=8)
            page.mouse.up()
            pages["dragged"] = (page.input_value("#threshold"), page.input_value("#value"))
            page.fill("#adjust-reason", "CD19 dim tail is not B cells")
            page.click("#adjust")
            page.wait_for_load_state("networkidle")
            _screenshot(page, shots / "sample.png", full_page=True)
            pages["adjusted_status"] = page.inner_text("#review-status")
            pages["change"] = page.inner_text("#change")

            page.goto(base + "/sample/P04_M3_BCELL")
            page.fill("#decide-reason", "gates look right")
            page.click("#approve")
            pages["approved_status"] = page.inner_text("#review-status")

            page.goto(base + "/sample/P05_M1_BCELL")
            page.fill("#decide-reason", "haemolysed sample")
            page.click("#exclude")
            pages["excluded_status"] = page.inner_text("#review-status")

            # The lymphocyte ellipse of one sample: shorten its major axis by dragging the
            # axis' end halfway to the centre, then move the whole ellipse by its centre.
            page.goto(base + f"/sample/{ELLIPSE_SAMPLE}")
            playwright.expect(page.locator("#draw-preview")).to_contain_text("lymphocytes:")
            pages["ellipse_placed"] = page.request.get(
                base + f"/scatter/{ELLIPSE_SAMPLE}/lymphocytes.json"
            ).json()
            box = page.locator("#scatter").bounding_box()
            ox, oy = box["x"] + 1, box["y"] + 1  # the canvas' border
            handles = json.loads(page.get_attribute("#scatter", "data-handles"))
            (cx, cy), (mx, my) = handles["centre"], handles["major"]
            page.mouse.move(ox + mx, oy + my)
            page.mouse.down()
            page.mouse.move(ox + (cx + mx) / 2, oy + (cy + my) / 2, steps=8)
            page.mouse.up()
            page.mouse.move(ox + cx, oy + cy)
            page.mouse.down()
            page.mouse.move(ox + cx - 6, oy + cy, steps=4)
            page.mouse.up()
            pages["ellipse_preview"] = page.inner_text("#draw-preview")
            pages["ellipse_drawn"] = json.loads(page.input_value("#redraw-geometry"))
            page.fill("#redraw-reason", ELLIPSE_REASON)
            page.click("#redraw")
            page.wait_for_load_state("networkidle")
            _screenshot(page, shots / "ellipse.png", full_page=True)
            pages["ellipse_status"] = page.inner_text("#review-status")
            pages["ellipse_change"] = page.inner_text("#change")
            pages["ellipse_gates"] = page.inner_text("#gates")

            # An expert sets the Treg CD45RA boundary on a baseline sample as the study's.
            page.goto(base + f"/sample/{TEMPLATE_SAMPLE}")
            page.select_option("#sample-template-threshold", "t_cd45ra")
            page.fill("#sample-template-value", "0.5")
            page.fill("#sample-template-reason", TEMPLATE_REASON)
            page.click("#sample-set-template")
            page.wait_for_load_state("networkidle")
            pages["template_url"] = page.url
            pages["template_message"] = page.inner_text("#message")
            pages["templates"] = page.inner_text("#templates")
            pages["touched"] = page.inner_text("#touched")
            _screenshot(page, shots / "templates.png", full_page=True)

            page.goto(base + "/signoff")
            _screenshot(page, shots / "signoff.png", full_page=True)
            pages["signoff"] = page.inner_text("#signoff")
            page.click("#publish")  # returns at once; the page polls the background job
            pages["publish_first_state"] = page.inner_text("#publish-state")
            # A locator wait, not wait_for_function: the page's CSP forbids eval'd scripts.
            playwright.expect(page.locator("#publish-state")).to_have_text(
                re.compile(r"^(done|failed)$"), timeout=300_000
            )
            _screenshot(page, shots / "publish.png")
            pages["published"] = page.inner_text("#publish-result")
            browser.close()
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            pytest.fail("the review server did not stop on SIGTERM within 15 s")
        finally:
            log.close()
    return {"root": root, "study": study, "pages": pages, "shots": shots}


def test_pages_show_files_patient_sample_and_signoff(reviewed):
    pages = reviewed["pages"]
    assert "P04_M1_BCELL" in pages["today"] and "to_review" in pages["today"]
    assert "t_cd19" in pages["patient"] and "M12" in pages["patient"]
    assert "CD19 median of CD19+ B cells" in pages["patient_mfi"]
    assert "CD24 median of Transitional B" in pages["patient_mfi"]
    for name in ("today", "patient", "sample", "signoff", "templates", "publish"):
        assert (reviewed["shots"] / f"{name}.png").stat().st_size > 20_000, name
    assert pages["publish_first_state"] in ("running", "done")  # the page did not wait
    assert "results and the cohort report rewritten" in pages["published"]
    assert "reports/cohort_report.pdf" in pages["published"]


def test_a_study_template_set_in_the_browser_is_stored_audited_and_named(reviewed):
    """The expert's template is in the study reference (so the next pass re-gates every Treg
    sample: the strategy's identity changed), in the audit trail and in the report's Methods."""
    from cohort.audit import AuditLog
    from cohort.store import Store
    from cohort.study import Study
    from cohort.templates import panel_templates

    pages, study, root = reviewed["pages"], reviewed["study"], reviewed["root"]
    assert pages["template_url"].endswith("/templates/TREG")
    assert "re-gates the panel's samples" in pages["template_message"]
    assert f"0.500 on {TEMPLATE_SAMPLE}" in pages["templates"] and "jdupont" in pages["templates"]
    assert TEMPLATE_REASON in pages["templates"] and "P04_M1_TREG" in pages["touched"]
    template = panel_templates(Study(study), "TREG")["t_cd45ra"]
    assert (template.value, template.given_on, template.set_by, template.reason) == (
        0.5,
        TEMPLATE_SAMPLE,
        "jdupont",
        TEMPLATE_REASON,
    )
    assert Study(study).strategies["TREG"].sha256 != Study(root).strategies["TREG"].sha256
    assert Study(study).strategies["BCELL"].sha256 == Study(root).strategies["BCELL"].sha256
    store = Store(study / "immunomon.db")
    entries = [e for e in AuditLog(store.conn).entries() if e.action == "template"]
    store.close()
    assert [(e.who, e.reason) for e in entries] == [("jdupont", TEMPLATE_REASON)]
    assert entries[0].detail["new_offset"] == template.offset
    text = subprocess.run(
        ["pdftotext", str(study / "reports" / "cohort_report.pdf"), "-"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "t_cd45ra: expert template set by jdupont" in " ".join(text.split())


def test_an_adjusted_threshold_regates_that_sample_only(reviewed):
    from cohort.store import Store

    pages, study = reviewed["pages"], reviewed["study"]
    assert pages["adjusted_status"] == "overridden"
    threshold, value = pages["dragged"]
    assert threshold == "t_cd19" and abs(float(value) - 0.62) <= 0.003
    before_after = [line.split("\t") for line in pages["change"].splitlines()[1:]]
    cd19 = next(row for row in before_after if row[0] == "cd19_b")
    assert int(cd19[2]) < int(cd19[1])  # a higher CD19 threshold keeps fewer B cells
    store = Store(study / "immunomon.db")
    sample = store.current_sample("P04_M1_BCELL")
    mark = next(g for g in store.applied_gates(sample["sample_key"]) if g.name == "t_cd19")
    assert (mark.gate.value, mark.gate.method) == (float(value), "manual")
    # Only this sample (and the one whose ellipse was redrawn) has a new result: every other
    # current result is the demo run's.
    original = Store(reviewed["root"] / "immunomon.db")
    keys = set(store.files_frame().sample_id) - {"P04_M1_BCELL", ELLIPSE_SAMPLE}
    now = store.current_populations()
    then = original.current_populations()
    for frame in (now, then):
        frame.drop(frame[~frame.sample_id.isin(keys)].index, inplace=True)
    assert set(now.sample_key) == set(then.sample_key)
    store.close()
    original.close()
    populations = pd.read_csv(study / "results" / "populations.csv")
    row = populations[
        (populations.sample_id == "P04_M1_BCELL") & (populations.population == "cd19_b")
    ]
    assert row.review_status.iloc[0] == "overridden" and row.overridden_gates.iloc[0] == "t_cd19"
    samples = pd.read_csv(study / "results" / "samples.csv").set_index("sample_id")
    assert samples.at["P04_M3_BCELL", "review_status"] == "approved"


def test_an_ellipse_dragged_in_the_browser_is_stored_counted_and_audited(reviewed):
    """The drag moved the handles by the mouse; the drawn ellipse is the sample's gate now,
    its counts are the gate's own test on the events, the page showed them before and after,
    and the trail holds the signed change with both ellipses and both counts."""
    from cohort.audit import AuditLog
    from cohort.store import Store

    pages, study, root = reviewed["pages"], reviewed["study"], reviewed["root"]
    placed, drawn = pages["ellipse_placed"]["geometry"], pages["ellipse_drawn"]
    assert drawn["axes"][0] == pytest.approx(placed["axes"][0] / 2, rel=0.05)  # the drag
    assert drawn["axes"][1] == pytest.approx(placed["axes"][1])
    assert drawn["centre"][0] < placed["centre"][0]
    assert pages["ellipse_status"] == "overridden"
    assert "drawn by hand in review" in pages["ellipse_gates"]
    rows = {r.split("\t")[0]: r.split("\t")[1:] for r in pages["ellipse_change"].splitlines()}
    before, after = (int(v) for v in rows["lymphocytes"])
    assert after < before  # half the major axis: fewer lymphocytes
    store = Store(study / "immunomon.db")
    try:
        sample = store.current_sample(ELLIPSE_SAMPLE)
        gate = next(g for g in store.applied_gates(sample["sample_key"]) if g.name == "lymphocytes")
        (x, y), axes, angle = gate.gate.axes()
        assert [x, y] == pytest.approx(drawn["centre"]) and angle == pytest.approx(
            drawn["angle"], abs=1e-6
        )
        assert sorted(axes) == pytest.approx(sorted(drawn["axes"]))
        pops = store.current_populations()
        mine = pops[pops.sample_key == sample["sample_key"]].set_index("population")
        assert mine.at["lymphocytes", "count"] == after
        # The page's preview counted the same events (all are sent at 6000 per file).
        preview = int(re.search(r"lymphocytes: (\d+) of", pages["ellipse_preview"])[1])
        assert abs(preview - after) <= 2  # events on the boundary itself may differ
        entry = next(
            e
            for e in AuditLog(store.conn).entries()
            if e.sample_id == ELLIPSE_SAMPLE and e.action == "override"
        )
    finally:
        store.close()
    assert (entry.who, entry.reason, entry.detail["gate"]) == (
        "jdupont",
        ELLIPSE_REASON,
        "lymphocytes",
    )
    assert entry.detail["counts_before"]["lymphocytes"] == before
    assert entry.detail["counts_after"]["lymphocytes"] == after
    original = Store(root / "immunomon.db")
    then = original.current_populations()
    original.close()
    then = then[(then.sample_id == ELLIPSE_SAMPLE) & (then.population == "lymphocytes")]
    assert int(then["count"].iloc[0]) == before
    populations = pd.read_csv(study / "results" / "populations.csv")
    row = populations[
        (populations.sample_id == ELLIPSE_SAMPLE) & (populations.population == "lymphocytes")
    ]
    assert row.overridden_gates.iloc[0] == "lymphocytes" and row["count"].iloc[0] == after


def test_an_excluded_sample_leaves_the_statistics_and_is_listed_in_the_report(reviewed):
    pages, root, study = reviewed["pages"], reviewed["root"], reviewed["study"]
    assert pages["excluded_status"] == "excluded"
    before = pd.read_csv(root / "results" / "statistics.csv")
    after = pd.read_csv(study / "results" / "statistics.csv")
    keys = ["analysis", "group", "panel", "population", "measure", "visit", "test"]
    merged = before.merge(after, on=keys, suffixes=("_before", "_after"))
    m1_bcell = merged[(merged.visit == "M1") & (merged.panel == "BCELL")]
    # P05 (a child) is out of every M1 B-cell pair of all patients and of children.
    assert (
        m1_bcell[m1_bcell.group.isin(["all", "child"])].n_after
        == m1_bcell[m1_bcell.group.isin(["all", "child"])].n_before - 1
    ).all()
    other = merged[merged.visit != "M1"]
    assert (other.n_after == other.n_before).all()
    text = subprocess.run(
        ["pdftotext", "-layout", str(study / "reports" / "cohort_report.pdf"), "-"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Review and sign-off" in text
    assert "P05_M1_BCELL excluded from the statistics; why: haemolysed sample" in text
    assert "P04_M1_BCELL t_cd19" in text and "CD19 dim tail is not B cells" in text
    assert "PRELIMINARY:" in text  # most samples are not approved yet
    assert "excluded in review: haemolysed sample" in text  # listed with the missing samples


def test_the_audit_trail_verifies_exports_and_catches_an_edit(reviewed, tmp_path):
    study = reviewed["study"]
    done = _cli("audit", "verify", "--study", str(study))
    assert done.returncode == 0 and "audit trail intact" in done.stdout, done.stderr
    out = tmp_path / "trail.csv"
    assert _cli("audit", "export", "--study", str(study), "--out", str(out)).returncode == 0
    trail = pd.read_csv(out)
    actions = list(trail.action)
    assert actions[:1] == ["pass"] and {"override", "approve", "exclude"} <= set(actions)
    assert (trail.who[trail.action != "pass"] == "jdupont").all()
    override = trail[trail.action == "override"].iloc[0]
    assert "counts_before" in override.detail and override.reason == "CD19 dim tail is not B cells"
    copy = tmp_path / "tampered"
    shutil.copytree(study, copy)
    with sqlite3.connect(copy / "immunomon.db") as conn:
        seq = int(override.seq)
        conn.execute("UPDATE audit SET reason='typo fixed' WHERE seq=?", (seq,))
    done = _cli("audit", "verify", "--study", str(copy))
    assert done.returncode == 1
    assert f"entry {seq} was altered after it was written" in done.stderr


def test_the_report_anchors_the_trail_and_a_cut_end_is_found(reviewed, tmp_path):
    """Each action in the browser and the report left an anchor beside the study; the PDF
    prints one; deleting the trail's last entries then fails verify, naming them."""
    import re

    study = reviewed["study"]
    lines = (study / "audit_anchors.jsonl").read_text().splitlines()
    anchors = [json.loads(line) for line in lines if line]
    whys = [a["why"].split(" ")[0] for a in anchors]
    people = [why for why in whys if why != "cohort"]  # a report anchors the head too
    assert people[:3] == ["override", "approve", "exclude"]  # each action in the browser
    text = subprocess.run(
        ["pdftotext", "-layout", str(study / "reports" / "cohort_report.pdf"), "-"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    printed = re.search(r"--anchor\s+(\d+:[0-9a-f]{64})", text)[1]
    assert printed in {f"{a['seq']}:{a['hash']}" for a in anchors}  # the report's is filed too
    done = _cli("audit", "verify", "--study", str(study), "--anchor", printed)
    assert done.returncode == 0 and "anchor(s) checked" in done.stdout, done.stderr
    copy = tmp_path / "cut"
    shutil.copytree(study, copy)
    seq = int(printed.split(":")[0])
    with sqlite3.connect(copy / "immunomon.db") as conn:
        conn.execute("DELETE FROM audit WHERE seq >= ?", (seq - 1,))
    (copy / "audit_anchors.jsonl").unlink()  # even with the study's anchor file gone
    done = _cli("audit", "verify", "--study", str(copy), "--anchor", printed)
    assert done.returncode == 1 and f"names entry {seq}" in done.stderr
    assert "were deleted" in done.stderr and "Traceback" not in done.stderr


def test_the_nightly_pass_keeps_the_override_and_undo_is_a_new_entry(reviewed, tmp_path):
    from cohort.audit import AuditLog
    from cohort.review import ReviewStatus
    from cohort.store import Store
    from flows.nightly import run_study
    from flows.review import ReviewServer, drift_table

    study = tmp_path / "study"
    shutil.copytree(reviewed["study"], study)
    # The browser's study template re-gates every Treg sample on a pass (its identity is
    # checked above and in tests/test_templates.py); here the override's survival is at stake.
    reference = Path("references") / "treg.yaml"
    if (reviewed["root"] / reference).is_file():
        shutil.copy(reviewed["root"] / reference, study / reference)
    else:
        (study / reference).unlink()
    summary = run_study(study, 1)
    assert summary.processed == 0 and summary.unchanged == 182  # the override stays current
    server = ReviewServer(study, accounts=False)
    assert server.states()["P04_M1_BCELL"].status == "overridden"
    assert server.states()[ELLIPSE_SAMPLE].status == "overridden"  # the drawn ellipse too
    drawn = reviewed["pages"]["ellipse_drawn"]
    store = Store(study / "immunomon.db")
    sample = store.current_sample(ELLIPSE_SAMPLE)
    gate = next(g for g in store.applied_gates(sample["sample_key"]) if g.name == "lymphocytes")
    store.close()
    assert list(gate.gate.mean) == pytest.approx(drawn["centre"])
    assert server.undo(ELLIPSE_SAMPLE, "jdupont", "ellipse was right") == "override"
    original = Store(reviewed["root"] / "immunomon.db")
    store = Store(study / "immunomon.db")
    try:
        counts = [
            s.current_populations()
            .query("sample_id == @ELLIPSE_SAMPLE")
            .set_index("population")["count"]
            for s in (original, store)
        ]
        sample = store.current_sample(ELLIPSE_SAMPLE)
        gate = next(g for g in store.applied_gates(sample["sample_key"]) if g.name == "lymphocytes")
    finally:
        original.close()
        store.close()
    assert gate.note != "drawn by hand in review"
    assert counts[0].to_dict() == counts[1].to_dict()  # undo re-gated: the placed ellipse again
    # Drift is scored on thresholds, population shares and the gating markers' medians.
    keys = set(drift_table(server).key)
    assert {"threshold t_cd19", "% cd19_b", "median cd19_b CD19"} <= keys
    assert not any(k.startswith("median cd19_b IgD") for k in keys)  # not its gating marker
    assert server.undo("P04_M1_BCELL", "jdupont", "wrong sample") == "override"
    store = Store(study / "immunomon.db")
    sample = store.current_sample("P04_M1_BCELL")
    mark = next(g for g in store.applied_gates(sample["sample_key"]) if g.name == "t_cd19")
    assert mark.gate.method != "manual"
    entries = AuditLog(store.conn).entries()
    assert entries[-1].action == "undo" and any(e.action == "override" for e in entries)
    assert AuditLog(store.conn).verify() == ""
    store.close()
    after_undo = server.states().get("P04_M1_BCELL", ReviewStatus("P04_M1_BCELL"))
    assert after_undo.status == "to_review" and not after_undo.overrides


def test_review_never_writes_to_the_inbox(reviewed, demo_run):
    _, _, inbox_before = demo_run
    inbox = reviewed["study"] / "inbox"
    assert {p.name: p.read_bytes() for p in inbox.iterdir()} == inbox_before
