"""Celery tasks: thin wrappers that load nothing themselves and call the library."""

from __future__ import annotations

from workers.celery_app import app


@app.task(name="auditor.run_audit", bind=True, acks_late=True, reject_on_worker_lost=True)
def run_audit(self, audit_id: int) -> str:
    """Run one audit to a final state; the outcome is on the audit row (and returned)."""
    from auditor.runner import execute_audit
    from auditor.store import open_store

    return execute_audit(open_store(), audit_id, task_id=self.request.id).status


@app.task(name="auditor.tick_schedules")
def tick_schedules() -> list[int]:
    """Enqueue the audits of every due schedule; returns the new audit ids."""
    from auditor.schedules import tick
    from auditor.store import open_store
    from workers.dispatch import send_to_worker

    return tick(open_store(), start=send_to_worker)


@app.task(name="auditor.run_sharded", bind=True, acks_late=True, reject_on_worker_lost=True)
def run_sharded(self, audit_id: int) -> int:
    """Fan a label-check audit out as `shards` tasks on queue gpu; returns the shard count."""
    from auditor.shards import start_sharded
    from auditor.store import open_store

    count = start_sharded(open_store(), audit_id, task_id=self.request.id)
    for i in range(count):
        run_shard.apply_async(args=[audit_id, i, count])
    return count


@app.task(name="auditor.run_shard", acks_late=True, reject_on_worker_lost=True)
def run_shard(audit_id: int, index: int, count: int) -> str:
    """Compute one shard; the last one to finish re-ranks and completes the audit."""
    from auditor.shards import run_shard as compute
    from auditor.store import open_store

    return compute(open_store(), audit_id, index, count).status
