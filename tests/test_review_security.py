"""The review application's rules, on plain functions and FastAPI's test client: the trail's
state rules, forms that need their token, personal accounts, signatures, rate limits."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from cohort.accounts import AccountError, add_user, check_password
from cohort.audit import AuditError, AuditLog
from cohort.review import overrides_in_force, review_states
from cohort.store import Store

ROOT = Path(__file__).parents[1]


@pytest.fixture()
def log(tmp_path):
    store = Store(tmp_path / "immunomon.db")
    yield AuditLog(store.conn)
    store.close()


def _override(log, sample="P01_M1_BCELL", value=0.6, strategy="s1", who="ana"):
    return log.append(
        who,
        "override",
        "tail is debris",
        "test",
        sample,
        {"threshold": "t_cd19", "old": 0.5, "new": value, "strategy_sha256": strategy},
    )


def test_state_follows_the_trail_and_undo_is_an_entry(log):
    _override(log)
    assert review_states(log.entries())["P01_M1_BCELL"].status == "overridden"
    log.append("ana", "approve", "looked at it", "test", "P01_M1_BCELL")
    assert review_states(log.entries())["P01_M1_BCELL"].status == "approved"
    _override(log, value=0.65)  # changed after approval: back to overridden, not approved
    state = review_states(log.entries())["P01_M1_BCELL"]
    assert state.status == "overridden" and state.overrides["t_cd19"].value == 0.65
    undo = log.append("ana", "undo", "wrong value", "test", "P01_M1_BCELL", {"undoes": 3})
    state = review_states(log.entries())["P01_M1_BCELL"]
    assert state.status == "approved" and state.overrides["t_cd19"].value == 0.6
    assert undo.seq == 4 and len(log.entries()) == 4 and log.verify() == ""


def test_a_changed_strategy_sends_the_sample_back_to_review(log):
    _override(log, strategy="old-strategy")
    log.append("ana", "approve", "fine", "test", "P01_M1_BCELL")
    state = review_states(log.entries(), {"P01_M1_BCELL": "new-strategy"})["P01_M1_BCELL"]
    assert state.status == "to_review" and "not applied" in state.note
    assert overrides_in_force(log.entries(), {"BCELL": "new-strategy"}) == {}
    assert overrides_in_force(log.entries(), {"BCELL": "old-strategy"}) == {
        "P01_M1_BCELL": {"t_cd19": 0.6}
    }


def test_entries_need_a_name_and_a_reason(log):
    with pytest.raises(AuditError, match="name"):
        log.append(" ", "approve", "ok", "test", "P01_M1_BCELL")
    with pytest.raises(AuditError, match="reason"):
        log.append("ana", "exclude", "  ", "test", "P01_M1_BCELL")


def test_deleting_an_entry_breaks_the_chain(log):
    for _ in range(3):
        _override(log)
    log.conn.execute("DELETE FROM audit WHERE seq=2")
    assert log.verify() == "entry 2 is missing (the next entry is 3)"


def test_accounts_store_a_salted_hash_not_the_password(tmp_path):
    store = Store(tmp_path / "immunomon.db")
    add_user(store.conn, "ana.silva", "correct horse battery")
    add_user(store.conn, "bo", "correct horse battery")
    rows = store.conn.execute("SELECT name, salt, hash FROM users").fetchall()
    assert rows[0][1] != rows[1][1] and rows[0][2] != rows[1][2]  # salted
    assert b"correct horse" not in b"".join(r[2] for r in rows)
    assert check_password(store.conn, "ana.silva", "correct horse battery")
    assert not check_password(store.conn, "ana.silva", "correct horse batterY")
    assert not check_password(store.conn, "nobody", "correct horse battery")
    with pytest.raises(AccountError, match="at least"):
        add_user(store.conn, "cy", "short")
    store.close()


@pytest.fixture()
def study(tmp_path):
    from simulate.demo import DemoOptions, simulate_study

    root = tmp_path / "study"
    simulate_study(root, DemoOptions(events_per_file=1000, include_bad_files=False))
    return root


def _token(response) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', response.text)[1]


def test_forms_without_their_token_change_nothing(study):
    from fastapi.testclient import TestClient

    from flows.review import create_app

    client = TestClient(create_app(study))
    page = client.get("/whoami")
    assert client.post("/whoami", data={"name": "ana", "csrf": "forged"}).status_code == 403
    client.post("/whoami", data={"name": "ana", "csrf": _token(page)})
    response = client.post(
        "/sample/P01_BL_BCELL/decide",
        data={"action": "approve", "reason": "ok", "csrf": "forged"},
    )
    assert response.status_code == 403
    store = Store(study / "immunomon.db")
    assert AuditLog(store.conn).entries() == []
    store.close()
    assert client.get("/sample/..%2F..%2Fetc%2Fpasswd").status_code == 404  # ids: store only


def test_accounts_sign_in_rate_limit_and_signature(study):
    from fastapi.testclient import TestClient

    from flows.review import MAX_FAILED_SIGN_INS, create_app

    store = Store(study / "immunomon.db")
    add_user(store.conn, "ana", "a long enough password")
    store.close()
    client = TestClient(create_app(study, accounts=True))
    assert client.get("/", follow_redirects=False).headers["location"].startswith("/signin")
    token = _token(client.get("/signin"))
    for _ in range(MAX_FAILED_SIGN_INS):
        response = client.post("/signin", data={"name": "ana", "password": "guess", "csrf": token})
        assert "signin" in str(response.url)
    locked = client.post(
        "/signin", data={"name": "ana", "password": "a long enough password", "csrf": token}
    )
    assert locked.status_code == 429  # even the right password waits
    store = Store(study / "immunomon.db")
    failures = [e for e in AuditLog(store.conn).entries() if e.action == "sign_in_failed"]
    store.close()
    assert len(failures) == MAX_FAILED_SIGN_INS and failures[0].who == "ana"

    other = TestClient(create_app(study, accounts=True))
    token = _token(other.get("/signin"))
    other.post("/signin", data={"name": "ana", "password": "a long enough password", "csrf": token})
    assert "ana" in other.get("/signoff").text
    unsigned = other.post(
        "/signoff/approve",
        data={"visit": "BL", "panel": "BCELL", "reason": "ok", "password": "", "csrf": token},
    )
    assert unsigned.status_code == 403  # an approval is a signature: the password again
    store = Store(study / "immunomon.db")
    assert not [e for e in AuditLog(store.conn).entries() if e.action == "approve"]
    store.close()


def test_review_on_the_network_needs_accounts(study):
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "review", "--study", str(study), "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "add personal accounts first" in done.stderr


@pytest.mark.slow
def test_a_changed_strategy_drops_the_override_and_sends_the_sample_back(tmp_path, prefect_harness):
    """An override survives passes while the strategy stays; a new strategy re-gates the
    sample without it and puts it back to review, saying which override was not applied."""
    import yaml

    from cohort.study import Study, StudyError
    from flows.nightly import run_study
    from flows.review import ReviewServer
    from simulate.demo import DemoOptions, simulate_study

    root = tmp_path / "study"
    simulate_study(root, DemoOptions(events_per_file=3000, include_bad_files=False))
    for path in list((root / "inbox").iterdir()):
        if not path.name.startswith(("P01_BL_BCELL", "P01_M1_BCELL")):
            path.unlink()
    config = yaml.safe_load((root / "study.yaml").read_text())
    config["qc_reports"] = "none"
    (root / "study.yaml").write_text(yaml.safe_dump(config))
    assert run_study(root, 1).processed == 2
    server = ReviewServer(root, accounts=False)
    with Study(root).exclusive():  # a pass is writing results: no re-gating meanwhile
        with pytest.raises(StudyError, match="another pass holds the study"):
            server.adjust("P01_M1_BCELL", "t_cd27", 0.55, "ana", "memory tail")
    assert server.states() == {}  # nothing recorded for the refused adjustment
    server.adjust("P01_M1_BCELL", "t_cd27", 0.55, "ana", "memory tail")
    assert run_study(root, 1).processed == 0  # the override is the current result

    strategy = yaml.safe_load((ROOT / "gating" / "strategies" / "bcell.yaml").read_text())
    strategy["version"] += 1
    strategy["qc"]["min_population_events"] = 40
    (root / "bcell_v4.yaml").write_text(yaml.safe_dump(strategy))
    panel = yaml.safe_load((ROOT / "panels" / "bcell.yaml").read_text())
    panel["strategy"] = "bcell_v4.yaml"
    (root / "bcell_panel.yaml").write_text(yaml.safe_dump(panel))
    config["panels"]["BCELL"] = "bcell_panel.yaml"
    (root / "study.yaml").write_text(yaml.safe_dump(config))

    assert run_study(root, 1).processed == 2  # both re-gated with the new strategy
    server = ReviewServer(root, accounts=False)
    state = server.states()["P01_M1_BCELL"]
    assert state.status == "to_review" and "t_cd27" in state.note and "not applied" in state.note
    sample = server.store.current_sample("P01_M1_BCELL")
    mark = next(g for g in server.store.applied_gates(sample["sample_key"]) if g.name == "t_cd27")
    assert mark.gate.method != "manual"
