"""Sending audits to the Celery queue: the front doors' way onto the workers.

Tasks are sent by name (`send_task`), so nothing here, and nothing in the library, imports the
task module; the library never imports `workers` at all. Which task an audit needs (one task, or
a fan-out over shards) `auditor.audits.is_sharded` says, for this door as for `audit run`.
"""

from __future__ import annotations

import json
import logging
import uuid

from sqlalchemy.orm import Session, sessionmaker

from auditor import audits
from auditor.config import Settings, get_settings
from auditor.errors import ServiceError
from auditor.runner import AuditStarter
from auditor.store import audits as audit_store

log = logging.getLogger(__name__)

RUN_AUDIT = "auditor.run_audit"
RUN_SHARDED = "auditor.run_sharded"


def _redact(url: str) -> str:
    """The broker URL without its password, fit for messages."""
    from kombu.utils.url import maybe_sanitize_url

    return str(maybe_sanitize_url(url))


def check_broker(timeout: float = 3.0) -> None:
    """Fail fast (before anything is written) when the broker is not configured or down."""
    url = get_settings().require_broker()
    from workers.celery_app import app

    try:
        # The URL configured now, not the one the app was imported with (see `dispatch`).
        with app.connection_for_write(url) as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
    except Exception as exc:  # kombu raises several types for "cannot connect"
        raise ServiceError(f"cannot reach the broker at {_redact(url)}: {exc}") from None


def task_for(sessions: sessionmaker[Session], audit_id: int) -> str:
    """The task an audit goes to: its kind's fan-out over shards, or one task."""
    with sessions() as s:
        audit = audit_store.get_audit(s, audit_id)
        sharded = audits.is_sharded(audit.kind, audit.params or {})
    return RUN_SHARDED if sharded else RUN_AUDIT


def dispatch(audit_id: int, sessions: sessionmaker[Session] | None = None) -> str:
    """Send the audit to its Celery queue; returns the task id. Needs a broker."""
    url = get_settings().require_broker()
    from kombu.exceptions import OperationalError

    from auditor.store import open_store
    from workers.celery_app import app

    sessions = sessions or open_store()
    name = task_for(sessions, audit_id)
    # The task id is recorded before the message exists, so the reconciler can always tell a
    # queued audit whose message the broker lost (auditor.reconcile).
    task_id = str(uuid.uuid4())
    with sessions() as s, s.begin():
        audit_store.set_task_id(s, audit_id, task_id)
    try:
        # An explicit connection to the broker configured now: the Celery app read the settings
        # when it was imported, and a long-lived process (tests, a shell) may have changed them.
        with app.connection_for_write(url) as conn:
            result = app.send_task(name, args=[audit_id], retry=False, connection=conn, task_id=task_id)
    except OperationalError as exc:
        raise ServiceError(f"cannot reach the broker at {_redact(url)}: {exc}") from None
    return result.id


def pending_task_ids(queues: tuple[str, ...] = ("gpu", "default")) -> dict[str, str] | None:
    """Task ids the broker holds: "queued" (waiting in a queue) or "unacked" (delivered and not
    yet acknowledged: a worker has it, or had it and died). None when the broker is not Redis or
    cannot be read, so the reconciler does not re-send what it cannot see."""
    url = get_settings().broker_url
    if not url or not url.startswith(("redis://", "rediss://")):
        return None
    import redis

    def task_id(raw: bytes, wrapped: bool) -> str | None:
        try:
            doc = json.loads(raw)
            message = doc[0] if wrapped else doc
            return message["headers"]["id"]
        except (ValueError, KeyError, IndexError, TypeError):
            return None

    held: dict[str, str] = {}
    try:
        client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        for raw in client.hvals("unacked"):
            if (tid := task_id(raw, True)) is not None:
                held[tid] = "unacked"
        for queue in queues:
            # kombu keeps a queue's priority levels in keys named QUEUE\x06\x16N
            for key in [queue.encode(), *client.scan_iter(match=f"{queue}\x06\x16*")]:
                for raw in client.lrange(key, 0, -1):
                    if (tid := task_id(raw, False)) is not None:
                        held[tid] = "queued"
        client.close()
    except redis.RedisError:
        log.warning("cannot list the broker's messages", exc_info=True)
        return None
    return held


LDS_TASK = "auditor.lds_retrain"


def lds_on_workers(doc: dict, timeout_s: float = 24 * 3600):
    """An `OutcomesFn` for `validate_lds` that sends one `auditor.lds_retrain` task per subset to
    the workers and collects their test losses from a Redis list, with progress and ETA. A
    worker's error ends the run with that error; results come back in any order."""
    import time

    import numpy as np
    import redis

    from auditor.errors import AuditorError

    url = get_settings().require_broker()
    from workers.celery_app import app

    def run(masks, rows, classes, report):
        key = f"auditor:lds:{uuid.uuid4()}"
        job = {**doc, "test_rows": [int(r) for r in rows], "classes": int(classes)}
        with app.connection_for_write(url) as conn:
            for j, mask in enumerate(masks):
                subset = [int(i) for i in np.flatnonzero(mask)]
                app.send_task(LDS_TASK, args=[key, j, job, subset], connection=conn, retry=False)
        client = redis.Redis.from_url(url, socket_timeout=30)  # longer than one BLPOP wait
        out = np.full((len(masks), len(rows)), np.nan)
        got: set[int] = set()
        start = time.monotonic()
        try:
            while len(got) < len(masks):
                item = client.blpop([key], timeout=5)
                if time.monotonic() - start > timeout_s:
                    raise AuditorError(f"LDS retrains: {len(got)} of {len(masks)} came back in {timeout_s:.0f} s")
                if item is None:
                    report(len(got) / len(masks), f"waiting for workers: {len(got)}/{len(masks)} retrains back")
                    continue
                res = json.loads(item[1])
                if "error" in res:
                    raise AuditorError(f"LDS retrain of subset {res['index']} failed on a worker: {res['error']}")
                if res["index"] in got:
                    continue
                got.add(res["index"])
                out[res["index"]] = res["losses"]
                done = time.monotonic() - start
                eta = done / len(got) * (len(masks) - len(got))
                report(len(got) / len(masks), f"{len(got)}/{len(masks)} retrains back from workers, about {eta:.0f} s left")
        finally:
            client.delete(key)
            client.close()
        return out

    return run


def requeue(sessions: sessionmaker[Session], audit_id: int) -> None:
    """Send an audit that is queued in the database to the broker again (the reconciler's way)."""
    dispatch(audit_id, sessions)


def reconcile_now(sessions: sessionmaker[Session], audit_ids: list[int] | None = None):
    """`auditor.reconcile.reconcile` with this deployment's broker (none: embedded)."""
    from auditor.reconcile import reconcile

    settings = get_settings()
    if settings.embedded:
        return reconcile(sessions, settings=settings, audit_ids=audit_ids)
    return reconcile(sessions, settings=settings, requeue=requeue, pending=pending_task_ids, audit_ids=audit_ids)


def enqueue(sessions: sessionmaker[Session], audit_id: int) -> str:
    """Send a created audit to its queue; returns the task id. If sending fails the audit is
    marked failed with the reason (nothing will ever pick it up) and the error is raised."""
    try:
        return dispatch(audit_id, sessions)
    except Exception as exc:  # kombu raises several types for "cannot send"
        with sessions() as s, s.begin():
            audit_store.set_audit_status(s, audit_id, "failed", error=f"could not enqueue: {exc}")
        raise


def send_to_worker(sessions: sessionmaker[Session], audit_id: int) -> tuple[str, str]:
    """An `AuditStarter` for schedules: enqueue, and report a failure instead of raising it, so
    the other due schedules still run."""
    try:
        enqueue(sessions, audit_id)
    except Exception as exc:
        log.error("could not enqueue audit %s: %s", audit_id, exc)
        return "failed", "failed"
    return "enqueued", "queued"


def default_starter(settings: Settings) -> AuditStarter:
    """Run in process without a broker (embedded), send to a worker with one. With a broker it
    is checked first: call this before claiming schedules, so a broker outage loses no run."""
    if settings.embedded:
        return audits.run_in_process(settings)
    check_broker()
    return send_to_worker
