"""Settings read from the environment.

The embedded default needs no setup at all: a SQLite file under AUDITOR_HOME and no broker, so
`auditor audit run` works on a laptop. A deployment points AUDITOR_DATABASE_URL at PostgreSQL and
AUDITOR_BROKER_URL at Redis. Settings are re-read on every `get_settings()` call (no cache) so that
tests and long-lived shells that change the environment see the change.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

ENV_HOME = "AUDITOR_HOME"
ENV_DATABASE_URL = "AUDITOR_DATABASE_URL"
ENV_BROKER_URL = "AUDITOR_BROKER_URL"
ENV_RESULT_BACKEND = "AUDITOR_RESULT_BACKEND"


@dataclass(frozen=True)
class Settings:
    """Where auditor keeps its state and how it reaches its services.

    `broker_url is None` means embedded mode: audits run in the calling process instead of being
    sent to Celery workers.
    """

    home: Path
    database_url: str
    broker_url: str | None = None
    result_backend: str | None = None

    @property
    def embedded(self) -> bool:
        """True when there is no broker, so work runs in process."""
        return self.broker_url is None


def _env(name: str) -> str | None:
    """An environment variable, with empty strings treated as unset (as shells often export them)."""
    value = os.environ.get(name, "").strip()
    return value or None


def get_settings() -> Settings:
    """Read the settings from the environment now."""
    home_env = _env(ENV_HOME)
    home = Path(home_env).expanduser() if home_env else Path(platformdirs.user_data_dir("auditor"))
    home = home.resolve()
    database_url = _env(ENV_DATABASE_URL) or f"sqlite:///{home / 'auditor.db'}"
    return Settings(
        home=home,
        database_url=database_url,
        broker_url=_env(ENV_BROKER_URL),
        result_backend=_env(ENV_RESULT_BACKEND),
    )


def artifacts_dir(settings: Settings | None = None) -> Path:
    """Directory for trained models, reports and other files an audit leaves behind (created)."""
    settings = settings or get_settings()
    path = settings.home / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path
