"""Sessions that end and sign-ins that are limited: web_sessions, login_failures, and user ids
that SQLite never reuses (users AUTOINCREMENT)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-10 09:00:00

On SQLite a table without AUTOINCREMENT gives a new row the largest id plus one, so removing
the newest user and adding another handed the removed user's id to the newcomer. AUTOINCREMENT
can only be declared when a table is created, so `users` is rebuilt, the one copy of a table in
these migrations, and done so that nothing else moves: with foreign keys off (the only way to
drop a parent table without SQLite running ON DELETE CASCADE on api_tokens and ON DELETE SET
NULL on review_events.user_id), in its own transaction, checked with `PRAGMA foreign_key_check`
before it commits. PostgreSQL's sequences never reuse a value, so there only the tables are added.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
USER_COLUMNS = "id, name, role, password_hash, created_at"


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _sqlite_users_autoincrement()
    op.create_table(
        "web_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_web_sessions_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_web_sessions")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_web_sessions_key_hash")),
    )
    op.create_index(op.f("ix_web_sessions_user_id"), "web_sessions", ["user_id"])
    op.create_index(op.f("ix_web_sessions_expires_at"), "web_sessions", ["expires_at"])
    op.create_table(
        "login_failures",
        sa.Column("id", BigId, nullable=False),
        sa.Column("user_name", sa.String(200), nullable=False),
        sa.Column("address", sa.String(64), nullable=False),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_login_failures")),
    )
    op.create_index(op.f("ix_login_failures_failed_at"), "login_failures", ["failed_at"])
    op.create_index("ix_login_failures_user_name", "login_failures", ["user_name", "failed_at"])
    op.create_index("ix_login_failures_address", "login_failures", ["address", "failed_at"])


def _sqlite_users_autoincrement() -> None:
    """Rebuild `users` as AUTOINCREMENT, keeping every id, without touching any child row."""
    conn = op.get_bind()
    ddl = conn.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'users'"
    ).scalar()
    if ddl is not None and "AUTOINCREMENT" in ddl.upper():
        return  # rebuilt already (a run that stopped after this step's commit)
    # PRAGMA foreign_keys is a no-op inside a transaction: end the migration's transaction (the
    # schema is complete at 0006 here), switch them off, rebuild in a transaction of its own,
    # and give the migration a transaction again for the rest and for its version stamp.
    conn.exec_driver_sql("COMMIT")
    conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
    try:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            conn.exec_driver_sql(
                "CREATE TABLE users_new ("
                "id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, "
                "name VARCHAR(200) NOT NULL, "
                "role VARCHAR(16) NOT NULL, "
                "password_hash TEXT NOT NULL, "
                "created_at DATETIME NOT NULL, "
                "CONSTRAINT uq_users_name UNIQUE (name), "
                "CONSTRAINT ck_users_role CHECK (role IN ('viewer', 'reviewer', 'admin')))"
            )
            conn.exec_driver_sql(
                f"INSERT INTO users_new ({USER_COLUMNS}) SELECT {USER_COLUMNS} FROM users"
            )
            conn.exec_driver_sql("DROP TABLE users")
            conn.exec_driver_sql("ALTER TABLE users_new RENAME TO users")
            broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise RuntimeError(f"rebuilding users would break foreign keys: {broken[:3]}")
            conn.exec_driver_sql("COMMIT")
        except BaseException:
            conn.exec_driver_sql("ROLLBACK")
            raise
    finally:
        conn.exec_driver_sql("PRAGMA foreign_keys=ON")
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def downgrade() -> None:
    # users keeps AUTOINCREMENT: it changes no column, and rebuilding again gains nothing
    op.drop_index("ix_login_failures_address", "login_failures")
    op.drop_index("ix_login_failures_user_name", "login_failures")
    op.drop_index(op.f("ix_login_failures_failed_at"), "login_failures")
    op.drop_table("login_failures")
    op.drop_index(op.f("ix_web_sessions_expires_at"), "web_sessions")
    op.drop_index(op.f("ix_web_sessions_user_id"), "web_sessions")
    op.drop_table("web_sessions")
