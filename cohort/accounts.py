"""Personal accounts for review from another machine: a salted scrypt hash per person in the
store, never a shared password, never the password itself."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import re
import sqlite3

from panels.errors import ImmunomonError

USERS_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY, salt BLOB NOT NULL, hash BLOB NOT NULL, created_at TEXT NOT NULL
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


class AccountError(ImmunomonError):
    """A name or password that cannot be used; the message says why."""


def _digest(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, **SCRYPT)


def add_user(conn: sqlite3.Connection, name: str, password: str) -> None:
    """Store a person's account (name, salt, scrypt hash)."""
    conn.executescript(USERS_SCHEMA)
    if not NAME.match(name):
        raise AccountError(
            f"{name!r}: a user name is 2-64 letters, digits, '.', '_' or '-' (e.g. jdupont)"
        )
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"a password needs at least {MIN_PASSWORD} characters")
    salt = os.urandom(16)
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    with conn:
        exists = conn.execute("SELECT 1 FROM users WHERE name=?", (name,)).fetchone()
        if exists:
            raise AccountError(f"user {name!r} exists already")
        conn.execute(
            "INSERT INTO users VALUES (?,?,?,?)", (name, salt, _digest(password, salt), now)
        )


def check_password(conn: sqlite3.Connection, name: str, password: str) -> bool:
    """Whether ``password`` is ``name``'s (constant-time; False for an unknown name)."""
    conn.executescript(USERS_SCHEMA)
    row = conn.execute("SELECT salt, hash FROM users WHERE name=?", (name,)).fetchone()
    if row is None:
        _digest(password, b"0" * 16)  # same cost, so a timing does not tell names apart
        return False
    return hmac.compare_digest(_digest(password, row[0]), row[1])


def user_names(conn: sqlite3.Connection) -> list[str]:
    conn.executescript(USERS_SCHEMA)
    return [r[0] for r in conn.execute("SELECT name FROM users ORDER BY name")]


def account_fingerprint(conn: sqlite3.Connection, name: str) -> str | None:
    """A token of the account as it is now (None when there is no such account): a session
    made for it ends when the account is removed, or removed and added again."""
    conn.executescript(USERS_SCHEMA)
    row = conn.execute("SELECT salt, created_at FROM users WHERE name=?", (name,)).fetchone()
    if row is None:
        return None
    return hashlib.sha256(bytes(row[0]) + row[1].encode()).hexdigest()[:32]


def remove_user(conn: sqlite3.Connection, name: str) -> None:
    """Delete a person's account; their review sessions end at their next request."""
    conn.executescript(USERS_SCHEMA)
    with conn:
        gone = conn.execute("DELETE FROM users WHERE name=?", (name,)).rowcount
    if not gone:
        raise AccountError(f"no user {name!r} in this study")


def record_failed_sign_in(conn: sqlite3.Connection, name: str, address: str) -> None:
    """Keep one failed sign-in in the bounded log (not the audit trail)."""
    conn.executescript(USERS_SCHEMA)
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
    conn.executescript(USERS_SCHEMA)
    return conn.execute("SELECT at, name, address FROM sign_in_failures ORDER BY id").fetchall()
