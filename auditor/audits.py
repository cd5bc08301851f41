"""Creating and dispatching audits: the library behind `audit run|enqueue` and schedules.

Creating an audit re-reads the dataset's source first and records a new snapshot when the
content changed, so an audit always names the exact data it ran on.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from auditor.analyses.registry import KINDS, NEEDS_TEST
from auditor.config import get_settings
from auditor.errors import AuditorError, DataError, ServiceError
from auditor.resolve import load_dataset_source
from auditor.store import repo


def create_audit(
    sessions: sessionmaker[Session],
    kind: str,
    dataset_name: str,
    params: dict[str, Any],
    test_name: str | None = None,
    schedule_id: int | None = None,
) -> int:
    """Scan the dataset (and test set) and create a queued audit; returns its id."""
    if kind not in KINDS:
        raise AuditorError(f"unknown audit kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind in NEEDS_TEST and not test_name:
        raise DataError(f"{kind} audits need a test set: pass --test DATASET")
    with sessions() as s:
        dataset = repo.get_dataset(s, dataset_name)
        test = repo.get_dataset(s, test_name) if test_name else None
    # read files outside any transaction: a bad file leaves the database as it was, and SQLite's
    # write lock is not held while a large source is decoded
    examples = load_dataset_source(dataset)
    test_examples = load_dataset_source(test) if test is not None else None
    with sessions() as s, s.begin():
        dataset = repo.get_dataset(s, dataset_name)
        snapshot, _ = repo.record_snapshot(s, dataset, examples)
        if test is not None:
            test = repo.get_dataset(s, test.name)
            repo.record_snapshot(s, test, test_examples)
        audit = repo.create_audit(
            s, kind, dataset, snapshot=snapshot, params=params, test_dataset=test, schedule_id=schedule_id
        )
        return audit.id


def check_broker(timeout: float = 3.0) -> None:
    """Fail fast (before anything is written) when the broker is not configured or down."""
    settings = get_settings()
    if settings.broker_url is None:
        raise ServiceError(
            "no broker configured: set AUDITOR_BROKER_URL (e.g. redis://127.0.0.1:6379/0) "
            "or run the audit in this process with `auditor audit run`"
        )
    from workers.celery_app import app

    try:
        # The URL configured now, not the one the app was imported with (see `dispatch`).
        with app.connection_for_write(settings.broker_url) as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
    except Exception as exc:  # kombu raises several types for "cannot connect"
        raise ServiceError(
            f"cannot reach the broker at {_redact(settings.broker_url)}: {exc}"
        ) from None


def dispatch(audit_id: int) -> str:
    """Send the audit to the Celery queue `gpu`; returns the task id. Needs a broker."""
    settings = get_settings()
    if settings.broker_url is None:
        raise ServiceError(
            "no broker configured: set AUDITOR_BROKER_URL (e.g. redis://127.0.0.1:6379/0) "
            "or run the audit in this process with `auditor audit run`"
        )
    from kombu.exceptions import OperationalError

    from workers.celery_app import app
    from workers.tasks import run_audit, run_sharded

    with_shards = _shard_count(audit_id) > 1
    try:
        task = run_sharded if with_shards else run_audit
        # An explicit connection to the broker configured now: the Celery app read the settings
        # when it was imported, and a long-lived process (tests, a shell) may have changed them.
        with app.connection_for_write(settings.broker_url) as conn:
            result = task.apply_async(args=[audit_id], retry=False, connection=conn)
    except OperationalError as exc:
        raise ServiceError(
            f"cannot reach the broker at {_redact(settings.broker_url)}: {exc}"
        ) from None
    return result.id


def _redact(url: str) -> str:
    """The broker URL without its password, fit for messages."""
    from kombu.utils.url import maybe_sanitize_url

    return str(maybe_sanitize_url(url))


def _shard_count(audit_id: int) -> int:
    from auditor.store import open_store

    with open_store()() as s:
        return int((repo.get_audit(s, audit_id).params or {}).get("shards", 1))
