"""Users, passwords and API tokens: who may read, who may decide.

Pure functions over a `Session`, shared by `auditor user ...`, the CLI's review commands and
the web app. Passwords are hashed with PBKDF2-SHA256 from the standard library (salted, many
iterations, compared in constant time), so no native dependency is needed. API tokens are random
and only their SHA-256 is stored: a leaked database does not leak usable tokens.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.orm import Session

from auditor.datasets import check_name
from auditor.errors import AuditorError
from auditor.store import users as user_store
from auditor.store.models import ROLES, User, utcnow

PBKDF2_ITERATIONS = 200_000
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024  # hashing a megabyte "password" per request is a cheap denial of service
TOKEN_TTL = timedelta(days=30)
DECIDING_ROLES = ("reviewer", "admin")


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
    check_password(password)
    user = get_user(session, name)
    # every token of the user stops working: a new password means "lock the old ones out"
    user_store.replace_password_hash(session, user, hash_password(password))


def remove_user(session: Session, name: str) -> None:
    user_store.delete_user(session, get_user(session, name))


def authenticate(session: Session, name: str, password: str) -> User | None:
    """The user when the name and password match, else None (the caller says which never)."""
    if not name or len(password) > MAX_PASSWORD_LENGTH:
        return None
    user = user_store.find_user(session, name)
    if user is None:
        # Hash anyway, so the response time does not tell which user names exist.
        verify_password(password, _dummy_hash())
        return None
    return user if verify_password(password, user.password_hash) else None


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


def user_for_session(session: Session, user_id: int) -> User | None:
    """The user a signed session cookie names, if that user still exists."""
    return user_store.find_user_by_id(session, user_id)


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
