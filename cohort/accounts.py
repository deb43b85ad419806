"""Personal accounts for review from another machine: a salted scrypt hash per person in the
store, never a shared password, never the password itself; each account's roles; and the
account's binding to the audit trail.

An account is made only by ``add_user``, which writes the row and its ``user_added`` audit
entry in one transaction; the entry carries a fingerprint of the row (name, salt, hash,
creation time, roles) and is anchored beside the study. ``account_problem`` accepts an account
only while the trail verifies and its latest ``user_added`` entry holds the row's fingerprint
with no ``user_removed`` after it: a row inserted by hand, or a password or role changed by
editing the row, is refused, and the message says to add the account again."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import re
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from cohort.audit import AuditEntry, AuditLog, verify_study_trail, write_anchor
from panels.errors import ImmunomonError

USERS_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY, salt BLOB NOT NULL, hash BLOB NOT NULL, created_at TEXT NOT NULL,
    roles TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS sign_in_failures (
    id INTEGER PRIMARY KEY, at TEXT NOT NULL, name TEXT NOT NULL, address TEXT NOT NULL
);
"""
# Failed sign-ins are kept apart from the audit trail (anyone can cause one) and bounded:
# the newest KEEP_FAILURES, each name cut to its first NAME_SHOWN characters.
KEEP_FAILURES = 1000
NAME_SHOWN = 64
# scrypt cost: ~50 ms and 16 MB per check on this machine's kind, as OWASP suggests.
SCRYPT = {"n": 2**14, "r": 8, "p": 1, "maxmem": 64 * 2**20, "dklen": 32}
NAME = re.compile(r"^[A-Za-z0-9._-]{2,64}$")
MIN_PASSWORD = 10

# Roles, as a GCP lab separates them: who reviews samples, who also sets the study's templates
# and publishes, who only reads (a monitor). Every account reads the pages and the trail.
ROLES = ("reviewer", "expert", "monitor")
DEFAULT_ROLES = ("reviewer",)
# The rights each role gives: a route (or a command) needs one of them.
GRANTS = {"reviewer": {"reviewer"}, "expert": {"reviewer", "expert"}, "monitor": set()}
ADDED, REMOVED = "user_added", "user_removed"


class AccountError(ImmunomonError):
    """A name, password or role that cannot be used; the message says why."""


def _schema(conn: sqlite3.Connection) -> None:
    conn.executescript(USERS_SCHEMA)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(users)")}
    if "roles" not in columns:  # a store from before roles: its accounts have none (unbound)
        with conn:
            conn.execute("ALTER TABLE users ADD COLUMN roles TEXT NOT NULL DEFAULT ''")


def _digest(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, **SCRYPT)


def checked_roles(roles: Iterable[str]) -> tuple[str, ...]:
    """The roles given, sorted and without repeats; AccountError for an unknown one."""
    chosen = tuple(sorted(set(roles)))
    unknown = [r for r in chosen if r not in ROLES]
    if unknown or not chosen:
        raise AccountError(
            f"role {', '.join(map(repr, unknown)) or '(none)'}: a role is one of "
            f"{', '.join(ROLES)} (--role, several allowed)"
        )
    return chosen


def rights(roles: Iterable[str]) -> set[str]:
    """What an account with ``roles`` may do beyond reading (``GRANTS``)."""
    return set().union(*(GRANTS.get(r, set()) for r in roles))


def role_refusal(name: str, held: Iterable[str], role: str) -> str:
    """Why ``name``, holding ``held``, may not do what needs ``role`` ('' when they may)."""
    held = tuple(held)
    if role in rights(held):
        return ""
    return (
        f"{name} is {' and '.join(held) or 'without a role'}: this needs the {role} role (the "
        f"study's administrator grants it: immunomon users remove {name}, then users add "
        f"{name} --role {role})"
    )


def row_fingerprint(name: str, salt: bytes, digest: bytes, created_at: str, roles: str) -> str:
    """sha256 of an account row as ``add_user`` wrote it: what its audit entry binds."""
    payload = json.dumps([name, bytes(salt).hex(), bytes(digest).hex(), created_at, roles])
    return hashlib.sha256(payload.encode()).hexdigest()


def _audited_change(
    conn: sqlite3.Connection,
    change: Callable[[], None],
    action: str,
    summary: str,
    detail: dict,
    by: str,
    software: str,
    anchors: str | Path | None,
) -> AuditEntry:
    """``change()`` to the users table and its ``action`` audit entry in one immediate
    transaction (both or neither), then the entry anchored in ``anchors`` once committed."""
    log = AuditLog(conn)  # before the transaction: its schema script would commit it
    conn.execute("BEGIN IMMEDIATE")
    try:
        change()
        entry = log.append(by, action, summary, software, detail=detail)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    if anchors is not None:
        write_anchor(anchors, entry.seq, entry.hash, f"{action} {detail['name']} by {by}")
    return entry


def add_user(
    conn: sqlite3.Connection,
    name: str,
    password: str,
    roles: Iterable[str] = DEFAULT_ROLES,
    *,
    by: str,
    software: str = "",
    anchors: str | Path | None = None,
) -> AuditEntry:
    """Store a person's account (name, salt, scrypt hash, roles) and, in the same
    transaction, its ``user_added`` audit entry by ``by`` (who ran the command) with the
    row's fingerprint and the roles granted; anchored in ``anchors`` (the study's anchor
    file) once committed. Returns the entry."""
    _schema(conn)
    if not NAME.match(name):
        raise AccountError(
            f"{name!r}: a user name is 2-64 letters, digits, '.', '_' or '-' (e.g. jdupont)"
        )
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"a password needs at least {MIN_PASSWORD} characters")
    granted = ",".join(checked_roles(roles))
    salt = os.urandom(16)
    digest = _digest(password, salt)
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    detail = {
        "name": name,
        "roles": granted.split(","),
        "fingerprint": row_fingerprint(name, salt, digest, now, granted),
    }

    def insert() -> None:
        if conn.execute("SELECT 1 FROM users WHERE name=?", (name,)).fetchone():
            raise AccountError(f"user {name!r} exists already")
        conn.execute("INSERT INTO users VALUES (?,?,?,?,?)", (name, salt, digest, now, granted))

    summary = f"account {name} added ({granted})"
    return _audited_change(conn, insert, ADDED, summary, detail, by, software, anchors)


def remove_user(
    conn: sqlite3.Connection,
    name: str,
    *,
    by: str,
    software: str = "",
    anchors: str | Path | None = None,
) -> AuditEntry:
    """Delete a person's account and record it (``user_removed``, anchored); their review
    sessions end at their next request."""
    _schema(conn)

    def delete() -> None:
        if not conn.execute("DELETE FROM users WHERE name=?", (name,)).rowcount:
            raise AccountError(f"no user {name!r} in this study")

    summary = f"account {name} removed"
    return _audited_change(conn, delete, REMOVED, summary, {"name": name}, by, software, anchors)


def check_password(conn: sqlite3.Connection, name: str, password: str) -> bool:
    """Whether ``password`` is ``name``'s (constant-time; False for an unknown name)."""
    _schema(conn)
    row = conn.execute("SELECT salt, hash FROM users WHERE name=?", (name,)).fetchone()
    if row is None:
        _digest(password, b"0" * 16)  # same cost, so a timing does not tell names apart
        return False
    return hmac.compare_digest(_digest(password, row[0]), row[1])


def user_names(conn: sqlite3.Connection) -> list[str]:
    _schema(conn)
    return [r[0] for r in conn.execute("SELECT name FROM users ORDER BY name")]


def user_roles(conn: sqlite3.Connection, name: str) -> tuple[str, ...]:
    """The roles the store gives ``name`` (() for no such account); trust them only once
    ``account_problem`` is '' (the fingerprint covers them)."""
    _schema(conn)
    row = conn.execute("SELECT roles FROM users WHERE name=?", (name,)).fetchone()
    return tuple(r for r in (row[0] if row else "").split(",") if r)


def account_fingerprint(conn: sqlite3.Connection, name: str) -> str | None:
    """The fingerprint of ``name``'s row as it is now (None when there is no such account):
    a session made for it ends when the row changes (removed, added again, edited)."""
    _schema(conn)
    row = conn.execute(
        "SELECT name, salt, hash, created_at, roles FROM users WHERE name=?", (name,)
    ).fetchone()
    return None if row is None else row_fingerprint(*row)


@dataclass(frozen=True)
class Binding:
    """An account's latest entry in the trail: added (with its fingerprint) or removed."""

    seq: int
    action: str
    fingerprint: str


def trail_bindings(entries: list[AuditEntry]) -> dict[str, Binding]:
    """Name -> its latest ``user_added`` or ``user_removed`` entry naming it. Entries written
    before accounts were bound (no name in their detail) bind nothing."""
    out = {}
    for e in entries:
        name = e.detail.get("name") if e.action in (ADDED, REMOVED) else None
        if isinstance(name, str):
            out[name] = Binding(e.seq, e.action, str(e.detail.get("fingerprint", "")))
    return out


def vouched_accounts(conn: sqlite3.Connection, study_root: str | Path) -> tuple[str, dict]:
    """What the audit trail vouches for: its first problem ('' when it verifies against the
    study's anchors; then no account is vouched for) and name -> ``Binding``."""
    problems = verify_study_trail(conn, study_root).problems
    if problems:
        return problems[0], {}
    return "", trail_bindings(AuditLog(conn).entries())


def account_problem(
    conn: sqlite3.Connection,
    study_root: str | Path,
    name: str,
    vouched: tuple[str, dict] | None = None,
) -> str:
    """Why ``name``'s account may not sign in or sign ('' when it may): the trail does not
    verify, or its row is not the one its latest ``user_added`` entry fingerprinted (inserted
    or edited by hand, added before accounts were bound, or removed since). ``vouched``:
    ``vouched_accounts`` already computed (the review server keeps it between requests)."""
    fingerprint = account_fingerprint(conn, name)
    if fingerprint is None:
        return f"no account {name!r} in this study"
    problem, bindings = vouched if vouched is not None else vouched_accounts(conn, study_root)
    if problem:
        return (
            f"the audit trail does not verify ({problem}): no account is vouched for until "
            "`immunomon audit verify` passes"
        )
    return binding_problem(name, fingerprint, bindings, study_root)


def binding_problem(
    name: str, fingerprint: str, bindings: dict[str, Binding], study_root: str | Path
) -> str:
    """Why the row of ``name`` (its ``fingerprint``) is not bound by the verified trail's
    ``bindings`` ('' when it is), saying what to do."""
    again = (
        f"add it again: immunomon users remove {name} --study {study_root}, then immunomon "
        f"users add {name} --study {study_root} --role ROLE"
    )
    bound = bindings.get(name)
    if bound is None:
        return (
            f"account {name} has no user_added entry in the audit trail (inserted into the "
            f"store by hand, or added before accounts were bound to the trail): {again}"
        )
    if bound.action == REMOVED:
        return (
            f"account {name} was removed (audit entry #{bound.seq}) and is back in the store "
            f"without `users add`: {again}"
        )
    if not hmac.compare_digest(bound.fingerprint, fingerprint):
        return (
            f"account {name} is not the one added in audit entry #{bound.seq} (its password, "
            f"roles or date were changed outside immunomon): {again}"
        )
    return ""


def record_failed_sign_in(conn: sqlite3.Connection, name: str, address: str) -> None:
    """Keep one failed sign-in in the bounded log (not the audit trail)."""
    _schema(conn)
    shown = name[:NAME_SHOWN] + (f"... ({len(name)} characters)" if len(name) > NAME_SHOWN else "")
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    with conn:
        conn.execute(
            "INSERT INTO sign_in_failures (at, name, address) VALUES (?,?,?)",
            (now, shown, address[:64]),
        )
        conn.execute(
            "DELETE FROM sign_in_failures WHERE id <= (SELECT MAX(id) FROM sign_in_failures) - ?",
            (KEEP_FAILURES,),
        )


def failed_sign_ins(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
    """(at, name, address) of the kept failed sign-ins, oldest first."""
    _schema(conn)
    return conn.execute("SELECT at, name, address FROM sign_in_failures ORDER BY id").fetchall()
