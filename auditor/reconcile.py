"""Audits that nobody is running any more: find them and end them truthfully, or run them again.

Two ways an audit can be forgotten, whatever the queue and the database promise:
- *running* with nobody running it: the process died without a word (SIGKILL, out of memory, a
  machine gone) or lost the database while it worked. A running audit carries a lease: its
  `heartbeat_at` is stamped every lease / 4 seconds while it computes (`runner.Heartbeat`). Once
  the lease (AUDITOR_LEASE_SECONDS) has expired, an in-process audit is failed with the reason
  (nobody will resume it); a worker's audit is queued again, unless its message waits in a queue
  (a worker will take it) or it has used up its deliveries (then it is failed as a poison audit). A cancel asked of it takes effect at once.
- *queued* with no message: the broker lost it (Redis restarted without persistence) or the
  worker acknowledged it while the database was down. With a broker that can list its messages,
  a queued audit whose task id is in no queue and in no worker's hands, older than the lease, is
  sent again.

`reconcile` runs in every worker (a thread), in `auditor beat` on every tick, and for the audits
that `auditor audit status` and `audit list` show, so a user looking at an audit never sees a
status that is not true. It is safe to run from many processes at once: every change re-reads
and locks the row, and sending an audit twice only makes a second delivery, which the runner
turns into a no-op or a re-run with the same result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from auditor.config import Settings
from auditor.runner import poison_reason
from auditor.store import audits as audit_store
from auditor.store.models import utcnow

log = logging.getLogger(__name__)

# Send a queued audit to the broker again: (sessions, audit id) -> None.
Requeue = Callable[[sessionmaker[Session], int], None]
# The task ids the broker still holds, each "queued" (waiting in a queue) or "unacked" (delivered
# to a worker, alive or dead, and not acknowledged), or None when it cannot tell.
Pending = Callable[[], "dict[str, str] | None"]


@dataclass
class Reconciled:
    failed: list[int] = field(default_factory=list)
    requeued: list[int] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)  # lost worker, message still with the broker

    def __bool__(self) -> bool:
        return bool(self.failed or self.requeued or self.cancelled)


def reconcile(
    sessions: sessionmaker[Session],
    *,
    settings: Settings,
    requeue: Requeue | None = None,
    pending: Pending | None = None,
    audit_ids: list[int] | None = None,
) -> Reconciled:
    """End or re-run the audits whose lease expired and the queued audits with no message (see
    the module docstring). `requeue` None (no broker): lost audits are failed, never re-sent.
    `audit_ids` limits the pass to those audits. `settings` give the lease and the poison bound."""
    now = utcnow()
    stale_before = now - timedelta(seconds=settings.lease_seconds)
    out = Reconciled()
    with sessions() as s:
        lost = audit_store.lost_audit_ids(s, stale_before, audit_ids)
        can_list = pending is not None and requeue is not None
        orphans = audit_store.old_queued_audit_ids(s, stale_before, audit_ids) if can_list else []
    # ask the broker only when there is something to decide
    held = pending() if (pending is not None and requeue is not None and (lost or orphans)) else None
    if held is None:
        orphans = []
    for audit_id in lost:
        action = _settle_lost(sessions, audit_id, stale_before, requeue, held, settings.max_deliveries)
        if action:
            getattr(out, action).append(audit_id)
    for audit_id in orphans:
        with sessions() as s:
            audit = audit_store.find_audit(s, audit_id)
            if audit is None or audit.status != "queued" or (audit.task_id and audit.task_id in (held or {})):
                continue
        assert requeue is not None
        try:
            requeue(sessions, audit_id)
        except Exception:  # noqa: BLE001 - the broker is down: the next pass tries again
            log.warning("could not send queued audit %s again", audit_id, exc_info=True)
            continue
        log.warning("queued audit %s had no message at the broker; sent it again", audit_id)
        out.requeued.append(audit_id)
    return out


def _settle_lost(
    sessions: sessionmaker[Session],
    audit_id: int,
    stale_before: datetime,
    requeue: Requeue | None,
    held: dict[str, str] | None,
    max_deliveries: int,
) -> str | None:
    """One running audit whose lease expired: 'failed', 'cancelled', 'requeued', 'waiting' or
    None (it turned out to be alive, or finished, when locked)."""
    with sessions() as s, s.begin():
        audit = audit_store.find_audit(s, audit_id, for_update=True)
        if audit is None:
            return None
        if audit.status != "running" or (audit.heartbeat_at is not None and audit.heartbeat_at >= stale_before):
            return None
        since = audit.heartbeat_at.strftime("%Y-%m-%d %H:%M:%S UTC") if audit.heartbeat_at else "its start"
        if audit.cancel_requested:
            audit_store.set_audit_status(s, audit_id, "cancelled", message=f"cancelled; it had stopped running at {since}")
            return "cancelled"
        if audit.task_id is None or requeue is None:
            where = "the process running it" if audit.task_id is None else "the worker running it"
            reason = (
                f"lost: {where} stopped (no heartbeat since {since}); nothing will resume it, "
                "start it again"
            )
            audit_store.set_audit_status(s, audit_id, "failed", error=reason, message="failed")
            return "failed"
        if audit.deliveries >= max_deliveries:
            audit_store.set_audit_status(s, audit_id, "failed", error=poison_reason(audit), message="failed")
            return "failed"
        # Waiting in a queue: a worker will take it. Merely unacknowledged is not enough: the worker
        # that took it stopped beating, and Redis would hand it back only after the visibility
        # timeout (12 hours by default); the runner turns a late duplicate into a no-op.
        if held is not None and held.get(audit.task_id) == "queued":
            audit.message = f"its worker stopped at {since}; the broker will deliver it again"
            return "waiting"
        audit_store.set_audit_status(s, audit_id, "queued")
        audit.message = f"its worker stopped at {since} and its message was lost; queued again"
    try:
        requeue(sessions, audit_id)
    except Exception:  # noqa: BLE001 - left queued: the queued pass sends it once the broker is back
        log.warning("could not send lost audit %s again", audit_id, exc_info=True)
    return "requeued"
