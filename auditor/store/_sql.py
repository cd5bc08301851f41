"""Shared SQL helpers of the store modules: bulk inserts, id ranges, unique inserts.

Each function takes the caller's `Session` and never commits: the caller owns the unit of work.
Missing rows raise `NotFound`, lost races raise `Conflict`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from sqlalchemy import Table, insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from auditor.errors import Conflict

# Rows per executemany call: bounds the memory of the converted parameters. PostgreSQL (psycopg)
# streams through COPY and is not chunked.
EXECUTEMANY_CHUNK_ROWS = 20_000


T = TypeVar("T")
IN_CHUNK = 500  # keys per IN (...) list


def add_unique(session: Session, row: T, conflict: str) -> T:
    """Insert `row` in a savepoint; when a unique constraint says it is there already (another
    process won the race), `Conflict(conflict)` and the caller's transaction goes on."""
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        raise Conflict(conflict) from None
    return row


def bulk_insert(session: Session, table: Table, rows: list[tuple[Any, ...]]) -> None:
    """Plain bulk insert of tuples in column order: COPY on psycopg, executemany elsewhere."""
    columns = [column.name for column in table.columns]
    if uses_psycopg(session):
        cursor_conn = session.connection().connection.driver_connection
        with cursor_conn.cursor() as cursor:  # type: ignore[union-attr]
            sql = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN"
            with cursor.copy(sql) as copy:
                for row in rows:
                    copy.write_row(row)
        analyze_after_bulk(session, table.name, len(rows))
        return
    if session.get_bind().dialect.name == "sqlite":
        placeholders = ", ".join("?" for _ in columns)
        sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({placeholders})"
        session.connection().exec_driver_sql(sql, rows)
        return
    statement = insert(table)
    for start in range(0, len(rows), EXECUTEMANY_CHUNK_ROWS):
        chunk = rows[start : start + EXECUTEMANY_CHUNK_ROWS]
        session.execute(statement, [dict(zip(columns, row, strict=True)) for row in chunk])


def uses_psycopg(session: Session) -> bool:
    dialect = session.get_bind().dialect
    return dialect.name == "postgresql" and dialect.driver == "psycopg"


ID_MAX = 2**31 - 1  # ids are 32-bit integers on PostgreSQL; beyond that nothing can match


def in_id_range(row_id: int) -> bool:
    """Whether an id can exist at all: a larger one would fail in the database ("integer out of
    range") instead of being simply not found."""
    return 0 < int(row_id) <= ID_MAX


# After this many rows arrive at once, PostgreSQL's statistics are refreshed in the same
# transaction: before autovacuum gets to it, the planner would take a million fresh findings for
# a few thousand and pick a nested loop (the review queue's "undecided" count took minutes at 1M
# findings instead of well under a second; bench/review_app.py).
ANALYZE_AFTER_ROWS = 10_000


def analyze_after_bulk(session: Session, table: str, rows: int) -> None:
    if rows >= ANALYZE_AFTER_ROWS:
        session.connection().exec_driver_sql(f"ANALYZE {table}")


def in_chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    """`items` in slices short enough for one IN (...) list."""
    for start in range(0, len(items), IN_CHUNK):
        yield items[start : start + IN_CHUNK]
