from __future__ import annotations

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
    path = artifacts_dir()
    assert path.is_dir() and path.parent == isolated_home.resolve()
