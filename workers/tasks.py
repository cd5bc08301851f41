"""Celery tasks: thin wrappers that load nothing themselves and call `auditor.runner`."""

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

    return tick(open_store())
