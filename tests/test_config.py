from __future__ import annotations

import ast
from pathlib import Path

import pytest

from auditor.config import artifacts_dir, get_settings


def test_embedded_defaults_live_under_auditor_home(isolated_home: Path) -> None:
    settings = get_settings()
    assert settings.home == isolated_home.resolve()
    assert settings.database_url == f"sqlite:///{isolated_home.resolve() / 'auditor.db'}"
    assert settings.broker_url is None and settings.embedded
    assert settings.result_backend is None


def test_settings_follow_environment_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDITOR_DATABASE_URL", "postgresql+psycopg://u@db/auditor")
    monkeypatch.setenv("AUDITOR_BROKER_URL", "redis://127.0.0.1:6379/0")
    settings = get_settings()
    assert settings.database_url == "postgresql+psycopg://u@db/auditor"
    assert settings.broker_url == "redis://127.0.0.1:6379/0" and not settings.embedded
    monkeypatch.setenv("AUDITOR_BROKER_URL", "")
    assert get_settings().embedded


def test_artifacts_dir_is_created_under_home(isolated_home: Path) -> None:
    path = artifacts_dir(get_settings())
    assert path.is_dir() and path.parent == isolated_home.resolve()


ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_is_read_from_the_environment_by_config_alone() -> None:
    """One Settings object: no other module reads an AUDITOR_* variable itself."""
    import re

    readers = re.compile(r"(os\.environ(\.get)?|os\.getenv)\s*[\[(]\s*[\"']AUDITOR_")
    offenders = [
        str(path.relative_to(ROOT))
        for top in ("auditor", "workers", "migrations")
        for path in (ROOT / top).rglob("*.py")
        if path.name != "config.py" and readers.search(path.read_text())
    ]
    assert offenders == []


def test_readme_documents_every_setting() -> None:
    from auditor.config import ENV

    readme = (ROOT / "README.md").read_text()
    assert [name for name in ENV if f"| `{name}` |" not in readme] == []


def test_settings_parse_each_variable_or_name_it_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from auditor.errors import ServiceError

    for name, value, field, expected in (
        ("AUDITOR_VISIBILITY_TIMEOUT", "30", "visibility_timeout", 30),
        ("AUDITOR_BEAT_INTERVAL", "0.5", "beat_interval", 0.5),
        ("AUDITOR_WORKER_GPUS", "0", "worker_gpus", 0),
        ("AUDITOR_REVIEWER", "ada", "reviewer", "ada"),
        ("AUDITOR_ALEMBIC_INI", "/etc/alembic.ini", "alembic_ini", Path("/etc/alembic.ini")),
    ):
        monkeypatch.setenv(name, value)
        assert getattr(get_settings(), field) == expected
        monkeypatch.delenv(name)
    for name, bad in (
        ("AUDITOR_VISIBILITY_TIMEOUT", "soon"),
        ("AUDITOR_BEAT_INTERVAL", "-1"),
        ("AUDITOR_WORKER_GPUS", "two"),
    ):
        monkeypatch.setenv(name, bad)
        with pytest.raises(ServiceError, match=name):
            get_settings()
        monkeypatch.delenv(name)


def test_no_broker_is_one_message_naming_what_to_do_instead() -> None:
    from auditor.errors import ServiceError

    with pytest.raises(ServiceError, match=r"no broker configured: set AUDITOR_BROKER_URL .*`auditor audit run`"):
        get_settings().require_broker()
    with pytest.raises(ServiceError, match="without one, run `auditor schedule tick` from cron"):
        get_settings().require_broker(instead="run `auditor schedule tick` from cron")


# Entry points: they read the settings once and pass them (or one value) down. `auditor.store`
# keeps the default database URL and alembic.ini for the front doors that open it.
SETTINGS_READERS = {
    "auditor/config.py",
    "auditor/web/app.py",  # the app factory, which keeps them in app.state
    "auditor/store/__init__.py",
    "auditor/store/migrate.py",
}


def _calls_get_settings(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(), str(path))
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and (getattr(node.func, "id", None) or getattr(node.func, "attr", None)) == "get_settings"
    ]


def test_only_entry_points_read_the_settings() -> None:
    """The CLI, the review app's factory and workers/ read the settings; no library module
    (services, analyses, data loaders, models) does, so none depends on the environment at
    call time."""
    readers = {
        str(p.relative_to(ROOT)): lines
        for p in sorted((ROOT / "auditor").rglob("*.py"))
        if (lines := _calls_get_settings(p))
    }
    below = {
        path: lines
        for path, lines in readers.items()
        if not path.startswith("auditor/cli/") and path not in SETTINGS_READERS
    }
    assert below == {}
    assert "auditor/web/app.py" in readers and any(p.startswith("auditor/cli/") for p in readers)
