"""Sign-in, sessions, roles and CSRF for the clinic's page.

A session is a cookie signed with the key kept in the accounts database (itsdangerous, as Flask and
Starlette sign theirs), holding the user's name and a random CSRF token; it expires after
clinic.session_minutes. The role is read from the accounts database on every request, so a removed
user or a changed role counts at once. Every form carries the session's CSRF token; a POST without
it is refused. Wrong passwords are throttled per account name: after `Throttle.attempts` failures within
`Throttle.window` seconds the name is refused, even with the right password, until the window has passed.
"""
from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from clinic import accounts

COOKIE = "clinic_session"
FLASH = "clinic_flash"


@dataclass(frozen=True)
class User:
    name: str
    role: str
    csrf: str

    def may(self, needed: str) -> bool:
        return accounts.allowed(self.role, needed)


class Refusal(Exception):
    """A request the app answers with a page, not a traceback: `status` 303 (sign in), 403 or 400."""

    def __init__(self, status: int, message: str, login: bool = False):
        super().__init__(message)
        self.status, self.message, self.login = status, message, login


class Sessions:
    def __init__(self, db: Path, minutes: int):
        self.db, self.seconds = db, minutes * 60
        self.signer = URLSafeTimedSerializer(accounts.session_key(db), salt="clinic-session")
        self.login_signer = URLSafeTimedSerializer(accounts.session_key(db), salt="clinic-login")

    def start(self, name: str) -> str:
        return self.signer.dumps({"user": name, "csrf": secrets.token_urlsafe(24)})

    def user(self, cookie: str | None) -> User:
        """The signed-in user of a session cookie; Refusal (sign in) when absent, expired, forged or removed."""
        if not cookie:
            raise Refusal(303, "Please sign in.", login=True)
        try:
            data = self.signer.loads(cookie, max_age=self.seconds)
        except SignatureExpired:
            raise Refusal(303, "Your session expired; please sign in again.", login=True) from None
        except BadSignature:
            raise Refusal(303, "Please sign in.", login=True) from None
        role = accounts.role_of(self.db, data["user"])
        if role is None:
            raise Refusal(303, "This account no longer exists.", login=True)
        return User(data["user"], role, data["csrf"])

    def login_token(self) -> str:
        return self.login_signer.dumps(secrets.token_urlsafe(8))

    def check_login_token(self, token: str) -> None:
        try:
            self.login_signer.loads(token or "", max_age=3600)
        except BadSignature:
            raise Refusal(400, "The sign-in form was stale or not from this site; please try again.") from None


class Throttle:
    """Failed sign-ins per account name (in memory: a restart forgets them, as a locked-out clinician would want)."""

    attempts, window = 5, 15 * 60

    def __init__(self):
        self.failures: dict[str, list[float]] = {}
        self.lock = threading.Lock()

    def locked(self, name: str, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        with self.lock:
            recent = [t for t in self.failures.get(name.lower(), []) if now - t < self.window]
            self.failures[name.lower()] = recent
            return len(recent) >= self.attempts

    def failed(self, name: str, now: float | None = None) -> None:
        with self.lock:
            self.failures.setdefault(name.lower(), []).append(time.time() if now is None else now)

    def succeeded(self, name: str) -> None:
        with self.lock:
            self.failures.pop(name.lower(), None)


def require(user: User, needed: str, what: str) -> None:
    if not user.may(needed):
        raise Refusal(403, f"Your role ({user.role}) may not {what}: it needs a {needed} account.")


def check_csrf(user: User, token: str | None) -> None:
    if not token or not hmac.compare_digest(str(token), user.csrf):
        raise Refusal(403, "This form was not sent from the clinic's page (missing or wrong CSRF token); "
                           "reload the page and try again.")


def safe_next(target: str | None) -> str:
    """Only a path on this site (never //host or a scheme) to return to after sign-in."""
    return target if target and target.startswith("/") and not target.startswith("//") else "/"
