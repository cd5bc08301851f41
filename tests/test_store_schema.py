from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from auditor.errors import ServiceError
from auditor.store import open_store
from auditor.store.db import check_connection, make_engine
from auditor.store.migrate import alembic_config, current_revision, head_revision, upgrade
from auditor.store.models import Base


def test_migrated_schema_matches_the_models(db_url: str) -> None:
    assert upgrade(db_url) == head_revision()
    engine = make_engine(db_url)
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        assert compare_metadata(context, Base.metadata) == []
    engine.dispose()


def test_upgrade_twice_is_a_no_op(sqlite_url: str) -> None:
    assert upgrade(sqlite_url) == upgrade(sqlite_url) == head_revision()


def test_downgrade_to_base_and_back(sqlite_url: str) -> None:
    upgrade(sqlite_url)
    command.downgrade(alembic_config(sqlite_url), "base")
    engine = make_engine(sqlite_url)
    assert current_revision(engine) is None
    assert upgrade(sqlite_url) == head_revision()
    engine.dispose()


def test_embedded_sqlite_is_created_at_head_on_first_use(sqlite_url: str) -> None:
    sessions = open_store(sqlite_url)
    assert current_revision(sessions.kw["bind"]) == head_revision()


@pytest.mark.services
def test_postgres_without_schema_is_refused_with_upgrade_hint(pg_url: str) -> None:
    with pytest.raises(ServiceError, match="run `auditor db upgrade`"):
        open_store(pg_url)
    upgrade(pg_url)
    open_store(pg_url)


def test_unreachable_database_is_a_one_line_service_error() -> None:
    engine = make_engine("postgresql+psycopg://postgres:hunter2@127.0.0.1:1/auditor")
    with pytest.raises(ServiceError) as caught:
        check_connection(engine)
    message = str(caught.value)
    assert message.startswith("cannot reach database at postgresql+psycopg://postgres:***@")
    assert "hunter2" not in message and "\n" not in message
