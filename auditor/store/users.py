"""Users, their API tokens, browser sessions and failed sign-ins: the rows behind sign-in
(hashing and rules are `auditor.auth`'s).

Each function takes the caller's `Session` and never commits: the caller owns the unit of work.
Missing rows raise `NotFound`, lost races raise `Conflict`.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, delete, func, select
from sqlalchemy.orm import Session

from auditor.errors import NotFound
from auditor.store._sql import add_unique, in_id_range
from auditor.store.models import ApiToken, LoginFailure, User, WebSession


def create_user(session: Session, name: str, role: str, password_hash: str) -> User:
    """A new user row; `Conflict` when the name is taken (also by a concurrent insert)."""
    user = User(name=name, role=role, password_hash=password_hash)
    return add_unique(session, user, f"user {name!r} already exists")


def find_user(session: Session, name: str) -> User | None:
    return session.scalar(select(User).where(User.name == name))


def find_user_by_id(session: Session, user_id: int) -> User | None:
    return session.get(User, user_id) if in_id_range(user_id) else None


def get_user(session: Session, name: str) -> User:
    user = find_user(session, name)
    if user is None:
        raise NotFound(f"no user named {name!r}")
    return user


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.name)))


def has_users(session: Session) -> bool:
    return bool(session.scalar(select(func.count()).select_from(User)))


def replace_password_hash(session: Session, user: User, password_hash: str) -> None:
    """A new password hash; every token and browser session of the user is deleted with it."""
    user.password_hash = password_hash
    delete_credentials(session, user)


def replace_role(session: Session, user: User, role: str) -> None:
    """A new role; every token and browser session of the user is deleted with it."""
    user.role = role
    delete_credentials(session, user)


def delete_credentials(session: Session, user: User) -> None:
    """End every API token and browser session of `user`."""
    session.execute(delete(ApiToken).where(ApiToken.user_id == user.id))
    session.execute(delete(WebSession).where(WebSession.user_id == user.id))


def delete_user(session: Session, user: User) -> None:
    """The user row and their tokens and sessions (deleted here, not only by the foreign keys'
    cascade, which SQLite runs only with `PRAGMA foreign_keys=ON`)."""
    delete_credentials(session, user)
    session.delete(user)


def add_token(
    session: Session, user: User, token_hash: str, created_at: datetime, expires_at: datetime
) -> ApiToken:
    row = ApiToken(
        user_id=user.id, token_hash=token_hash, created_at=created_at, expires_at=expires_at
    )
    session.add(row)
    session.flush()
    return row


def find_token(session: Session, token_hash: str) -> ApiToken | None:
    return session.scalar(select(ApiToken).where(ApiToken.token_hash == token_hash))


def add_web_session(
    session: Session, user_id: int, key_hash: str, created_at: datetime, expires_at: datetime
) -> None:
    """A signed-in browser; sessions that expired (anyone's) are deleted on the way."""
    session.execute(delete(WebSession).where(WebSession.expires_at <= created_at))
    session.add(
        WebSession(user_id=user_id, key_hash=key_hash, created_at=created_at, expires_at=expires_at)
    )
    session.flush()


def find_session_user(session: Session, key_hash: str, now: datetime) -> User | None:
    """The user of an unexpired browser session, in one query."""
    return session.scalar(
        select(User)
        .join(WebSession, WebSession.user_id == User.id)
        .where(WebSession.key_hash == key_hash, WebSession.expires_at > now)
    )


def delete_web_session(session: Session, key_hash: str) -> None:
    session.execute(delete(WebSession).where(WebSession.key_hash == key_hash))


def count_web_sessions(session: Session, user: User) -> int:
    return int(
        session.scalar(select(func.count()).select_from(WebSession).where(WebSession.user_id == user.id))
        or 0
    )


def failures_since(
    session: Session, user_name: str, address: str, since: datetime, limit: int
) -> tuple[list[datetime], list[datetime]]:
    """When the newest `limit` failed sign-ins after `since` happened, newest first: (those that
    tried `user_name`, those that came from `address`)."""

    def newest(match: ColumnElement[bool]) -> list[datetime]:
        query = select(LoginFailure.failed_at).where(match, LoginFailure.failed_at > since)
        return list(session.scalars(query.order_by(LoginFailure.failed_at.desc()).limit(limit)))

    return newest(LoginFailure.user_name == user_name), newest(LoginFailure.address == address)


def add_login_failure(
    session: Session, user_name: str, address: str, failed_at: datetime, forget_before: datetime
) -> None:
    """Record a failed sign-in; failures from before `forget_before` no longer count and are
    deleted, so the table holds one window's worth."""
    session.execute(delete(LoginFailure).where(LoginFailure.failed_at < forget_before))
    session.add(LoginFailure(user_name=user_name, address=address, failed_at=failed_at))
    session.flush()
