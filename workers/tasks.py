"""Celery tasks: thin wrappers that load nothing themselves and call the library.

Each task is an entry point: it reads the settings once (`get_settings()`) and passes them to the
library, which never reads the environment itself.

A task that cannot reach the database is not the audit's failure and must not be acknowledged
as done: it is retried (a new message with the same task id, then the old one is acked) with
back-off, for as long as the outage lasts, so no queued audit is lost to a database restart.
"""

from __future__ import annotations

from workers.celery_app import app

DB_RETRY_MAX_S = 60  # back-off cap between retries while the database is unreachable


def _retry_later(task, exc: Exception) -> None:
    countdown = min(2 ** min(task.request.retries, 6), DB_RETRY_MAX_S)
    raise task.retry(exc=exc, countdown=countdown, max_retries=None)


@app.task(name="auditor.run_audit", bind=True, acks_late=True, reject_on_worker_lost=True)
def run_audit(self, audit_id: int) -> str:
    """Run one audit to a final state; the outcome is on the audit row (and returned)."""
    from auditor.config import get_settings
    from auditor.errors import ServiceError
    from auditor.runner import DATABASE_UNREACHABLE, execute_audit
    from auditor.store import dispose_engines, open_store

    try:
        settings = get_settings()
        sessions = open_store(settings.database_url)  # ServiceError when the database is down
    except ServiceError as exc:
        _retry_later(self, exc)
        raise
    try:
        return execute_audit(sessions, audit_id, settings=settings, task_id=self.request.id).status
    except DATABASE_UNREACHABLE as exc:
        dispose_engines()  # drop pooled connections to the old server
        _retry_later(self, exc)
        raise


LDS_RESULT_TTL_S = 24 * 3600


@app.task(name="auditor.lds_retrain", acks_late=True, reject_on_worker_lost=True)
def lds_retrain(key: str, index: int, doc: dict, subset: list[int]) -> None:
    """Retrain on one LDS subset and push {"index", "losses"} (or {"index", "error"}) onto the
    Redis list `key`, where `validate --metric lds` collects them. Redelivery pushes again; the
    collector keeps the first result per index."""
    import json

    import redis

    from auditor.config import get_settings
    from auditor.errors import AuditorError
    from auditor.lds_jobs import subset_losses

    settings = get_settings()
    try:
        result: dict = {"index": index, "losses": subset_losses(doc, subset, settings)}
    except AuditorError as exc:
        result = {"index": index, "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - reported to the waiting command, not lost
        result = {"index": index, "error": f"{type(exc).__name__}: {exc}"}
    client = redis.Redis.from_url(settings.require_broker())
    client.rpush(key, json.dumps(result))
    client.expire(key, LDS_RESULT_TTL_S)
    client.close()


@app.task(name="auditor.tick_schedules")
def tick_schedules() -> list[int]:
    """Enqueue the audits of every due schedule; returns the new audit ids."""
    from auditor.config import get_settings
    from auditor.schedules import tick
    from auditor.store import open_store
    from workers.dispatch import send_to_worker

    settings = get_settings()
    return tick(open_store(settings.database_url), start=send_to_worker, settings=settings)


@app.task(name="auditor.run_sharded", bind=True, acks_late=True, reject_on_worker_lost=True)
def run_sharded(self, audit_id: int) -> int:
    """Fan a label-check audit out as `shards` tasks on queue gpu; returns the shard count."""
    from auditor.config import get_settings
    from auditor.errors import ServiceError
    from auditor.runner import DATABASE_UNREACHABLE
    from auditor.shards import fit_shared, start_sharded
    from auditor.store import open_store

    try:
        settings = get_settings()
        sessions = open_store(settings.database_url)
        count = start_sharded(sessions, audit_id, task_id=self.request.id)
        # one fit, stored as artifacts on the shared volume; the shards load it
        if fit_shared(sessions, audit_id, settings=settings).status != "running":
            return 0  # failed or cancelled: recorded on the audit, no shard to send
    except (*DATABASE_UNREACHABLE, ServiceError) as exc:
        _retry_later(self, exc)
        raise
    for i in range(count):
        run_shard.apply_async(args=[audit_id, i, count])
    return count


@app.task(name="auditor.run_shard", acks_late=True, reject_on_worker_lost=True)
def run_shard(audit_id: int, index: int, count: int) -> str:
    """Compute one shard; the last one to finish re-ranks and completes the audit."""
    from auditor.config import get_settings
    from auditor.shards import run_shard as compute
    from auditor.store import open_store

    settings = get_settings()
    return compute(open_store(settings.database_url), audit_id, index, count, settings=settings).status
