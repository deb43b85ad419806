"""The review's last bypasses, closed: an account made or edited by hand in the store (not
by `users add`, so not vouched for by the audit trail), roles (who reviews, who sets the
study's templates and publishes, who only reads), and four eyes on study templates. Each test
failed before its fix."""

from __future__ import annotations

import html
import io
import os
import shutil

import pytest

from cohort.accounts import _digest, add_user, remove_user
from cohort.audit import anchors_path, entry_hash
from cohort.store import Store
from tests.test_review_security import (
    PASSWORD,
    SAMPLE,
    TREG_SAMPLE,
    _client,
    _named,
    _signed_in,
    _template_form,
    _token,
    _trail,
)

BO = PASSWORD + " too"  # bo's password (a reviewer); ana is an expert


@pytest.fixture()
def study(reviewable, tmp_path):
    root = tmp_path / "study"
    shutil.copytree(reviewable, root)
    return root


def _sign_in_page(client, name: str, password: str) -> str:
    """The page a sign-in ends on (its message unescaped)."""
    token = _token(client.get("/signin"))
    response = client.post("/signin", data={"name": name, "password": password, "csrf": token})
    return html.unescape(response.text)


def _signed_in_as(client) -> bool:
    return client.get("/signoff", follow_redirects=False).status_code == 200


def _sql(study, statement: str, *values) -> None:
    store = Store(study / "immunomon.db")
    with store.conn:
        store.conn.execute(statement, values)
    store.close()


def _insert_by_hand(study, name: str, password: str, roles: str = "expert") -> None:
    """What someone who can write the store does: a users row, no `users add`."""
    salt = os.urandom(16)
    _sql(
        study,
        "INSERT INTO users VALUES (?,?,?,?,?)",
        name,
        salt,
        _digest(password, salt),
        "2026-12-01T00:00:00+00:00",
        roles,
    )


def _verify(study, capsys) -> tuple[int, str]:
    from flows.cli import main

    code = main(["-q", "audit", "verify", "--study", str(study)])
    return code, capsys.readouterr().err


# 1. accounts made or edited by hand ---------------------------------------------------------
def test_an_account_inserted_by_hand_cannot_sign_in_and_verify_names_it(study, capsys):
    _insert_by_hand(study, "eve", "eve's long password")
    client = _client(study, accounts=True)
    page = _sign_in_page(client, "eve", "eve's long password")
    assert (
        "account eve has no user_added entry in the audit trail (inserted into the store by "
        "hand" in page
    )
    assert f"immunomon users add eve --study {study} --role ROLE" in page
    assert not _signed_in_as(client) and _trail(study) == []
    code, err = _verify(study, capsys)
    assert code == 1 and "account eve has no user_added entry" in err
    assert "until then it cannot sign in or sign" in err
    assert "ana" not in err  # the accounts made by `users add` are vouched for
    # a wrong password says nothing about the row
    assert "name or password wrong" in _sign_in_page(_client(study, True), "eve", "x" * 12)


def test_a_password_or_role_changed_by_editing_the_row_is_refused(study):
    client = _client(study, accounts=True)
    _signed_in(client, "bo", BO)
    assert _signed_in_as(client)
    salt = os.urandom(16)
    _sql(
        study,
        "UPDATE users SET salt=?, hash=? WHERE name='bo'",
        salt,
        _digest("mallory's password", salt),
    )
    assert not _signed_in_as(client)  # bo's session ended with the row it was made for
    page = _sign_in_page(client, "bo", "mallory's password")
    assert "account bo is not the one added in audit entry #2 (its password, roles or" in page
    assert "name or password wrong" in _sign_in_page(client, "bo", BO)
    assert not _signed_in_as(client)

    ana = _client(study, accounts=True)
    _signed_in(ana)
    _sql(study, "UPDATE users SET roles='expert,monitor' WHERE name='ana'")  # a role by hand
    assert not _signed_in_as(ana)
    assert "account ana is not the one added" in _sign_in_page(ana, "ana", PASSWORD)


def test_a_removed_account_put_back_by_hand_is_refused(study):
    store = Store(study / "immunomon.db")
    row = store.conn.execute("SELECT * FROM users WHERE name='bo'").fetchone()
    remove_user(store.conn, "bo", by="admin", anchors=anchors_path(study))
    store.close()
    _sql(study, "INSERT INTO users VALUES (?,?,?,?,?)", *row)  # the very same row, back
    page = _sign_in_page(_client(study, accounts=True), "bo", BO)
    assert "account bo was removed (audit entry #3) and is back in the store without" in page


def test_a_forged_user_added_entry_does_not_vouch_for_an_account(study):
    """The row and a `user_added` entry with its right fingerprint, the chain recomputed: the
    entry has no anchor, so the trail does not verify and no account is vouched for."""
    from cohort.accounts import account_fingerprint

    _insert_by_hand(study, "eve", "eve's long password")
    store = Store(study / "immunomon.db")
    conn = store.conn
    fingerprint = account_fingerprint(conn, "eve")
    seq, prev = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    detail = f'{{"fingerprint": "{fingerprint}", "name": "eve", "roles": ["expert"]}}'
    fields = ["2026-12-01T00:00:00+00:00", "admin", "user_added", "", detail, "added", "x"]
    with conn:
        conn.execute(
            "INSERT INTO audit VALUES (?,?,?,?,?,?,?,?,?,?)",
            (seq + 1, *fields, prev, entry_hash(prev, seq + 1, *fields)),
        )
    store.close()
    page = _sign_in_page(_client(study, accounts=True), "eve", "eve's long password")
    assert "the audit trail does not verify (entry 3 (user_added eve by admin" in page
    assert "has no anchor" in page and "no account is vouched for" in page
    ana = _client(study, accounts=True)
    assert "no account is vouched for" in _sign_in_page(ana, "ana", PASSWORD)
    assert not _signed_in_as(ana)


def test_an_account_from_before_binding_is_refused_until_added_again(study, capsys, monkeypatch):
    """A store from earlier versions: no roles column, `user_added` entries without the
    account's fingerprint. Its accounts are refused with what to do; its trail still
    verifies; removed and added again, the account signs in."""
    from flows.cli import main

    old = study.parent / "old"
    old.mkdir()
    shutil.copytree(study / "inbox", old / "inbox")
    shutil.copy(study / "study.yaml", old / "study.yaml")
    store = Store(old / "immunomon.db")
    conn = store.conn
    salt = os.urandom(16)
    with conn:
        conn.execute(
            "CREATE TABLE users (name TEXT PRIMARY KEY, salt BLOB NOT NULL, hash BLOB NOT "
            "NULL, created_at TEXT NOT NULL)"
        )
        conn.execute(
            "INSERT INTO users VALUES (?,?,?,?)",
            ("ana", salt, _digest(PASSWORD, salt), "2026-01-01T00:00:00+00:00"),
        )
    from cohort.audit import AuditLog

    log = AuditLog(conn, anchors=anchors_path(old))
    log.append("ana", "approve", "fine", "old", "P01_BL_BCELL")  # anchored
    log.append("admin", "user_added", "account ana added", "old")  # as earlier versions did
    store.close()
    assert "added before accounts were bound" in _sign_in_page(
        _client(old, accounts=True), "ana", PASSWORD
    )
    code, err = _verify(old, capsys)
    assert code == 1 and "audit trail broken" not in err  # the trail itself is whole
    assert main(["-q", "review", "--study", str(old), "--host", "0.0.0.0"]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .startswith(
            "error: --host 0.0.0.0: no account can sign in: account ana has no user_added entry"
        )
    )
    assert f"immunomon users remove ana --study {old}" in err

    assert main(["-q", "users", "remove", "ana", "--study", str(old)]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert main(["-q", "users", "add", "ana", "--study", str(old), "--role", "expert"]) == 0
    capsys.readouterr()
    client = _client(old, accounts=True)
    _signed_in(client)
    assert _signed_in_as(client)
    assert _verify(old, capsys)[0] == 0


def test_a_template_from_the_command_line_needs_a_vouched_expert(study, capsys, monkeypatch):
    from flows.cli import main

    command = ["-q", "reference", "set", "--study", str(study), "--panel", "TREG"]
    command += ["--threshold", "t_cd45ra", "--value", "0.5", "--sample", TREG_SAMPLE]
    command += ["--reason", "expert"]
    monkeypatch.setattr("sys.stdin", io.StringIO(BO + "\n"))
    assert main([*command, "--who", "bo"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: bo is reviewer: this needs the expert role (the study's administrator grants "
        "it: immunomon users remove bo, then users add bo --role expert); nothing was changed"
    )
    _insert_by_hand(study, "eve", "eve's long password", "expert")
    monkeypatch.setattr("sys.stdin", io.StringIO("eve's long password\n"))
    assert main([*command, "--who", "eve"]) == 2
    assert "account eve has no user_added entry" in capsys.readouterr().err
    assert _trail(study) == []


# 2. roles -------------------------------------------------------------------------------------
EXPECTED_ROLES = {
    "/sample/{sample_id}/adjust": "reviewer",
    "/sample/{sample_id}/redraw": "reviewer",
    "/sample/{sample_id}/decide": "reviewer",
    "/sample/{sample_id}/undo": "reviewer",
    "/signoff/approve": "reviewer",
    "/templates/{panel}/set": "expert",
    "/templates/{panel}/from-wsp": "expert",
    "/publish": "expert",
}
SESSION_ROUTES = {"/whoami", "/signin", "/signout"}  # before or without a session


def _roleless(app) -> list[str]:
    """State-changing routes that require no role (other than signing in and out)."""
    from flows.review_security import routes_and_checks

    return [
        r.path
        for r in routes_and_checks(app)
        if r.methods - {"GET", "HEAD"} and not r.role and r.path not in SESSION_ROUTES
    ]


def test_every_state_changing_route_requires_its_role(study):
    from flows.review import create_app
    from flows.review_security import routes_and_checks

    app = create_app(study, accounts=True)
    guard = app.state.guard
    posts = {r.path: r for r in routes_and_checks(app) if "POST" in r.methods}
    assert {path: r.role for path, r in posts.items() if r.role} == EXPECTED_ROLES
    assert set(posts) == set(EXPECTED_ROLES) | SESSION_ROUTES
    for path, role in EXPECTED_ROLES.items():  # the role's check runs after the session's
        assert guard.requires[role] in posts[path].calls and guard.person in posts[path].calls
    assert _roleless(app) == []
    reading = [r for r in routes_and_checks(app) if r.methods <= {"GET", "HEAD"}]
    assert reading and all(not r.role for r in reading)  # every account reads

    careless = guard.router()  # a new action put on the reading router: caught
    careless.post("/sample/{sample_id}/rename")(lambda sample_id: {})
    app.include_router(careless)
    assert _roleless(app) == ["/sample/{sample_id}/rename"]
    with pytest.raises(ValueError, match="no route role 'admin'"):
        guard.router("admin")


def test_a_monitor_reads_everything_and_changes_nothing(study):
    store = Store(study / "immunomon.db")
    audit = {"by": "admin", "anchors": anchors_path(study)}
    add_user(store.conn, "mo", "a monitor's password", ("monitor",), **audit)
    store.close()
    client = _client(study, accounts=True)
    token = _signed_in(client, "mo", "a monitor's password")
    assert (
        'signed in as <b id="who">mo</b> <span id="roles">(monitor)</span>' in client.get("/").text
    )
    for page in ("/", f"/sample/{SAMPLE}", "/signoff", "/templates/TREG", "/audit.csv"):
        assert client.get(page, follow_redirects=False).status_code == 200, page
    page = client.get(f"/sample/{SAMPLE}").text  # no buttons it may not press
    assert 'id="read-only"' in page and 'id="approve"' not in page and 'id="undo"' not in page
    assert 'id="publish"' not in client.get("/signoff").text
    signed = {"reason": "x", "password": "a monitor's password", "csrf": token}
    for path, data in [
        (f"/sample/{SAMPLE}/adjust", {"threshold": "t_cd19", "value": "0.6"}),
        (f"/sample/{SAMPLE}/decide", {"action": "approve"}),
        (f"/sample/{SAMPLE}/undo", {}),
        ("/signoff/approve", {"visit": "BL", "panel": "BCELL"}),
        ("/templates/TREG/set", _template_form(token)),
        ("/publish", {}),
    ]:
        response = client.post(path, data=signed | data, follow_redirects=False)
        route = path.replace(SAMPLE, "{sample_id}").replace("TREG", "{panel}")
        assert response.status_code == 403, path
        assert response.json()["detail"].startswith(
            f"mo is monitor: this needs the {EXPECTED_ROLES[route]} role"
        ), path
    assert _trail(study) == []


def test_a_reviewer_reviews_but_sets_no_template_and_does_not_publish(study):
    from cohort.study import Study
    from cohort.templates import panel_templates

    client = _client(study, accounts=True)
    token = _signed_in(client, "bo", BO)
    assert 'id="set-template"' not in client.get("/templates/TREG").text
    page = client.get(f"/sample/{TREG_SAMPLE}").text
    assert 'id="sample-set-template"' not in page and 'id="approve"' in page
    assert 'id="publish"' not in client.get("/signoff").text
    response = client.post("/templates/TREG/set", data=_template_form(token, password=BO))
    assert response.status_code == 403 and "needs the expert role" in response.json()["detail"]
    assert client.post("/publish", data={"csrf": token}).status_code == 403
    assert panel_templates(Study(study), "TREG") == {} and _trail(study) == []
    approve = {"action": "approve", "reason": "fine", "password": BO, "csrf": token}
    assert client.post(f"/sample/{SAMPLE}/decide", data=approve).status_code == 200
    assert [(e.action, e.who) for e in _trail(study)] == [("approve", "bo")]


def test_loopback_review_keeps_no_roles(study):
    """No accounts on loopback: the name is typed, every action open, as documented."""
    client = _client(study)
    token = _named(client, "mo")
    response = client.post("/templates/TREG/set", data=_template_form(token))
    assert response.status_code == 200 and [e.who for e in _trail(study)] == ["mo"]


def test_users_add_records_the_roles_and_defaults_to_reviewer(study, capsys, monkeypatch):
    from cohort.accounts import row_fingerprint
    from flows.cli import main

    base = ["-q", "users", "add", "--study", str(study)]
    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough password\n"))
    assert main([*base, "cy", "--role", "monitor", "--role", "expert"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough password\n"))
    assert main([*base, "dee"]) == 0
    assert "account dee (reviewer) added" in capsys.readouterr().out
    assert main([*base, "eve", "--role", "admin"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: role 'admin': a role is one of reviewer, expert, monitor (--role, several allowed)"
    )
    cy, dee = _trail(study, accounts=True)[-2:]
    assert (cy.action, cy.detail["name"], cy.detail["roles"]) == (
        "user_added",
        "cy",
        ["expert", "monitor"],
    )
    assert dee.detail["roles"] == ["reviewer"]
    store = Store(study / "immunomon.db")
    row = store.conn.execute("SELECT * FROM users WHERE name='cy'").fetchone()
    store.close()
    assert row[4] == "expert,monitor" and cy.detail["fingerprint"] == row_fingerprint(*row)
    anchors = anchors_path(study).read_text()
    assert f'"seq": {cy.seq},' in anchors and f'"seq": {dee.seq},' in anchors
    with pytest.raises(SystemExit):
        main(["users", "add", "--help"])
    add_help = " ".join(capsys.readouterr().out.split())
    assert "default: reviewer" in add_help and "monitor: read only" in add_help


# 3. four eyes on study templates --------------------------------------------------------------
def test_whoever_set_a_template_does_not_approve_the_samples_it_gates(study):
    ana, bo = _client(study, accounts=True), _client(study, accounts=True)
    token = _signed_in(ana)
    assert 'id="set-template"' in ana.get("/templates/TREG").text  # an expert's page
    assert 'id="publish"' in ana.get("/signoff").text
    ana.post("/templates/TREG/set", data=_template_form(token, password=PASSWORD))
    assert [e.action for e in _trail(study)] == ["template"]
    approve = {"action": "approve", "reason": "fine", "password": PASSWORD, "csrf": token}
    response = ana.post(f"/sample/{TREG_SAMPLE}/decide", data=approve)
    assert (
        f"{TREG_SAMPLE}: t_cd45ra's study template set by you; another person approves a "
        "change (four eyes)" in html.unescape(response.text)
    )
    bulk = {"visit": "BL", "panel": "TREG", "reason": "all fine", "password": PASSWORD}
    response = ana.post("/signoff/approve", data=bulk | {"csrf": token})
    assert (
        "0 sample(s) of BL TREG approved; left for another person (your own changes, four "
        f"eyes): {TREG_SAMPLE}" in response.text
    )
    assert ana.post(f"/sample/{SAMPLE}/decide", data=approve).status_code == 200  # B cells
    assert [(e.action, e.sample_id) for e in _trail(study)] == [
        ("template", ""),
        ("approve", SAMPLE),
    ]
    bo_token = _signed_in(bo, "bo", BO)
    response = bo.post("/signoff/approve", data=bulk | {"csrf": bo_token, "password": BO})
    assert "1 sample(s) of BL TREG approved" in response.text
    assert _trail(study)[-1].who == "bo"


def test_the_template_setter_is_the_trails_even_if_the_file_names_another():
    """The reference file's set_by is not part of any result's identity: edited to another
    name, the trail still says who set the template in force."""
    from cohort.audit import AuditEntry
    from cohort.review import own_templates

    detail = {"panel": "TREG", "threshold": "t"}
    entry = AuditEntry(5, "", "ana", "template", "", detail, "", "", "", "")
    assert own_templates([entry], "TREG", {"t": "bo"}, "ana") == ["t"]
    assert own_templates([entry], "TREG", {"t": "bo"}, "bo") == ["t"]
    assert own_templates([entry], "BCELL", {"t": "cy"}, "ana") == []
    assert own_templates([entry], "TREG", {}, "ana") == []  # no template in force
