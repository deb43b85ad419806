"""Attacks on sign-off itself: numbers reaching the results as approved though nobody signed
them (a re-gate after the approval, a new file under the same name, a store edited by hand,
a page left open while a pass re-gated the sample), and state changes from the command line
that escape the trail or the signature. Each test failed before its fix."""

from __future__ import annotations

import hashlib
import shutil

import pandas as pd
import pytest

from cohort.accounts import add_user
from cohort.review import current_review_states, status_frame
from cohort.store import Store
from cohort.study import Study
from tests.conftest import gate_and_record
from tests.test_review_security import PASSWORD, _client, _named, _signed_in, _token, _trail

SAMPLE = "P01_BL_BCELL"


@pytest.fixture()
def study(reviewable, tmp_path):
    root = tmp_path / "study"
    shutil.copytree(reviewable, root)
    return root


def _states(study):
    store = Store(study / "immunomon.db")
    try:
        return current_review_states(Study(study), store)
    finally:
        store.close()


def _approve(client, token, sample=SAMPLE, **extra):
    data = {"action": "approve", "reason": "gates look right", "csrf": token} | extra
    return client.post(f"/sample/{sample}/decide", data=data)


def _regate_behind_review(study, sample_id=SAMPLE, overrides=None, content=None):
    """What a processing pass does after a strategy, template or pipeline change (the
    strategy's identity changes) or once a file is replaced under the same name
    (``content``): the sample gets a new current result, with no review action."""
    st = Study(study)
    store = Store(st.db_path)
    try:
        sample = store.current_sample(sample_id)
        path = st.inbox / sample["file_name"]
        if content is not None:
            path.write_bytes(content)
        strategy = st.strategies[sample["panel"]]
        if overrides:
            strategy = strategy.with_overrides(overrides)
        record = gate_and_record(store, st, path, strategy, "nightly")
        return record.sample_key
    finally:
        store.close()


def _populations_status(study, sample_id=SAMPLE) -> str:
    """The review_status that results/populations.csv and samples.csv carry."""
    frame = status_frame(_states(study), [sample_id])
    return frame.review_status.iloc[0]


def test_an_approval_does_not_cover_a_result_regated_after_it(study):
    client = _client(study)
    token = _named(client)
    assert _approve(client, token).status_code == 200
    approval = _trail(study)[-1]
    store = Store(study / "immunomon.db")
    assert approval.detail["result"] == store.current_sample(SAMPLE)["sample_key"]
    store.close()
    assert _states(study)[SAMPLE].status == "approved"

    _regate_behind_review(study, overrides={"t_cd19": 0.7})  # a new strategy, no one looked
    state = _states(study)[SAMPLE]
    assert state.status == "to_review" and "re-gated since" in state.note
    assert _populations_status(study) == "to_review"
    page = client.get(f"/sample/{SAMPLE}").text
    assert "these numbers are not signed" in page
    assert _approve(client, _token(client.get(f"/sample/{SAMPLE}"))).status_code == 200
    assert _states(study)[SAMPLE].status == "approved"  # signed again, for these numbers


def test_a_new_file_under_the_approved_name_is_not_approved(study):
    client = _client(study)
    _approve(client, _named(client))
    inbox = study / "inbox" / f"{SAMPLE}.fcs"
    content = bytearray(inbox.read_bytes())
    content[len(content) // 2] ^= 0x01  # a re-run tube: another acquisition, the same name
    _regate_behind_review(study, content=bytes(content))
    state = _states(study)[SAMPLE]
    assert state.status == "to_review" and "new file under its name" in state.note
    assert _populations_status(study) == "to_review"


def test_counts_edited_in_the_store_are_not_approved(study):
    client = _client(study)
    _approve(client, _named(client))
    store = Store(study / "immunomon.db")
    with store.conn:
        store.conn.execute(
            "UPDATE populations SET count = count + 50 WHERE population = 'cd19_b' "
            "AND sample_key = (SELECT sample_key FROM samples WHERE sample_id = ?)",
            (SAMPLE,),
        )
    store.close()
    state = _states(study)[SAMPLE]
    assert state.status == "to_review" and "counts of this result differ" in state.note
    assert _populations_status(study) == "to_review"
    store = Store(study / "immunomon.db")
    with store.conn:  # not even a number: still named, never a traceback
        store.conn.execute("UPDATE populations SET count = 'many' WHERE population = 'cd19_b'")
    store.close()
    assert "counts of this result differ" in _states(study)[SAMPLE].note


def test_undoing_an_override_restores_the_approval_of_the_same_numbers(study):
    """Approve, adjust (re-gated: not approved), undo (re-gated back to the approved
    result): the approval covers those numbers again."""
    client = _client(study)
    token = _named(client)
    _approve(client, token)
    adjust = {"threshold": "t_cd19", "value": "0.62", "reason": "tail", "csrf": token}
    client.post(f"/sample/{SAMPLE}/adjust", data=adjust)
    assert _states(study)[SAMPLE].status == "overridden"
    client.post(f"/sample/{SAMPLE}/undo", data={"reason": "not needed", "csrf": token})
    assert _states(study)[SAMPLE].status == "approved"


def test_an_approval_from_a_page_opened_before_a_regate_is_refused(study):
    """The page showed one result; a pass re-gated the sample meanwhile: the click must not
    sign numbers the person never saw."""
    client = _client(study, accounts=True)
    _signed_in(client)
    page = client.get(f"/sample/{SAMPLE}")
    seen = Store(study / "immunomon.db").current_sample(SAMPLE)["sample_key"]
    assert f'name="result" value="{seen}"' in page.text
    _regate_behind_review(study, overrides={"t_cd19": 0.7})
    response = _approve(client, _token(page), password=PASSWORD, result=seen)
    assert "re-gated since its page was opened" in response.text
    assert [e.action for e in _trail(study)] == []
    assert _states(study) == {}


def test_with_accounts_nobody_approves_their_own_change(study):
    """Four eyes: ana adjusts a threshold; ana's approval is refused (one sample or a whole
    visit), bo's is accepted. Her exclusion is not a sign-off of her numbers: allowed."""
    ana, bo = _client(study, accounts=True), _client(study, accounts=True)
    token = _signed_in(ana)
    adjust = {"threshold": "t_cd19", "value": "0.62", "reason": "tail", "csrf": token}
    ana.post(f"/sample/{SAMPLE}/adjust", data=adjust)
    response = _approve(ana, token, password=PASSWORD)
    assert "t_cd19 set by you; another person approves" in response.text
    bulk = {"visit": "BL", "panel": "BCELL", "reason": "all fine", "password": PASSWORD}
    response = ana.post("/signoff/approve", data=bulk | {"csrf": token})
    assert (
        "1 sample(s) of BL BCELL approved; left for another person (your own changes, four "
        "eyes): P01_BL_BCELL" in response.text
    )  # P02_BL_BCELL carries no change of hers
    assert [(e.action, e.sample_id) for e in _trail(study)] == [
        ("override", SAMPLE),
        ("approve", "P02_BL_BCELL"),
    ]
    bo_token = _signed_in(bo, "bo", PASSWORD + " too")
    response = bo.post(
        "/signoff/approve", data=bulk | {"csrf": bo_token, "password": PASSWORD + " too"}
    )
    assert "1 sample(s) of BL BCELL approved" in response.text
    assert _states(study)[SAMPLE].status == "approved" and _trail(study)[-1].who == "bo"
    undo = {"reason": "ask again", "password": PASSWORD + " too", "csrf": bo_token}
    bo.post(f"/sample/{SAMPLE}/undo", data=undo)
    exclude = {"action": "exclude", "reason": "clumps", "password": PASSWORD, "csrf": token}
    ana.post(f"/sample/{SAMPLE}/decide", data=exclude)
    assert _states(study)[SAMPLE].status == "excluded"


def _forge_approval(study, sample_id: str) -> None:
    """An approval written into the store by hand, its hash chain recomputed."""
    from cohort.audit import entry_hash

    store = Store(study / "immunomon.db")
    conn = store.conn
    seq, prev = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    fields = ["2026-12-01T00:00:00+00:00", "ana", "approve", sample_id, "{}", "fine", "x"]
    with conn:
        conn.execute(
            "INSERT INTO audit VALUES (?,?,?,?,?,?,?,?,?,?)",
            (seq + 1, *fields, prev, entry_hash(prev, seq + 1, *fields)),
        )
    store.close()


def test_a_hand_edited_trail_voids_every_approval_and_the_report_says_so(study, tmp_path):
    from pypdf import PdfReader

    from cohort.review import trail_problem
    from reports.cohort_report import _title_page, write_cohort_report
    from tests.test_text_is_text import _context

    client = _client(study)
    _approve(client, _named(client))
    assert _states(study)[SAMPLE].status == "approved"
    _forge_approval(study, "P01_M1_BCELL")  # no anchor: review never wrote it
    states = _states(study)
    assert states["P01_M1_BCELL"].status == "to_review"
    assert states[SAMPLE].status == "to_review" and "does not verify" in states[SAMPLE].note
    assert _populations_status(study) == "to_review"
    assert "no approval is in force" in client.get(f"/sample/{SAMPLE}").text

    store = Store(study / "immunomon.db")
    problem = trail_problem(study, store.conn)
    store.close()
    assert "entry 4 (approve P01_M1_BCELL by ana" in problem and "has no anchor" in problem
    samples = pd.DataFrame(columns=["status"])
    ctx = _context(trail_problem=problem, preliminary=3)
    path = write_cohort_report(
        tmp_path / "r.pdf",
        ctx,
        [(0.1, lambda pdf: _title_page(pdf, ctx=ctx, samples=samples, monitor=None))],
    )
    text = " ".join(PdfReader(path).pages[0].extract_text().split())
    assert "AUDIT TRAIL BROKEN: entry 4 (approve P01_M1_BCELL" in text
    assert "No approval is in force" in text


def test_an_exclusion_deleted_from_the_store_is_named_on_the_report(study):
    """Deleting an exclusion by hand brings the sample back into the statistics: the trail
    check names the gap, so the report cannot claim a whole review."""
    from cohort.review import trail_problem

    client = _client(study)
    token = _named(client)
    exclude = {"action": "exclude", "reason": "haemolysed", "csrf": token}
    client.post(f"/sample/{SAMPLE}/decide", data=exclude)
    _approve(client, token, sample="P01_M1_BCELL")
    store = Store(study / "immunomon.db")
    with store.conn:
        store.conn.execute("DELETE FROM audit WHERE seq = 3")  # 1, 2: the accounts
    problem = trail_problem(study, store.conn)
    store.close()
    assert "entry 3" in problem and "missing" in problem
    assert _states(study)["P01_M1_BCELL"].status == "to_review"


def test_a_template_from_the_command_line_is_signed_by_an_account(study, capsys, monkeypatch):
    """With accounts, `reference set --who` is an account whose password is given: nobody
    sets a study-wide template under another person's name."""
    import io

    from flows.cli import main

    command = ["-q", "reference", "set", "--study", str(study), "--panel", "TREG"]
    command += ["--threshold", "t_cd45ra", "--value", "0.5", "--sample", "P01_BL_TREG"]
    command += ["--reason", "expert"]
    assert main([*command, "--who", "Dr Mallory"]) == 2
    assert "'Dr Mallory' is not an account of this study" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("not her password\n"))
    assert main([*command, "--who", "ana"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: the password of ana does not match: nothing was changed"
    )
    assert _trail(study) == []
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert main([*command, "--who", "ana"]) == 0
    assert [(e.action, e.who) for e in _trail(study)] == [("template", "ana")]


def test_building_a_study_reference_is_in_the_trail(study, capsys, monkeypatch):
    """`reference build` re-gates the panel on the next pass: it is recorded (who, what file,
    its sha256) and anchored, and the trail still verifies. (The placement itself needs five
    samples with a landmark; here it writes a file, as it does, on this study's one.)"""
    from types import SimpleNamespace

    import cohort.references
    from cohort.review import reviewer_name, trail_problem
    from flows.cli import main

    written = Study(study).reference_path("treg")

    def build(study_, panel, files, software):
        written.parent.mkdir(parents=True, exist_ok=True)
        written.write_text(f"panel: {panel}\nsamples: {len(files)}\n")
        return SimpleNamespace(thresholds={}), written

    monkeypatch.setattr(cohort.references, "build_panel_reference", build)
    assert main(["-q", "reference", "build", "--study", str(study), "--panel", "TREG"]) == 0
    (entry,) = _trail(study)
    assert (entry.action, entry.who) == ("reference", reviewer_name())
    assert entry.detail["panel"] == "TREG" and entry.detail["samples"] == 1
    assert entry.detail["sha256"] == hashlib.sha256(written.read_bytes()).hexdigest()
    store = Store(study / "immunomon.db")
    assert trail_problem(study, store.conn) == ""
    store.close()
    assert f'"seq": {entry.seq}' in (study / "audit_anchors.jsonl").read_text()


# Sessions: fixation, expiry, another study's account or cookie ------------------------------
def test_a_planted_session_cookie_is_not_signed_in_by_its_victim(study):
    """Fixation: the attacker's pre-sign-in cookie, planted in the victim's browser, does not
    become the victim's session when the victim signs in."""
    attacker, victim = _client(study, accounts=True), _client(study, accounts=True)
    attacker.get("/signin")
    planted = dict(attacker.cookies)
    victim.cookies.update(planted)
    token = _signed_in(victim)
    assert "Sign out" in victim.get("/signoff").text
    assert attacker.get("/signoff", follow_redirects=False).status_code == 303  # not ana
    response = _approve(attacker, token, password=PASSWORD)
    assert response.status_code in (401, 403) and _trail(study) == []


def test_a_session_ends_after_its_hours(study):
    import time

    from flows.review_security import SESSION_HOURS

    client = _client(study, accounts=True)
    token = _signed_in(client)
    guard = client.app.state.guard
    later = time.monotonic() + SESSION_HOURS * 3600 + 1
    guard.clock = lambda: later
    assert client.get("/signoff", follow_redirects=False).headers["location"].startswith("/signin")
    response = _approve(client, token, password=PASSWORD)
    assert response.status_code in (401, 403) and _trail(study) == []


def test_another_studys_account_or_cookie_does_nothing_here(study, tmp_path):
    """Accounts live in each study's store, sessions in each server: eve of study B cannot
    sign in to study A, and B's session cookie is no session of A's server."""
    other = tmp_path / "other"
    shutil.copytree(study, other)
    store = Store(other / "immunomon.db")
    add_user(store.conn, "eve", PASSWORD, by="admin", anchors=other / "audit_anchors.jsonl")
    store.close()
    here = _client(study, accounts=True)
    token = _token(here.get("/signin"))
    here.post("/signin", data={"name": "eve", "password": PASSWORD, "csrf": token})
    assert here.get("/signoff", follow_redirects=False).status_code == 303
    there = _client(other, accounts=True)
    there_token = _signed_in(there, "eve")
    here.cookies.clear()
    here.cookies.update(dict(there.cookies))
    assert here.get("/signoff", follow_redirects=False).status_code == 303
    response = _approve(here, there_token, password=PASSWORD)
    assert response.status_code in (401, 403) and _trail(study) == []


class _CountingVerifier:
    """cohort.review's trail verifier, counted."""

    def __init__(self, monkeypatch):
        import cohort.review

        self.calls, real = 0, cohort.review.verify_study_trail

        def counted(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(cohort.review, "verify_study_trail", counted)


def _report_contexts(monkeypatch) -> list:
    """The cohort report's context of each write, its pages left undrawn (seconds saved)."""
    import reports.outputs

    contexts = []

    def capture(path, context, sections, **_):
        contexts.append(context)
        return path

    monkeypatch.setattr(reports.outputs, "write_cohort_report", capture)
    return contexts


def test_a_write_verifies_the_trail_once_and_a_broken_trail_still_voids_its_approvals(
    study, monkeypatch
):
    """The trail was verified three times per results-and-report write (the written-from
    inputs, the review states, the report's first page); once now, its verdict passed to
    each part: a forged approval still voids the real one in samples.csv and is named on the
    report's first page, by both writers (the review's publish and the flow's). The publish
    no longer anchors a trail that does not verify: it anchored the forged last entry, and
    the flow's write after it found the trail whole."""
    import hashlib
    import json

    from flows.outcome import write_cohort_outputs
    from reports.outputs import update_outputs, write_report, write_results

    client = _client(study)
    _approve(client, _named(client))
    _forge_approval(study, "P01_M1_BCELL")
    contexts = _report_contexts(monkeypatch)
    verifier = _CountingVerifier(monkeypatch)
    st = Study(study)
    store = Store(st.db_path)
    try:
        update_outputs(st, store)
        assert verifier.calls == 1
        write_cohort_outputs(st, store, write_results, write_report, only_if_changed=False)
        assert verifier.calls == 2
    finally:
        store.close()
    assert len(contexts) == 2
    for ctx in contexts:
        assert "entry 4 (approve P01_M1_BCELL by ana" in ctx.trail_problem  # 1, 2: accounts
        assert "has no anchor" in ctx.trail_problem
    samples = pd.read_csv(study / "results" / "samples.csv").set_index("sample_id")
    assert samples.at[SAMPLE, "review_status"] == "to_review"
    recorded = json.loads((study / "results" / "written_from.json").read_text())
    assert recorded["inputs"]["audit trail check"] == (
        hashlib.sha256(contexts[-1].trail_problem.encode()).hexdigest()
    )


def test_a_verdict_is_not_reused_once_the_trail_has_changed(study):
    """A verdict stands for the trail it was made of: an entry added since (by hand, while a
    write ran) is verified, not waved through."""
    from cohort.review import study_trail_verdict

    store = Store(study / "immunomon.db")
    try:
        whole = study_trail_verdict(study, store.conn)
        assert whole.problem == ""
        assert study_trail_verdict(study, store.conn, whole) is whole
    finally:
        store.close()
    client = _client(study)
    _approve(client, _named(client))
    _forge_approval(study, "P01_M1_BCELL")
    store = Store(study / "immunomon.db")
    try:
        again = study_trail_verdict(study, store.conn, whole)
    finally:
        store.close()
    assert "has no anchor" in again.problem and again.mark != whole.mark
