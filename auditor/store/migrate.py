"""Run the Alembic migrations from code, and make sure a database is at the current schema.

The Alembic environment lives at the repository root (`alembic.ini`, `migrations/`), as the
architecture requires, and is found relative to this package: `<repo>/auditor/store/migrate.py`
-> `<repo>/alembic.ini`. That works for the editable install the README uses
(`pip install -e .`). A non-editable install has no migrations next to it; set AUDITOR_ALEMBIC_INI
to the path of a checkout's alembic.ini in that case.

Embedded SQLite databases are upgraded automatically on first use, so a first-time user never
runs `auditor db upgrade`; a PostgreSQL database must be upgraded explicitly (it is shared, and
a schema change there is an operator's decision).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from auditor.config import ENV_ALEMBIC_INI, get_settings
from auditor.errors import ServiceError
from auditor.store.db import check_connection, make_engine, redact

REPO_ROOT = Path(__file__).resolve().parents[2]


def alembic_ini_path() -> Path:
    """Where alembic.ini is: AUDITOR_ALEMBIC_INI, else the repository root."""
    path = get_settings().alembic_ini or REPO_ROOT / "alembic.ini"
    if not path.is_file():
        raise ServiceError(
            f"cannot find the database migrations ({path} is missing): install auditor with "
            f"`pip install -e .` from a checkout, or set {ENV_ALEMBIC_INI} to its alembic.ini"
        )
    return path


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config for auditor's migrations, targeting `url` when given."""
    ini = alembic_ini_path()
    config = Config(str(ini))
    config.set_main_option("script_location", str(ini.parent / "migrations"))
    config.attributes["configure_logger"] = False
    if url is not None:
        config.attributes["url"] = url
    return config


@lru_cache(maxsize=4)
def _head_revision(ini: Path) -> str:
    config = alembic_config()
    head = ScriptDirectory.from_config(config).get_current_head()
    if head is None:
        raise ServiceError(f"no migrations found next to {ini}")
    return head


def head_revision() -> str:
    """The newest migration's revision id (cached: the scripts don't change while we run)."""
    return _head_revision(alembic_ini_path())


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None for an empty database."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(url: str, revision: str = "head") -> str:
    """Upgrade the database at `url` to `revision`; return the revision it is at afterwards."""
    engine = make_engine(url)
    try:
        check_connection(engine)
        command.upgrade(alembic_config(url), revision)
        return current_revision(engine) or ""
    finally:
        engine.dispose()


def ensure_schema(engine: Engine | str) -> None:
    """Make sure the schema is current: upgrade embedded SQLite, refuse a stale PostgreSQL.

    Costs one small query when the database is already at head. `open_store()` calls this; call
    it yourself only when building engines by hand.
    """
    if isinstance(engine, str):
        owned = make_engine(engine)
        try:
            check_connection(owned)
            return ensure_schema(owned)
        finally:
            owned.dispose()
    head = head_revision()
    current = current_revision(engine)
    if current == head:
        return
    url = engine.url.render_as_string(hide_password=False)
    if engine.dialect.name == "sqlite":
        try:
            command.upgrade(alembic_config(url), "head")
        except Exception:
            # Another process may have created the schema at the same moment; that is fine.
            if current_revision(engine) != head:
                raise
        return
    where = redact(url)
    if current is None:
        raise ServiceError(
            f"database at {where} has no auditor schema: run `auditor db upgrade` first"
        )
    raise ServiceError(
        f"database at {where} is at schema revision {current}, this auditor needs {head}: "
        "run `auditor db upgrade`"
    )
