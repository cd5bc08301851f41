"""Users, passwords, API tokens and browser sessions: who may read, who may decide.

Functions over a `Session`, shared by `auditor user ...`, the CLI's review commands and the web
app; `sign_in` alone takes the session factory, because it must hash the password between two
short transactions (on SQLite a transaction holds the one write lock, and 200,000 PBKDF2 rounds
under it made every other request wait). Passwords are hashed with PBKDF2-SHA256 from the
standard library (salted, many iterations, compared in constant time), so no native dependency
is needed. API tokens and session keys are random and only their SHA-256 is stored: a leaked
database does not leak usable credentials. Both end at once when the user's password or role
changes or the user is removed; signing out ends the one session.

Sign-ins are limited: after `LoginLimits.max_failures` failures within `window` for one user
name, or from one client address, every attempt (the right password included) is refused with
`SignInLocked` until the oldest of them is older than the window. Failures are rows of the
database, so all app servers of one deployment count them together.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

from auditor.datasets import check_name
from auditor.errors import AuditorError
from auditor.store import users as user_store
from auditor.store.models import ROLES, User, utcnow

if TYPE_CHECKING:
    from auditor.config import Settings

PBKDF2_ITERATIONS = 200_000
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024  # hashing a megabyte "password" per request is a cheap denial of service
TOKEN_TTL = timedelta(days=30)
SESSION_TTL = timedelta(hours=12)
DECIDING_ROLES = ("reviewer", "admin")
MAX_NAME_LENGTH = 200  # of a user name tried at sign-in (the column's width)
MAX_ADDRESS_LENGTH = 64


@dataclass(frozen=True)
class Principal:
    """The signed-in user as the app and the CLI need it (detached from any session)."""

    id: int
    name: str
    role: str

    @property
    def can_decide(self) -> bool:
        return self.role in DECIDING_ROLES

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def principal(user: User) -> Principal:
    return Principal(user.id, user.name, user.role)


def hash_password(password: str, iterations: int = PBKDF2_ITERATIONS) -> str:
    """`pbkdf2_sha256$<iterations>$<salt>$<hash>`, the salt and hash in URL-safe base64."""
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    b64 = lambda b: base64.urlsafe_b64encode(b).decode().rstrip("=")  # noqa: E731
    return f"pbkdf2_sha256${iterations}${b64(salt)}${b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """True when `password` hashes to `stored`; False for anything malformed."""
    try:
        scheme, iterations, salt, digest = stored.split("$")
        if scheme != "pbkdf2_sha256":
            return False
        unb64 = lambda s: base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))  # noqa: E731
        got = hashlib.pbkdf2_hmac("sha256", password.encode(), unb64(salt), int(iterations))
        return hmac.compare_digest(got, unb64(digest))
    except (ValueError, TypeError):
        return False


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AuditorError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise AuditorError(f"the password must have at most {MAX_PASSWORD_LENGTH} characters")


def check_role(role: str) -> str:
    if role not in ROLES:
        raise AuditorError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    return role


def add_user(session: Session, name: str, role: str, password: str) -> User:
    """A new user; `Conflict` when the name is taken."""
    check_name(name, "user")
    check_role(role)
    check_password(password)
    return user_store.create_user(session, name, role, hash_password(password))


get_user = user_store.get_user
list_users = user_store.list_users
has_users = user_store.has_users


def set_password(session: Session, name: str, password: str) -> None:
    """A new password; every token and browser session of the user ends with it (a new
    password means "lock the old ones out")."""
    check_password(password)
    user = get_user(session, name)
    user_store.replace_password_hash(session, user, hash_password(password))


def set_role(session: Session, name: str, role: str) -> None:
    """A new role; every token and browser session of the user ends with it, so whoever holds
    one signs in again under the new role."""
    check_role(role)
    user_store.replace_role(session, get_user(session, name), role)


def remove_user(session: Session, name: str) -> None:
    """Remove a user with their tokens and sessions; decisions keep their name."""
    user_store.delete_user(session, get_user(session, name))


@dataclass(frozen=True)
class LoginLimits:
    """How many failed sign-ins, per user name and per client address, within how long."""

    max_failures: int = 10
    window: timedelta = timedelta(minutes=15)

    @classmethod
    def from_settings(cls, settings: Settings) -> LoginLimits:
        return cls(settings.login_max_failures, timedelta(seconds=settings.login_window))


class SignInLocked(Exception):
    """Too many failed sign-ins for this user name or from this address; `retry_after` is
    whole seconds until an attempt is considered again."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed sign-ins: try again in {retry_after} s")
        self.retry_after = retry_after


def _check_not_locked(
    session: Session, name: str, address: str, limits: LoginLimits, now: datetime
) -> None:
    """`SignInLocked` while either count of recent failures is at the limit. The lock lasts
    until the limit-th newest failure leaves the window; attempts refused here are not counted,
    so it cannot be extended forever by hammering."""
    by_name, by_address = user_store.failures_since(
        session, name, address, now - limits.window, limits.max_failures
    )
    full = [times for times in (by_name, by_address) if len(times) >= limits.max_failures]
    ends = [times[-1] + limits.window for times in full]
    if ends:
        raise SignInLocked(max(1, math.ceil((max(ends) - now).total_seconds())))


def sign_in(
    sessions: sessionmaker[Session],
    name: str,
    password: str,
    address: str,
    limits: LoginLimits,
    issue: Callable[[Session, User], str],
) -> tuple[Principal, str] | None:
    """Check a sign-in and, when it is right, `issue` a credential for the user (a session key
    or an API token) in the same short transaction: (the user, the credential), or None for a
    wrong name or password, which is counted against the name and the address.

    Three steps so that no transaction is open while the password is hashed: read the lock
    state and the stored hash, hash with no transaction, then record the failure or issue the
    credential (checking the lock again, since concurrent failures may have reached the limit,
    and that the user and their password are still the ones just checked).
    """
    name, address = name[:MAX_NAME_LENGTH], address[:MAX_ADDRESS_LENGTH]
    with sessions() as s, s.begin():
        _check_not_locked(s, name, address, limits, utcnow())
        found = user_store.find_user(s, name) if name else None
        user_id, stored = (found.id, found.password_hash) if found is not None else (None, None)
    # an unknown name is hashed too, so the response time does not tell which names exist
    matches = verify_password(password, stored or _dummy_hash())
    right = matches and user_id is not None and len(password) <= MAX_PASSWORD_LENGTH
    with sessions() as s, s.begin():
        now = utcnow()
        if not right or user_id is None:
            user_store.add_login_failure(s, name, address, now, now - limits.window)
            return None
        _check_not_locked(s, name, address, limits, now)
        user = user_store.find_user_by_id(s, user_id)
        if user is None or user.password_hash != stored:
            return None  # removed, or given a new password, while we hashed
        return principal(user), issue(s, user)


@functools.cache
def _dummy_hash() -> str:
    """A hash to check unknown users against, made once when first needed (not at import:
    every `auditor` command that imports this module would pay for 200,000 PBKDF2 rounds)."""
    return hash_password("not a password")


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(session: Session, user: User, ttl: timedelta = TOKEN_TTL) -> str:
    """A new random bearer token for `user`; only its hash is stored."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    user_store.add_token(session, user, _token_hash(token), now, now + ttl)
    return token


def user_for_token(session: Session, token: str) -> User | None:
    """The user a bearer token belongs to, if it is known and not expired."""
    if not token or len(token) > 200:
        return None
    row = user_store.find_token(session, _token_hash(token))
    if row is None or row.expires_at <= utcnow():
        return None
    return row.user


def open_web_session(session: Session, user: User, ttl: timedelta = SESSION_TTL) -> str:
    """A new random browser session key for `user`; only its hash is stored."""
    key = secrets.token_urlsafe(32)
    now = utcnow()
    user_store.add_web_session(session, user.id, _token_hash(key), now, now + ttl)
    return key


def user_for_session(session: Session, key: str) -> User | None:
    """The user of a browser session key, if the session was not ended and has not expired."""
    if not key or len(key) > 200:
        return None
    return user_store.find_session_user(session, _token_hash(key), utcnow())


def end_web_session(session: Session, key: str) -> None:
    """Sign out: the session key stops working, wherever a copy of the cookie is."""
    if key and len(key) <= 200:
        user_store.delete_web_session(session, _token_hash(key))


def cli_reviewer(session: Session, name: str) -> tuple[str, int | None]:
    """Who a CLI decision is recorded under: with no users registered (a single-user install),
    any name; once users exist, `name` must be one of them and allowed to decide."""
    if not has_users(session):
        return name, None
    user = user_store.find_user(session, name)
    if user is None:
        raise AuditorError(
            f"reviewer {name!r} is not a registered user; pass --reviewer NAME of a user "
            "(auditor user list) or set AUDITOR_REVIEWER"
        )
    if user.role not in DECIDING_ROLES:
        raise AuditorError(f"user {name!r} is a {user.role} and cannot decide")
    return user.name, user.id
