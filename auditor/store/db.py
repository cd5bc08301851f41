"""Engines and sessions for SQLite (embedded) and PostgreSQL (service)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, create_engine, event, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from auditor.errors import ServiceError

# Long enough for a worker's progress write to wait out a CLI's short write transaction.
SQLITE_BUSY_TIMEOUT_MS = 30_000
PG_CONNECT_TIMEOUT_S = 5
# The execution option that says whether a transaction will write (default: it may). SQLite
# begins a reading one DEFERRED, which in WAL mode never waits for the writer.
WRITES = "auditor_writes"
# SQLSTATEs of a PostgreSQL transaction that lost a race for a lock: lock_timeout ran out,
# a deadlock was broken, or a serializable transaction could not be ordered.
_LOCK_RACES = {"55P03", "40P01", "40001"}


def _json_default(value: Any) -> Any:
    """Let analyses put numpy scalars and arrays into JSON payloads."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps_json(value: Any) -> str:
    """JSON text for a payload or params column (compact; numpy values allowed)."""
    return json.dumps(value, default=_json_default, separators=(",", ":"))


def redact(url: str) -> str:
    """The URL with any password hidden, fit for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL, or None for in-memory databases."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _install_sqlite_hooks(engine: Engine, busy_timeout_ms: int) -> None:
    """Pragmas on every connection, and transactions that SQLAlchemy (not pysqlite) starts.

    pysqlite's own transaction handling breaks SAVEPOINT (needed to turn a unique-constraint race
    into a `Conflict` without losing the outer transaction), so it is switched off and BEGIN is
    emitted explicitly, as the SQLAlchemy docs recommend. SQLite allows one writer at a time
    anyway, so serialising units of work costs little and keeps them from failing midway.
    A transaction begun with the execution option `WRITES` false (`begin_unit(writes=False)`,
    the web app's GET requests) is a reader: plain BEGIN, which in WAL mode reads a snapshot and
    never waits, and never holds the write lock.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        # WAL lets readers (the CLI) proceed while a worker writes progress or findings.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # IMMEDIATE takes the write lock up front: concurrent units of work then queue on
        # busy_timeout instead of failing with SQLITE_BUSY when a read turns into a write
        # (a DEFERRED reader whose snapshot is stale cannot become a writer at all).
        writes = conn.get_execution_options().get(WRITES, True)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")


def make_engine(
    url: str, *, sqlite_busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS, **kwargs: Any
) -> Engine:
    """An engine for `url`, with SQLite made safe for a few concurrent processes.

    For SQLite the parent directory is created, so the embedded default needs no setup.
    `kwargs` go to `create_engine` (pool_size, max_overflow, pool_timeout: `auditor serve`
    sizes its pool to its request slots, `auditor.web.deps`).
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ServiceError(f"invalid database URL {url!r}: {exc}") from None
    backend = parsed.get_backend_name()
    kwargs.setdefault("json_serializer", dumps_json)
    if backend == "sqlite":
        path = _sqlite_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, **kwargs)
        _install_sqlite_hooks(engine, sqlite_busy_timeout_ms)
        return engine
    if backend == "postgresql":
        connect_args = {"connect_timeout": PG_CONNECT_TIMEOUT_S, **kwargs.pop("connect_args", {})}
        kwargs.setdefault("pool_pre_ping", True)
        return create_engine(url, connect_args=connect_args, **kwargs)
    return create_engine(url, **kwargs)


def begin_unit(session: Session, *, writes: bool, lock_timeout_ms: int | None = None) -> None:
    """Start the session's transaction now, as a reader or a writer.

    A reader on SQLite begins DEFERRED (never waits in WAL mode, never takes the write lock);
    a writer begins IMMEDIATE, as every other unit of work does. On PostgreSQL a writer's row
    lock waits are bounded by `lock_timeout_ms` (`SET LOCAL`, this transaction only), so that a
    reviewer who collides with another is refused (`lock_race`) instead of queueing behind them.
    """
    conn = session.connection(execution_options={WRITES: writes})
    if writes and lock_timeout_ms is not None and conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}")


def lock_race(exc: BaseException) -> bool:
    """Whether a database error says the transaction lost a race for a lock (a lock wait ran
    past lock_timeout, a deadlock was broken): the other side goes on, this one may try again.
    Takes SQLAlchemy's wrapped errors and the driver's own (raised by raw-cursor paths such as
    COPY)."""
    orig = getattr(exc, "orig", None) or exc
    return getattr(orig, "sqlstate", None) in _LOCK_RACES


def try_transaction_lock(session: Session, key: str | tuple[int, str]) -> bool:
    """Take the lock called `key` until this transaction ends if it is free, without waiting;
    False when another transaction holds it.

    PostgreSQL: an advisory transaction lock (a name, or an id with a name, hashed; a collision
    only makes two unrelated units of work pass each other over). SQLite: True, since its
    writers hold the database's one write lock anyway.
    """
    if session.connection().dialect.name != "postgresql":
        return True
    args = (func.hashtext(key),) if isinstance(key, str) else (key[0], func.hashtext(key[1]))
    return bool(session.scalar(select(func.pg_try_advisory_xact_lock(*args))))


def session_factory(url_or_engine: str | Engine) -> sessionmaker[Session]:
    """A session factory; `expire_on_commit=False` so rows stay readable after the unit of work."""
    engine = make_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
    return sessionmaker(engine, expire_on_commit=False)


def check_connection(engine: Engine) -> None:
    """Raise `ServiceError` with a one-line reason when the database cannot be reached."""
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        url = engine.url.render_as_string(hide_password=True)
        raise ServiceError(f"cannot reach database at {url}: {reason}") from None
