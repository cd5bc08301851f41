"""Persistence: SQLAlchemy models, engines and sessions, migrations, repository functions.

Front doors (CLI, workers) start with `open_store()`, which returns a session factory for a
database that is reachable and at the current schema:

    sessions = open_store()
    with sessions() as s, s.begin():
        dataset = dataset_store.get_dataset(s, "digits")
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from auditor.config import get_settings
from auditor.store.db import check_connection, make_engine
from auditor.store.migrate import ensure_schema

_engines: dict[tuple[str, tuple[tuple[str, Any], ...]], Engine] = {}
_lock = threading.Lock()


def get_engine(url: str | None = None, **options: Any) -> Engine:
    """The process's engine for `url` (default: the configured database) and `options` (of
    `make_engine`: the pool's size and timeout, SQLite's busy timeout), created once.

    After `os.fork()` (Celery prefork) call `dispose_engines()` in the child so that it does not
    share the parent's connections.
    """
    url = url or get_settings().database_url
    cache_key = (url, tuple(sorted(options.items())))
    with _lock:
        engine = _engines.get(cache_key)
        if engine is None:
            engine = _engines[cache_key] = make_engine(url, **options)
        return engine


def open_store(url: str | None = None, **engine_options: Any) -> sessionmaker[Session]:
    """A session factory for a reachable database at the current schema (`engine_options`: see
    `get_engine`).

    Raises `ServiceError` when the database is down, or when a PostgreSQL schema is missing or
    behind; an embedded SQLite database is created and upgraded on the spot.
    """
    engine = get_engine(url, **engine_options)
    check_connection(engine)
    ensure_schema(engine)
    return sessionmaker(engine, expire_on_commit=False)


def dispose_engines() -> None:
    """Close every cached engine's connections (tests, forked workers, shutdown)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


__all__ = ["dispose_engines", "get_engine", "open_store"]
