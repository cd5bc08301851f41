"""Shared fixtures: throwaway SQLite and PostgreSQL databases, and an isolated AUDITOR_HOME.

PostgreSQL must be running on 127.0.0.1:5432 (user postgres, trust auth): CI starts it, and a
test that needs it fails rather than skips when it is down, so a broken service is noticed.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.orm import Session, sessionmaker

from auditor.config import ENV, ENV_HOME
from auditor.store import dispose_engines
from auditor.store.db import session_factory
from auditor.store.migrate import upgrade

PG_ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=5"


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test gets its own AUDITOR_HOME and no inherited database or broker settings."""
    home = tmp_path / "auditor-home"
    monkeypatch.setenv("AUDITOR_HOME", str(home))
    for name in ENV:  # every AUDITOR_* setting (auditor.config), so a developer's shell cannot leak in
        if name != ENV_HOME:
            monkeypatch.delenv(name, raising=False)
    yield home
    dispose_engines()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'db' / 'auditor.db'}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    name = f"auditor_test_{secrets.token_hex(6)}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        dispose_engines()
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def db_url(request: pytest.FixtureRequest) -> str:
    """Each test that takes it runs once on SQLite and once on PostgreSQL."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture
def sessions(db_url: str) -> Iterator[sessionmaker[Session]]:
    """A session factory on a migrated `db_url`."""
    upgrade(db_url)
    factory = session_factory(db_url)
    yield factory
    factory.kw["bind"].dispose()


@pytest.fixture
def redis_db(request: pytest.FixtureRequest):
    """A flushed Redis client on the test module's own database number (its REDIS_URL), so
    integration modules never see each other's queues or locks; flushed again afterwards."""
    import redis

    client = redis.Redis.from_url(request.module.REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()
