"""Settings read from the environment: every AUDITOR_* variable, read here and nowhere else.

The embedded default needs no setup at all: a SQLite file under AUDITOR_HOME and no broker, so
`auditor audit run` works on a laptop. A deployment points AUDITOR_DATABASE_URL at PostgreSQL and
AUDITOR_BROKER_URL at Redis. Settings are re-read on every `get_settings()` call (no cache), and
only the entry points call it (the CLI's commands, the review app's factory, the Celery app,
tasks and beat in workers/, and `auditor.store`'s defaults for them): each reads the settings
once and passes them, or the one value needed, down (`auditor.data.options.DataOptions` for the
data loaders), so a library call never depends on the environment at call time and two
configurations can run in one process. A value that cannot be used is a one-line `ServiceError`
naming the variable. README's table lists every entry of `ENV` (tests/test_config.py checks it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from auditor.errors import ServiceError

ENV_HOME = "AUDITOR_HOME"
ENV_DATABASE_URL = "AUDITOR_DATABASE_URL"
ENV_BROKER_URL = "AUDITOR_BROKER_URL"
ENV_RESULT_BACKEND = "AUDITOR_RESULT_BACKEND"
ENV_VISIBILITY_TIMEOUT = "AUDITOR_VISIBILITY_TIMEOUT"
ENV_BEAT_INTERVAL = "AUDITOR_BEAT_INTERVAL"
ENV_WORKER_GPUS = "AUDITOR_WORKER_GPUS"
ENV_REVIEWER = "AUDITOR_REVIEWER"
ENV_REVIEWER_PASSWORD = "AUDITOR_REVIEWER_PASSWORD"
ENV_ALEMBIC_INI = "AUDITOR_ALEMBIC_INI"
ENV_MODEL_FACTORIES = "AUDITOR_MODEL_FACTORIES"
ENV_LEASE = "AUDITOR_LEASE_SECONDS"
ENV_MAX_DELIVERIES = "AUDITOR_MAX_DELIVERIES"
ENV_SECRET_KEY = "AUDITOR_SECRET_KEY"
ENV_ARTIFACTS = "AUDITOR_ARTIFACTS"
ENV_STREAM_BYTES = "AUDITOR_STREAM_BYTES"
ENV_DATA_WORKERS = "AUDITOR_DATA_WORKERS"
ENV_LOGIN_MAX_FAILURES = "AUDITOR_LOGIN_MAX_FAILURES"
ENV_LOGIN_WINDOW = "AUDITOR_LOGIN_WINDOW"
DEFAULT_LEASE = 120
DEFAULT_MAX_DELIVERIES = 3

DEFAULT_STREAM_BYTES = 256 * 2**20  # data sets larger than this (as stored) are read in batches
DEFAULT_VISIBILITY_TIMEOUT = 12 * 3600  # seconds; the longest audit we expect is a few hours
DEFAULT_BEAT_INTERVAL = 5.0
DEFAULT_LOGIN_MAX_FAILURES = 10
DEFAULT_LOGIN_WINDOW = 900.0  # seconds

# Every variable with what it does (README's table lists the same, in this order).
ENV: dict[str, str] = {
    ENV_HOME: "Where the embedded SQLite file and audit artifacts live (default: the per-user data dir)",
    ENV_DATABASE_URL: "SQLAlchemy URL of the store (default: SQLite under AUDITOR_HOME)",
    ENV_BROKER_URL: "Celery broker (Redis) URL; unset = embedded mode, audits run in process",
    ENV_RESULT_BACKEND: "Celery result backend URL (optional; the database holds every result)",
    ENV_VISIBILITY_TIMEOUT: f"Seconds before Redis redelivers an unacknowledged audit (default {DEFAULT_VISIBILITY_TIMEOUT})",
    ENV_BEAT_INTERVAL: f"Seconds between `auditor beat` reads of the schedules table (default {DEFAULT_BEAT_INTERVAL:g})",
    ENV_WORKER_GPUS: "GPUs `auditor worker` starts workers for (default: what torch sees; 0 = CPU)",
    ENV_REVIEWER: "Reviewer name recorded with CLI decisions (default: the login name)",
    ENV_REVIEWER_PASSWORD: "Password of that reviewer, for CLI decisions in scripts once users exist (else "
    "--password-file FILE, or asked on a terminal)",
    ENV_ALEMBIC_INI: "alembic.ini of the migrations (default: the one in the checkout)",
    ENV_MODEL_FACTORIES: "Model factories workers may build, comma-separated MODULE:FACTORY or NAME=MODULE:FACTORY "
    "(besides entry points in the group auditor.models)",
    ENV_LEASE: f"Seconds a running audit may go without a heartbeat before it counts as lost (default {DEFAULT_LEASE})",
    ENV_MAX_DELIVERIES: f"Times an audit is started before it is failed as a poison audit (default {DEFAULT_MAX_DELIVERIES})",
    ENV_SECRET_KEY: "Key that signs the review app's session cookies (default: generated once into AUDITOR_HOME/secret_key)",
    ENV_ARTIFACTS: "Folder of audit artifacts and stored models and curvature; mount one volume here to share "
    "them between worker machines (default: AUDITOR_HOME/artifacts)",
    ENV_STREAM_BYTES: "Image folders and .npz files larger than this many bytes (as stored) are read from disk a batch at a "
    f"time instead of loaded whole; 0 streams every one (default {DEFAULT_STREAM_BYTES})",
    ENV_DATA_WORKERS: "Processes that decode streamed images ahead of the model (default: up to 4, one core left free)",
    ENV_LOGIN_MAX_FAILURES: "Failed sign-ins per user name, and per client address, within AUDITOR_LOGIN_WINDOW after "
    f"which the review app answers 429 until the oldest is older than the window (default {DEFAULT_LOGIN_MAX_FAILURES})",
    ENV_LOGIN_WINDOW: f"Seconds over which failed sign-ins are counted (default {DEFAULT_LOGIN_WINDOW:g})",
}

RUN_IN_PROCESS = "run audits in this process with `auditor audit run`"


@dataclass(frozen=True)
class Settings:
    """Where auditor keeps its state, how it reaches its services, and how its processes run.

    `broker_url is None` means embedded mode: audits run in the calling process instead of being
    sent to Celery workers.
    """

    home: Path
    database_url: str
    broker_url: str | None = None
    result_backend: str | None = None
    visibility_timeout: int = DEFAULT_VISIBILITY_TIMEOUT
    beat_interval: float = DEFAULT_BEAT_INTERVAL
    worker_gpus: int | None = None  # None: count what torch sees
    reviewer: str | None = None
    reviewer_password: str | None = field(default=None, repr=False)  # never in a log or traceback
    alembic_ini: Path | None = None
    model_factories: tuple[str, ...] = ()
    lease_seconds: int = DEFAULT_LEASE
    max_deliveries: int = DEFAULT_MAX_DELIVERIES
    secret_key: str | None = None
    artifacts: Path | None = None  # None: home / "artifacts"
    stream_bytes: int = DEFAULT_STREAM_BYTES
    data_workers: int | None = None  # None: up to 4, leaving a core free
    login_max_failures: int = DEFAULT_LOGIN_MAX_FAILURES
    login_window: float = DEFAULT_LOGIN_WINDOW  # seconds

    @property
    def embedded(self) -> bool:
        """True when there is no broker, so work runs in process."""
        return self.broker_url is None

    def require_broker(self, instead: str = RUN_IN_PROCESS) -> str:
        """The broker URL, or the one-line error every front door gives without one, ending
        with what to do `instead`."""
        if self.broker_url is None:
            raise ServiceError(
                f"no broker configured: set {ENV_BROKER_URL} (e.g. redis://127.0.0.1:6379/0); "
                f"without one, {instead}"
            )
        return self.broker_url


def _env(name: str) -> str | None:
    """An environment variable, with empty strings treated as unset (as shells often export them)."""
    value = os.environ.get(name, "").strip()
    return value or None


def _whole_seconds(name: str, default: int) -> int:
    text = _env(name)
    if text is None:
        return default
    try:
        seconds = int(text)
    except ValueError:
        seconds = 0
    if seconds <= 0:
        raise ServiceError(f"{name} must be a whole number of seconds, not {text!r}")
    return seconds


def _positive_count(name: str, default: int) -> int:
    text = _env(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise ServiceError(f"{name} must be a whole number above 0, not {text!r}")
    return value


def _seconds(name: str, default: float) -> float:
    text = _env(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ServiceError(f"{name}={text!r} is not a number of seconds") from None
    if not value > 0:
        raise ServiceError(f"{name} must be more than 0 seconds, got {text!r}")
    return value


def _count(name: str) -> int | None:
    text = _env(name)
    if text is None:
        return None
    try:
        return max(int(text), 0)
    except ValueError:
        raise ServiceError(f"{name} must be a whole number, not {text!r}") from None


def get_settings() -> Settings:
    """Read the settings from the environment now."""
    home_env = _env(ENV_HOME)
    home = Path(home_env).expanduser() if home_env else Path(platformdirs.user_data_dir("auditor"))
    home = home.resolve()
    database_url = _env(ENV_DATABASE_URL) or f"sqlite:///{home / 'auditor.db'}"
    ini = _env(ENV_ALEMBIC_INI)
    return Settings(
        home=home,
        database_url=database_url,
        broker_url=_env(ENV_BROKER_URL),
        result_backend=_env(ENV_RESULT_BACKEND),
        visibility_timeout=_whole_seconds(ENV_VISIBILITY_TIMEOUT, DEFAULT_VISIBILITY_TIMEOUT),
        beat_interval=_seconds(ENV_BEAT_INTERVAL, DEFAULT_BEAT_INTERVAL),
        worker_gpus=_count(ENV_WORKER_GPUS),
        reviewer=_env(ENV_REVIEWER),
        reviewer_password=os.environ.get(ENV_REVIEWER_PASSWORD) or None,  # not stripped: spaces count
        alembic_ini=Path(ini) if ini else None,
        model_factories=tuple(f.strip() for f in (_env(ENV_MODEL_FACTORIES) or "").split(",") if f.strip()),
        lease_seconds=_whole_seconds(ENV_LEASE, DEFAULT_LEASE),
        max_deliveries=_whole_seconds(ENV_MAX_DELIVERIES, DEFAULT_MAX_DELIVERIES),
        secret_key=_env(ENV_SECRET_KEY),
        artifacts=Path(_env(ENV_ARTIFACTS) or home / "artifacts").expanduser().resolve(),
        stream_bytes=c if (c := _count(ENV_STREAM_BYTES)) is not None else DEFAULT_STREAM_BYTES,
        data_workers=_count(ENV_DATA_WORKERS),
        login_max_failures=_positive_count(ENV_LOGIN_MAX_FAILURES, DEFAULT_LOGIN_MAX_FAILURES),
        login_window=_seconds(ENV_LOGIN_WINDOW, DEFAULT_LOGIN_WINDOW),
    )


def artifacts_dir(settings: Settings) -> Path:
    """Directory for trained models, reports and other files an audit leaves behind (created)."""
    path = settings.artifacts or settings.home / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path
