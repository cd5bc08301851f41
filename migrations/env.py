"""Alembic environment for auditor's schema (SQLite and PostgreSQL).

The URL comes from, in order: a connection or `url` that the caller put in
`config.attributes` (auditor.store.migrate does this), `alembic -x url=...`, `sqlalchemy.url`
in alembic.ini, and finally auditor's settings (AUDITOR_DATABASE_URL or the embedded SQLite
file under AUDITOR_HOME). Batch mode is on so that ALTERs also work on SQLite.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from auditor.config import get_settings
from auditor.store.db import make_engine
from auditor.store.models import Base

config = context.config
target_metadata = Base.metadata

# Only the alembic command line configures logging; a programmatic upgrade must not reset the
# calling application's loggers.
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def database_url() -> str:
    """The URL to migrate, by the precedence described in the module docstring."""
    url = config.attributes.get("url") or context.get_x_argument(as_dictionary=True).get("url")
    return url or config.get_main_option("sqlalchemy.url") or get_settings().database_url


def configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
    )


def run_migrations_offline() -> None:
    """Emit SQL to stdout instead of running it (`alembic upgrade head --sql`)."""
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(database_url())
    try:
        with engine.connect() as connection:
            configure(connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
