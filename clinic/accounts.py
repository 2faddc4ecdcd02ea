"""The clinic's accounts: a local SQLite file (clinic.accounts in params.yaml, mode 600, git-ignored)
holding users, their roles and scrypt password hashes, and the key that signs sessions.

scrypt (hashlib, OpenSSL) with n=2**14, r=8, p=1 (the parameters RFC 7914 and OWASP name for
interactive logins) and a 16-byte random salt per user; argon2 is not installed in this environment.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sqlite3
from contextlib import closing
from pathlib import Path

ROLES = ("viewer", "clinician", "admin")  # each may do what the ones before it may
SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1}
MIN_PASSWORD = 10


class AccountError(ValueError):
    """A bad name, role or password; the message says which."""


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **SCRYPT)
    return f"scrypt${SCRYPT['n']}${SCRYPT['r']}${SCRYPT['p']}${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    kind, n, r, p, salt, digest = stored.split("$")
    found = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32)
    return kind == "scrypt" and hmac.compare_digest(found.hex(), digest)


def connect(path: Path) -> sqlite3.Connection:
    """The accounts database, created mode 600 (its folder 700) on first use."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    os.chmod(path, 0o600)
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, role TEXT NOT NULL, hash TEXT NOT NULL)")
    db.execute("CREATE TABLE IF NOT EXISTS secret (id INTEGER PRIMARY KEY CHECK (id = 1), key TEXT NOT NULL)")
    db.execute("INSERT OR IGNORE INTO secret (id, key) VALUES (1, ?)", (secrets.token_hex(32),))
    db.commit()
    return db


def add_user(path: Path, name: str, role: str, password: str) -> None:
    """Create a user, or set the role and password of an existing one."""
    name = name.strip()
    if not name or len(name) > 64 or not name.isprintable():
        raise AccountError(f"user name {name!r}: 1 to 64 printable characters")
    if role not in ROLES:
        raise AccountError(f"role {role!r} is not one of {', '.join(ROLES)}")
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"the password needs at least {MIN_PASSWORD} characters")
    with closing(connect(path)) as db, db:
        db.execute("INSERT INTO users (name, role, hash) VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                   "role = excluded.role, hash = excluded.hash", (name, role, hash_password(password)))


def remove_user(path: Path, name: str) -> bool:
    with closing(connect(path)) as db, db:
        return db.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount > 0


def users(path: Path) -> list[tuple[str, str]]:
    with closing(connect(path)) as db:
        return db.execute("SELECT name, role FROM users ORDER BY name").fetchall()


def role_of(path: Path, name: str) -> str | None:
    with closing(connect(path)) as db:
        row = db.execute("SELECT role FROM users WHERE name = ?", (name,)).fetchone()
    return row[0] if row else None


def authenticate(path: Path, name: str, password: str) -> str | None:
    """The user's role when the password is right, else None (the same work either way)."""
    with closing(connect(path)) as db:
        row = db.execute("SELECT role, hash FROM users WHERE name = ?", (name,)).fetchone()
    if row is None:
        check_password(password, hash_password("not a user", b"0" * 16))  # no timing hint that the name is unknown
        return None
    return row[0] if check_password(password, row[1]) else None


def session_key(path: Path) -> str:
    with closing(connect(path)) as db:
        return db.execute("SELECT key FROM secret WHERE id = 1").fetchone()[0]


def allowed(role: str | None, needed: str) -> bool:
    return role in ROLES and ROLES.index(role) >= ROLES.index(needed)
