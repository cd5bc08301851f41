"""Users and their API tokens: the rows behind sign-in (hashing and rules are `auditor.auth`'s).

Each function takes the caller's `Session` and never commits: the caller owns the unit of work.
Missing rows raise `NotFound`, lost races raise `Conflict`.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from auditor.errors import NotFound
from auditor.store._sql import add_unique, in_id_range
from auditor.store.models import ApiToken, User


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
    """A new password hash; every token of the user is deleted with it."""
    user.password_hash = password_hash
    session.execute(delete(ApiToken).where(ApiToken.user_id == user.id))


def delete_user(session: Session, user: User) -> None:
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
