"""The review application's rules, on plain functions and FastAPI's test client: the trail's
state rules, forms that need their token, personal accounts, signatures, rate limits."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest

from cohort.accounts import AccountError, add_user, check_password
from cohort.audit import AuditError, AuditLog
from cohort.review import overrides_in_force, review_states
from cohort.store import Store
from tests.conftest import REVIEW_PASSWORD

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
    add_user(store.conn, "ana.silva", "correct horse battery", by="admin")
    add_user(store.conn, "bo", "correct horse battery", by="admin")
    rows = store.conn.execute("SELECT name, salt, hash FROM users").fetchall()
    assert rows[0][1] != rows[1][1] and rows[0][2] != rows[1][2]  # salted
    assert b"correct horse" not in b"".join(r[2] for r in rows)
    assert check_password(store.conn, "ana.silva", "correct horse battery")
    assert not check_password(store.conn, "ana.silva", "correct horse batterY")
    assert not check_password(store.conn, "nobody", "correct horse battery")
    with pytest.raises(AccountError, match="at least"):
        add_user(store.conn, "cy", "short", by="admin")
    store.close()


BASE = "http://127.0.0.1:8765"  # the address the app is served at (Site's default)
PASSWORD = REVIEW_PASSWORD
SAMPLE = "P01_BL_BCELL"
TREG_SAMPLE = "P01_BL_TREG"


@pytest.fixture()
def study(reviewable, tmp_path):
    import shutil

    root = tmp_path / "study"
    shutil.copytree(reviewable, root)
    return root


def _client(study, accounts=False, site=None, base=BASE):
    from fastapi.testclient import TestClient

    from flows.review import create_app

    return TestClient(create_app(study, accounts=accounts, site=site), base_url=base)


def _token(response) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', response.text)[1]


def _named(client, name="ana") -> str:
    """Give the name (loopback mode); returns the session's form token."""
    client.post("/whoami", data={"name": name, "csrf": _token(client.get("/whoami"))})
    return _token(client.get("/signoff"))


def _signed_in(client, name="ana", password=PASSWORD) -> str:
    """Sign in with an account; returns the session's form token."""
    token = _token(client.get("/signin"))
    client.post("/signin", data={"name": name, "password": password, "csrf": token})
    return _token(client.get("/signoff"))


def _trail(study, accounts: bool = False) -> list:
    """The study's audit entries; without ``accounts``, those after the accounts were made
    (the fixture's `user_added` entries and any account entry left out)."""
    from cohort.audit import ACCOUNT_ACTIONS

    store = Store(study / "immunomon.db")
    try:
        entries = AuditLog(store.conn).entries()
    finally:
        store.close()
    return [e for e in entries if accounts or e.action not in ACCOUNT_ACTIONS]


def _status(study, sample_id=SAMPLE) -> str:
    from cohort.review import ReviewStatus

    return review_states(_trail(study)).get(sample_id, ReviewStatus(sample_id)).status


# 1. every state-changing request: authenticated, authorised, bound to the site -------------
def test_forms_without_their_token_change_nothing(study):
    client = _client(study)
    page = client.get("/whoami")
    assert client.post("/whoami", data={"name": "ana", "csrf": "forged"}).status_code == 403
    client.post("/whoami", data={"name": "ana", "csrf": _token(page)})
    response = client.post(
        f"/sample/{SAMPLE}/decide", data={"action": "approve", "reason": "ok", "csrf": "forged"}
    )
    assert response.status_code == 403
    assert _trail(study) == []
    assert client.get("/sample/..%2F..%2Fetc%2Fpasswd").status_code == 404  # ids: store only


def test_a_session_that_never_had_a_token_is_refused_without_one(study):
    """The attack: /whoami (or /signin) with no token, then every action with none."""
    fresh = _client(study)
    response = fresh.post("/whoami", data={"name": "mallory"}, follow_redirects=False)
    assert response.status_code == 403 and "form token" in response.json()["detail"]
    assert (
        _client(study, accounts=True)
        .post("/signin", data={"name": "ana", "password": PASSWORD})
        .status_code
        == 403
    )
    named = _client(study)
    _named(named)
    for path, data in [
        (f"/sample/{SAMPLE}/adjust", {"threshold": "t_cd19", "value": "0.6", "reason": "x"}),
        (f"/sample/{SAMPLE}/decide", {"action": "exclude", "reason": "x"}),
        (f"/sample/{SAMPLE}/undo", {"reason": "x"}),
        ("/signoff/approve", {"visit": "BL", "panel": "BCELL", "reason": "x"}),
        ("/publish", {}),
        ("/signout", {}),
    ]:
        for token in ("", None):
            body = data | ({"csrf": token} if token is not None else {})
            response = named.post(path, data=body, follow_redirects=False)
            assert response.status_code == 403, (path, response.text)
            assert "form token" in response.json()["detail"]
    assert _trail(study) == [] and "mallory" not in named.get("/").text


def test_a_rebound_host_or_a_foreign_origin_is_refused(study):
    """DNS rebinding: the attacker's page reaches the loopback server under its own name."""
    client = _client(study)
    token = _named(client)
    rebound = {
        "Host": "rebind.attacker.example:8765",
        "Origin": "http://rebind.attacker.example:8765",
    }
    excluded = {"action": "exclude", "reason": "attacker", "csrf": token}
    response = client.post(f"/sample/{SAMPLE}/decide", data=excluded, headers=rebound)
    assert response.status_code == 421 and "answers at http://127.0.0.1:8765" in response.text
    assert client.get("/", headers=rebound).status_code == 421  # nor are pages read
    foreign = {"Origin": "http://evil.example"}
    response = client.post(f"/sample/{SAMPLE}/decide", data=excluded, headers=foreign)
    assert response.status_code == 403 and "evil.example" in response.json()["detail"]
    response = client.post(
        f"/sample/{SAMPLE}/decide", data=excluded, headers={"Referer": "http://evil.example/x"}
    )
    assert response.status_code == 403
    assert _trail(study) == []
    own = {"Origin": BASE, "Referer": f"{BASE}/sample/{SAMPLE}"}
    response = client.post(f"/sample/{SAMPLE}/decide", data=excluded, headers=own)
    assert response.status_code == 200 and _status(study) == "excluded"  # the real page works


def test_every_state_changing_route_goes_through_the_guard(study):
    """Enumerates the app's routes: one that changes state without the guard fails this."""
    from flows.review import create_app
    from flows.review_security import routes_and_checks

    def unguarded(app) -> list[str]:
        guard = app.state.guard
        return [
            path
            for methods, path, calls, _ in routes_and_checks(app)
            if methods - {"GET", "HEAD"} and guard.check_form not in calls
        ]

    app = create_app(study)
    routes = routes_and_checks(app)
    posts = {r.path for r in routes if "POST" in r.methods}
    assert {"/whoami", "/signin", "/signout", "/publish", "/signoff/approve"} <= posts
    assert {f"/sample/{{sample_id}}/{a}" for a in ("adjust", "decide", "undo")} <= posts
    assert unguarded(app) == []
    acting = [r.path for r in routes if app.state.guard.person in r.calls]
    assert set(acting) == posts - {"/whoami", "/signin", "/signout"}

    later = app.state.guard.router("reviewer")  # what the next engineer's router gets free

    @later.post("/sample/{sample_id}/drag")
    def drag(sample_id: str):
        return {}

    app.include_router(later)
    assert unguarded(app) == []

    @app.post("/forgotten")  # straight on the app: the test must catch it
    def forgotten():
        return {}

    assert unguarded(app) == ["/forgotten"]


def test_sign_out_ends_the_session_even_for_a_copied_cookie(study):
    client = _client(study)
    token = _named(client)
    stolen = dict(client.cookies)
    assert client.post("/signout", data={"csrf": token}).url.path == "/whoami"
    assert client.get("/", follow_redirects=False).headers["location"].startswith("/whoami")
    replay = _client(study)
    replay.cookies.update(stolen)
    assert replay.get("/", follow_redirects=False).status_code == 303  # not signed in
    response = replay.post(
        f"/sample/{SAMPLE}/decide", data={"action": "exclude", "reason": "x", "csrf": token}
    )
    assert response.status_code == 403  # the old session's token went with it
    assert _trail(study) == []


def test_a_removed_account_has_no_session(study):
    from cohort.accounts import remove_user

    client = _client(study, accounts=True)
    token = _signed_in(client, "bo", PASSWORD + " too")
    assert "bo" in client.get("/signoff").text
    store = Store(study / "immunomon.db")
    audit = {"by": "admin", "anchors": study / "audit_anchors.jsonl"}
    remove_user(store.conn, "bo", **audit)
    add_user(store.conn, "bo", "another long password", **audit)  # the same name: not the same
    store.close()
    assert client.get("/signoff", follow_redirects=False).headers["location"].startswith("/signin")
    response = client.post(
        f"/sample/{SAMPLE}/decide",
        data={
            "action": "approve",
            "reason": "x",
            "password": "another long password",
            "csrf": token,
        },
    )
    assert response.status_code == 401 and "sign in first" in response.json()["detail"]
    assert _trail(study) == []


def test_users_remove_from_the_command_line(study, capsys):
    from flows.cli import main

    assert main(["-q", "users", "remove", "bo", "--study", str(study)]) == 0
    assert "sessions have ended" in capsys.readouterr().out
    assert main(["-q", "users", "remove", "bo", "--study", str(study)]) == 2
    assert capsys.readouterr().err.strip() == "error: no user 'bo' in this study"
    assert [e.action for e in _trail(study, accounts=True)] == [
        "user_added",
        "user_added",
        "user_removed",
    ]


def test_users_add_from_a_script_is_audited_and_signs_in(study, capsys, monkeypatch):
    import io

    from cohort.accounts import account_problem, check_password
    from cohort.store import Store
    from flows.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough password\n"))
    assert main(["-q", "users", "add", "cy", "--study", str(study)]) == 0
    assert "account cy (reviewer) added" in capsys.readouterr().out
    store = Store(study / "immunomon.db")
    try:
        assert check_password(store.conn, "cy", "a long enough password")
        assert account_problem(store.conn, study, "cy") == ""  # the trail vouches for it
    finally:
        store.close()
    assert [e.action for e in _trail(study, accounts=True)][-1] == "user_added"


def test_headers_tls_cookies_and_local_redirects_only(study):
    from flows.review_security import Site, local_path

    client = _client(study, accounts=True)
    page = client.get("/signin")
    headers = page.headers
    assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert "script-src 'nonce-" in headers["content-security-policy"]
    assert "secure" not in headers["set-cookie"].lower()  # plain http on loopback
    for target in ("//evil.example", "https://evil.example/x", "/\\evil.example", "/\tevil"):
        response = client.post(
            "/signin",
            data={"name": "ana", "password": PASSWORD, "csrf": _token(page), "next": target},
            follow_redirects=False,
        )
        assert response.headers["location"] == "/", target
        page = client.get("/signin")
    assert local_path("/sample/P01_BL_BCELL?x=1") == "/sample/P01_BL_BCELL?x=1"
    # A refused action goes back to its own page, never to the Referer it came with.
    token = _token(client.get("/signoff"))
    response = client.post(
        f"/sample/{SAMPLE}/adjust",
        data={"threshold": "t_cd19", "value": "abc", "reason": "x", "csrf": token},
        headers={"Referer": f"{BASE}/patient/P01"},
        follow_redirects=False,
    )
    assert response.status_code == 303 and response.headers["location"] == f"/sample/{SAMPLE}"

    site = Site(host="0.0.0.0", port=8443, public_url="https://review.lab.example", tls=True)
    secure = _client(study, accounts=True, site=site, base="https://review.lab.example")
    page = secure.get("/signin")
    assert "secure" in page.headers["set-cookie"].lower()
    assert page.headers["strict-transport-security"].startswith("max-age=")
    assert secure.get("/signin", headers={"Host": "127.0.0.1:8443"}).status_code == 421


def _review_args(study, **options):
    import argparse

    defaults = {
        "study": str(study),
        "host": "127.0.0.1",
        "port": 8765,
        "public_url": "",
        "tls_cert": None,
        "tls_key": None,
        "trusted_proxy": "",
    }
    return argparse.Namespace(**(defaults | options))


def test_review_options_that_would_be_unsafe_are_refused(study):
    from cohort.study import StudyError
    from flows.review_security import review_site

    _, site, accounts = review_site(_review_args(study))
    assert not accounts and site.trusted_proxy == ""
    for options, message in [
        ({"host": "0.0.0.0"}, "give --public-url"),
        ({"host": "10.0.0.5", "trusted_proxy": "10.0.0.1"}, "--trusted-proxy needs --public-url"),
        ({"host": "10.0.0.5", "tls_cert": "c.pem"}, "go together"),
    ]:
        with pytest.raises(StudyError, match=message):
            review_site(_review_args(study, **options))
    _, site, _ = review_site(
        _review_args(
            study,
            host="10.0.0.5",
            public_url="https://review.lab.example/",
            trusted_proxy="10.0.0.1",
        )
    )
    assert site.origins == {"https://review.lab.example"} and site.secure_cookies


def test_forwarded_for_is_not_believed_without_a_trusted_proxy(study):
    """A real server (uvicorn, with the options ``immunomon review`` gives it): rotating
    X-Forwarded-For from loopback neither lifts the per-address limit nor writes invented
    addresses into the failed sign-in log."""
    import threading
    import time

    import httpx
    import uvicorn

    from cohort.accounts import failed_sign_ins
    from flows.review import create_app
    from flows.review_security import SignInLimiter, Site, server_options

    site = Site(host="127.0.0.2", port=8831)  # loopback, but not "loopback mode": accounts
    options = server_options(site)
    assert options["proxy_headers"] is False
    server = uvicorn.Server(uvicorn.Config(create_app(study, True, site), **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
            time.sleep(0.05)
        with httpx.Client(base_url="http://127.0.0.2:8831", timeout=10) as client:
            token = _token(client.get("/signin"))
            codes = [
                client.post(
                    "/signin",
                    data={"name": f"guess{i}", "password": "nope", "csrf": token},
                    headers={"X-Forwarded-For": f"203.0.113.{i}"},
                ).status_code
                for i in range(SignInLimiter.per_address + 2)
            ]
    finally:
        server.should_exit = True
        thread.join(timeout=15)
    assert not thread.is_alive()
    assert codes[-2:] == [429, 429] and codes.count(429) == 2
    store = Store(study / "immunomon.db")
    addresses = {row[2] for row in failed_sign_ins(store.conn)}
    store.close()
    assert addresses and not any(a.startswith("203.0.113.") for a in addresses)


# 2. signatures mean something ---------------------------------------------------------------
def test_an_unsigned_adjust_cannot_cancel_a_signed_exclusion(study):
    client = _client(study, accounts=True)
    token = _signed_in(client)
    client.post(
        f"/sample/{SAMPLE}/decide",
        data={"action": "exclude", "reason": "haemolysed", "password": PASSWORD, "csrf": token},
    )
    assert _status(study) == "excluded"
    adjust = {"threshold": "t_cd19", "value": "0.6", "reason": "tail", "csrf": token}
    response = client.post(f"/sample/{SAMPLE}/adjust", data=adjust)
    assert response.status_code == 403
    assert "changes #3 (exclude by ana)" in response.json()["detail"]  # 1, 2: the accounts
    assert _status(study) == "excluded" and len(_trail(study)) == 1
    client.post(f"/sample/{SAMPLE}/adjust", data=adjust | {"password": PASSWORD})
    trail = _trail(study)
    assert trail[-1].action == "override"
    assert trail[-1].detail["supersedes"] == {"seq": 3, "action": "exclude", "who": "ana"}
    assert _status(study) == "excluded"  # re-gated, still out of the statistics
    assert "supersedes #3 (exclude by ana)" in client.get(f"/sample/{SAMPLE}").text


def test_undo_of_a_signed_decision_needs_a_signature_even_of_another_person(study):
    ana, bo = _client(study, accounts=True), _client(study, accounts=True)
    ana_token = _signed_in(ana)
    bo_token = _signed_in(bo, "bo", PASSWORD + " too")
    ana.post(
        f"/sample/{SAMPLE}/decide",
        data={"action": "approve", "reason": "fine", "password": PASSWORD, "csrf": ana_token},
    )
    response = bo.post(f"/sample/{SAMPLE}/undo", data={"reason": "no", "csrf": bo_token})
    assert (
        response.status_code == 403 and "changes #3 (approve by ana)" in response.json()["detail"]
    )
    response = bo.post(
        f"/sample/{SAMPLE}/undo", data={"reason": "no", "password": PASSWORD, "csrf": bo_token}
    )
    assert response.status_code == 403  # ana's password is not bo's signature
    assert _status(study) == "approved"
    bo.post(
        f"/sample/{SAMPLE}/undo",
        data={"reason": "wrong sample", "password": PASSWORD + " too", "csrf": bo_token},
    )
    undo = _trail(study)[-1]
    assert undo.action == "undo" and undo.who == "bo" and undo.detail["undoes"] == 3
    assert undo.detail["supersedes"] == {"seq": 3, "action": "approve", "who": "ana"}
    assert _status(study) == "to_review"


def test_the_exclusion_rule_in_the_trail_itself(log):
    from cohort.review import SignatureNeeded, check_signature, record_override, record_undo

    log.append("ana", "exclude", "haemolysed", "test", "P01_M1_BCELL")
    detail = {"threshold": "t_cd19", "old": 0.5, "new": 0.6, "strategy_sha256": "s1"}
    with pytest.raises(SignatureNeeded, match="changes #1 \\(exclude by ana\\)"):
        record_override(log, "P01_M1_BCELL", "bo", "tail", "test", detail, signed=False)
    record_override(log, "P01_M1_BCELL", "bo", "tail", "test", detail, signed=True)
    assert review_states(log.entries())["P01_M1_BCELL"].status == "excluded"
    record_undo(log, "P01_M1_BCELL", "bo", "back", "test", signed=True)  # the override
    with pytest.raises(SignatureNeeded):
        record_undo(log, "P01_M1_BCELL", "bo", "back", "test", signed=False)  # the exclusion
    log.append("ana", "approve", "re-checked", "test", "P01_M1_BCELL")  # a signed decision
    assert review_states(log.entries())["P01_M1_BCELL"].status == "approved"
    assert check_signature(log.entries(), "P02_BL_BCELL", "override", signed=False) == {}


def test_signature_guessing_ends_the_session(study):
    from flows.review_security import MAX_SIGNATURE_FAILURES

    client = _client(study, accounts=True)
    token = _signed_in(client)
    codes = []
    for _ in range(MAX_SIGNATURE_FAILURES + 2):
        response = client.post(
            f"/sample/{SAMPLE}/decide",
            data={"action": "approve", "reason": "ok", "password": "guess", "csrf": token},
        )
        codes.append(response.status_code)
    assert codes[: MAX_SIGNATURE_FAILURES - 1] == [403] * (MAX_SIGNATURE_FAILURES - 1)
    assert codes[MAX_SIGNATURE_FAILURES - 1] == 429  # signed out
    right = client.post(
        f"/sample/{SAMPLE}/decide",
        data={"action": "approve", "reason": "ok", "password": PASSWORD, "csrf": token},
    )
    assert right.status_code in (401, 403) and _trail(study) == []  # even the right one


def test_accounts_sign_in_rate_limit_without_lockout(study):
    """A stranger's wrong guesses slow the account (back-off, at most a minute) but never
    lock out a browser the person has signed in with; none of it enters the audit trail."""
    from cohort.accounts import failed_sign_ins

    person = _client(study, accounts=True)
    _signed_in(person)
    person.post("/signout", data={"csrf": _token(person.get("/signoff"))})
    stranger = _client(study, accounts=True)
    token = _token(stranger.get("/signin"))
    codes = []
    for _ in range(12):
        response = stranger.post(
            "/signin", data={"name": "ana", "password": "guess", "csrf": token}
        )
        codes.append(response.status_code)
    assert 429 in codes
    refused = stranger.post("/signin", data={"name": "ana", "password": PASSWORD, "csrf": token})
    assert refused.status_code == 429  # the guesser waits, even with the right password
    wait = int(re.search(r"wait (\d+) s", refused.json()["detail"])[1])
    assert wait <= 60
    _signed_in(person)  # the person's own browser is not locked out
    assert "ana" in person.get("/signoff").text
    assert not [e for e in _trail(study) if e.action == "sign_in_failed"]
    store = Store(study / "immunomon.db")
    kept = failed_sign_ins(store.conn)
    store.close()
    assert 1 <= len(kept) <= 12 and kept[0][1] == "ana"


def test_the_back_off_caps_the_wait_and_the_address_limit_blocks(study):
    from flows.review_security import SignInLimiter

    now = [0.0]
    limiter = SignInLimiter(clock=lambda: now[0])
    for _ in range(100):  # a stranger hammering one account from many addresses
        limiter.failed("ana", f"10.0.0.{_ % 19}")
        now[0] += 0.01
    assert "wait 60 s" in limiter.refusal("ana", "10.9.9.9")
    now[0] += 60.5
    assert limiter.refusal("ana", "10.9.9.9") == ""  # a minute later, not 10
    for _i in range(SignInLimiter.per_address):
        limiter.failed(None, "10.1.1.1")  # rotating names from one address
    assert "from 10.1.1.1" in limiter.refusal(None, "10.1.1.1")
    assert limiter.refusal(None, "10.1.1.2") == ""
    now[0] += limiter.window_s + 1
    assert limiter.refusal(None, "10.1.1.1") == ""
    limiter.failed(None, "10.2.2.2")
    assert set(limiter.by_address) == {"10.2.2.2"} and not limiter.by_account  # bounded


def test_failed_sign_ins_are_bounded_and_names_cut(study, monkeypatch):
    import cohort.accounts as accounts

    client = _client(study, accounts=True)
    token = _token(client.get("/signin"))
    client.post("/signin", data={"name": "x" * 1_000_000, "password": "p", "csrf": token})
    store = Store(study / "immunomon.db")
    ((at, name, address),) = accounts.failed_sign_ins(store.conn)
    assert len(name) < 100 and "1000000 characters" in name
    monkeypatch.setattr(accounts, "KEEP_FAILURES", 50)
    for i in range(120):
        accounts.record_failed_sign_in(store.conn, f"n{i}", "10.0.0.1")
    kept = accounts.failed_sign_ins(store.conn)
    store.close()
    assert len(kept) == 50 and kept[-1][1] == "n119"
    assert _trail(study) == []


def test_review_on_the_network_needs_accounts(study, capsys):
    from flows.cli import main

    store = Store(study / "immunomon.db")
    store.conn.execute("DELETE FROM users")
    store.conn.commit()
    store.close()
    assert main(["-q", "review", "--study", str(study), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "add personal accounts first" in err


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
    server.decide(["P01_BL_BCELL"], "approve", "bo", "gates look right")
    assert run_study(root, 1).processed == 0  # the override is the current result
    assert server.states()["P01_BL_BCELL"].status == "approved"  # a pass changed nothing

    def published(sample_id: str) -> set[str]:
        """The review_status results/populations.csv gives the sample's rows."""
        import pandas as pd

        table = pd.read_csv(root / "results" / "populations.csv")
        return set(table.loc[table.sample_id == sample_id, "review_status"])

    assert published("P01_BL_BCELL") == {"approved"}

    strategy = yaml.safe_load((ROOT / "gating" / "strategies" / "bcell.yaml").read_text())
    strategy["version"] += 1
    strategy["qc"]["min_population_events"] = 40
    (root / "bcell_v4.yaml").write_text(yaml.safe_dump(strategy))
    panel = yaml.safe_load((ROOT / "panels" / "bcell.yaml").read_text())
    panel["strategy"] = "bcell_v4.yaml"
    (root / "bcell_panel.yaml").write_text(yaml.safe_dump(panel))
    config["panels"]["BCELL"] = "bcell_panel.yaml"
    (root / "study.yaml").write_text(yaml.safe_dump(config))
    visits = root / "clinical" / "visits.csv"
    header, first, *rest = visits.read_text().splitlines()
    first = first.rsplit(",", 1)[0] + f",{int(first.rsplit(',', 1)[1]) + 100}"  # edited by hand
    visits.write_text("\n".join([header, first, *rest]) + "\n")

    assert run_study(root, 1).processed == 2  # both re-gated with the new strategy
    server = ReviewServer(root, accounts=False)
    state = server.states()["P01_M1_BCELL"]
    assert state.status == "to_review" and "t_cd27" in state.note and "not applied" in state.note
    approved = server.states()["P01_BL_BCELL"]  # signed for the old strategy's numbers only
    assert approved.status == "to_review" and "re-gated since" in approved.note
    assert published("P01_BL_BCELL") == {"to_review"}  # as the pass wrote it
    before, after = [e.detail["inputs"] for e in server.log.entries() if e.action == "pass"][-2:]
    changed = {name for name in after if before.get(name) != after[name]}
    assert {"study.yaml", "clinical/visits.csv"} <= changed  # the trail dates the edit
    assert "clinical/patients.csv" not in changed
    sample = server.store.current_sample("P01_M1_BCELL")
    mark = next(g for g in server.store.applied_gates(sample["sample_key"]) if g.name == "t_cd27")
    assert mark.gate.method != "manual"


def test_sessions_held_by_the_server_are_bounded(monkeypatch):
    import flows.review_security as security

    monkeypatch.setattr(security, "MAX_SESSIONS", 3)
    guard = security.ReviewGuard(
        security.Site(), False, lambda name: None, lambda name, pw: False, lambda n, a: None
    )

    class Browser:  # what start_session and who read of a request
        def __init__(self):
            self.session = {}

    browsers = [Browser() for _ in range(5)]
    for i, browser in enumerate(browsers):
        guard.start_session(browser, f"person{i}")
    assert len(guard.sessions) == 3
    assert guard.who(browsers[0]) is None and guard.who(browsers[-1]) == "person4"


# study templates from the review page ----------------------------------------------------
def _template_form(token, value="0.5", sample=TREG_SAMPLE, **extra) -> dict:
    return {
        "threshold": "t_cd45ra",
        "value": value,
        "sample_id": sample,
        "reason": "naive peak is clear on this sample",
        "csrf": token,
    } | extra


def test_a_study_template_is_signed_audited_and_stored(study):
    """The page's action calls cohort.templates: no token, a foreign host or no signature
    changes nothing; signed, the template is in the reference file and the trail."""
    from cohort.study import Study
    from cohort.templates import panel_templates

    (study / "inbox" / "notes_P01.fcs").write_text("misnamed\n")  # the inbox has such files
    client = _client(study, accounts=True)
    token = _signed_in(client)
    page = client.get("/templates/TREG")
    assert "t_cd45ra" in page.text and TREG_SAMPLE in page.text and "re-gates" in page.text
    assert 'id="sample-set-template"' in client.get(f"/sample/{TREG_SAMPLE}").text
    assert 'id="sample-set-template"' not in client.get(f"/sample/{SAMPLE}").text  # no landmark
    path = "/templates/TREG/set"
    no_token = client.post(path, data=_template_form(""), follow_redirects=False)
    assert no_token.status_code == 403 and "form token" in no_token.json()["detail"]
    rebound = {"Host": "rebind.attacker.example:8765"}
    foreign = client.post(path, data=_template_form(token, password=PASSWORD), headers=rebound)
    assert foreign.status_code == 421
    unsigned = client.post(path, data=_template_form(token, password="not it"))
    assert unsigned.status_code == 403 and "nothing was signed" in unsigned.json()["detail"]
    assert _trail(study) == [] and panel_templates(Study(study), "TREG") == {}
    done = client.post(path, data=_template_form(token, password=PASSWORD))
    assert done.status_code == 200 and done.url.path == "/templates/TREG"
    assert "audit entry #3" in done.text and "re-gates the panel" in done.text
    (entry,) = _trail(study)
    assert (entry.who, entry.action, entry.reason) == (
        "ana",
        "template",
        "naive peak is clear on this sample",
    )
    assert entry.detail["threshold"] == "t_cd45ra" and entry.detail["given_on"] == TREG_SAMPLE
    template = panel_templates(Study(study), "TREG")["t_cd45ra"]
    assert (template.value, template.set_by, template.given_on) == (0.5, "ana", TREG_SAMPLE)
    assert abs(template.offset - (0.5 - entry.detail["landmark"])) < 1e-6
    in_force = client.app.state.server.study.strategies["TREG"].offsets  # not a stale cache
    assert in_force == {"t_cd45ra": template.offset}
    listed = client.get("/templates/TREG").text  # the page shows who set it and why
    assert "0.500 on P01_BL_TREG" in listed and "naive peak is clear" in listed
    anchors = (study / "audit_anchors.jsonl").read_text()
    assert '"seq": 3,' in anchors and '"why": "template' in anchors  # the entry is anchored


def test_a_study_template_is_refused_with_a_reason_while_a_pass_runs(study):
    from cohort.study import Study

    client = _client(study)
    token = _named(client)
    path = "/templates/TREG/set"
    for form, said in [
        (_template_form(token, value="0.95"), "is outside the strategy"),
        (_template_form(token, sample=SAMPLE), "is a BCELL sample, not TREG"),
        (_template_form(token, reason=" "), "needs a reason"),
        (_template_form(token, value="abc"), "is not a number"),
    ]:
        form["back"] = "/templates/TREG"
        response = client.post(path, data=form)
        assert response.url.path == "/templates/TREG" and said in response.text, said
    unknown = client.post(path, data=_template_form(token, sample="../../etc"))
    assert unknown.status_code == 404 and "no processed sample" in unknown.json()["detail"]
    with Study(study).exclusive(wait=False):  # a pass holds the study
        response = client.post(path, data=_template_form(token, back=f"/sample/{TREG_SAMPLE}"))
        assert response.url.path == f"/sample/{TREG_SAMPLE}"
        assert 'id="error"' in response.text
    assert _trail(study) == []
    assert client.post(path, data=_template_form(token, back="//evil.example")).url.path == (
        "/templates/TREG"
    )  # a form's way back is a local path only; this one was set (nothing held the study)
    assert [e.action for e in _trail(study)] == ["template"]


def test_publish_runs_in_the_background_one_at_a_time(study, monkeypatch):
    """POST /publish returns at once to a page that polls the job; a second start while one
    runs, or a start while a pass holds the study, is refused; the result is shown."""
    import threading

    import flows.review as review
    from cohort.study import Study

    release = threading.Event()

    def slow_outputs(study_, store):
        release.wait(30)
        return "visits.csv: line 3: no such patient"

    monkeypatch.setattr(review, "update_outputs", slow_outputs)
    client = _client(study)
    token = _named(client)
    started = client.post("/publish", data={"csrf": token})
    assert started.url.path == "/publish" and 'id="publish-state">running' in started.text
    assert client.get("/publish/status.json").json()["state"] == "running"
    again = client.post("/publish", data={"csrf": token})
    assert again.url.path == "/signoff" and "already being updated" in again.text
    assert client.get("/").status_code == 200  # the pages are not blocked meanwhile
    release.set()
    for _ in range(100):
        job = client.get("/publish/status.json").json()
        if job["state"] != "running":
            break
        threading.Event().wait(0.05)
    assert job["state"] == "done" and job["who"] == "ana"
    assert job["problem"] == "visits.csv: line 3: no such patient"
    assert "clinical input problem: visits.csv" in client.get("/publish").text
    with Study(study).exclusive(wait=False):  # the job let go of the study's lock
        refused = client.post("/publish", data={"csrf": token})
    assert refused.url.path == "/signoff" and 'id="error"' in refused.text
    assert client.get("/publish/status.json").json()["state"] == "done"  # not restarted

    def broken(study_, store):
        raise OSError("disk full")

    monkeypatch.setattr(review, "update_outputs", broken)
    client.post("/publish", data={"csrf": token})
    for _ in range(100):
        job = client.get("/publish/status.json").json()
        if job["state"] != "running":
            break
        threading.Event().wait(0.05)
    assert job["state"] == "failed" and job["error"] == "OSError: disk full"
    assert [(e.action, e.who) for e in _trail(study)] == [("publish", "ana")] * 2  # not refused


def test_the_review_pages_print_flags_in_words_as_the_report_does(study):
    """A lab scientist reads what is wrong with a sample, not a code: the today list and the
    sample page name the boundary and the population the flag is about."""
    import sqlite3

    conn = sqlite3.connect(study / "immunomon.db")
    conn.execute(
        "UPDATE samples SET qc_flags=? WHERE sample_id=?",
        ("default_threshold:t_cd27;low_count:plasmablasts<50", SAMPLE),
    )
    conn.commit()
    conn.close()
    client = _client(study)
    _named(client)
    for page in ("/", f"/sample/{SAMPLE}"):
        text = html.unescape(client.get(page).text)
        assert "CD27 boundary (t_cd27) at its default" in text, page
        assert "Plasmablasts: fewer than 50 events" in text, page
        assert "default_threshold:t_cd27" not in text and "low_count:" not in text, page


@pytest.mark.parametrize("name", ["ana$x", "<b>ana</b>", "role=expert", "ana\nbo", "../ana", "a"])
def test_a_hostile_account_name_is_refused_and_nothing_is_written(tmp_path, name):
    """A name is text for people and the trail, never markup, a key=value or a path: refused
    in one line, and neither a users row nor an audit entry is left behind; a second add of
    an existing name is refused the same way (the row and its entry are both or neither)."""
    from cohort.audit import AuditLog

    store = Store(tmp_path / "immunomon.db")
    with pytest.raises(AccountError, match="a user name is 2-64 letters"):
        add_user(store.conn, name, "correct horse battery", by="admin")
    add_user(store.conn, "ana", "correct horse battery", by="admin")
    with pytest.raises(AccountError, match="exists already"):
        add_user(store.conn, "ana", "another long password", by="admin")
    assert store.conn.execute("SELECT name FROM users").fetchall() == [("ana",)]
    assert [(e.action, e.detail["name"]) for e in AuditLog(store.conn).entries()] == [
        ("user_added", "ana")
    ]
    store.close()
