"""Audits: creation, status transitions (one table of allowed moves), progress, cancel, heartbeats.

Each function takes the caller's `Session` and never commits: the caller owns the unit of work.
Missing rows raise `NotFound`, lost races raise `Conflict`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from auditor.errors import Conflict, NotFound
from auditor.records import finite_json
from auditor.store._sql import in_id_range
from auditor.store.datasets import (
    get_dataset,
    latest_snapshot,
)
from auditor.store.models import (
    AUDIT_STATUSES,
    FINISHED_STATUSES,
    Audit,
    Dataset,
    Snapshot,
    utcnow,
)

_ALLOWED_TRANSITIONS: dict[str, set[str]] = {
    "queued": {"running", "failed", "cancelled"},
    # running -> running/queued: a redelivered task (worker lost) starts the audit again.
    "running": {"running", "queued", "succeeded", "failed", "cancelled"},
    # A finished audit can only be queued again, deliberately (re-run).
    "succeeded": {"queued"},
    "failed": {"queued"},
    "cancelled": {"queued"},
}


def create_audit(
    session: Session,
    kind: str,
    dataset: Dataset,
    *,
    snapshot: Snapshot | None = None,
    params: dict[str, Any] | None = None,
    test_dataset: Dataset | None = None,
    schedule_id: int | None = None,
) -> Audit:
    """A queued audit of `dataset` at `snapshot` (default: its latest snapshot)."""
    snapshot = snapshot or latest_snapshot(session, dataset.id)
    if snapshot is None:
        raise NotFound(f"dataset {dataset.name!r} has no snapshot yet: run `auditor dataset scan`")
    audit = Audit(
        kind=kind,
        dataset_id=dataset.id,
        snapshot_id=snapshot.id,
        test_dataset_id=test_dataset.id if test_dataset is not None else None,
        params=params or {},
        status="queued",
        schedule_id=schedule_id,
    )
    session.add(audit)
    session.flush()
    return audit


def get_audit(session: Session, audit_id: int, *, for_update: bool = False) -> Audit:
    """The audit with id `audit_id`, or `NotFound`. With `for_update` it is read afresh and
    locked FOR UPDATE (PostgreSQL) until the caller's transaction ends: a cancel, a reconciler or
    another delivery of the same task that got there first wins."""
    audit = find_audit(session, audit_id, for_update=for_update)
    if audit is None:
        raise NotFound(f"no audit with id {audit_id} (see `auditor audit list`)")
    return audit


def list_audits(
    session: Session,
    dataset: Dataset | str | None = None,
    *,
    status: str | None = None,
    limit: int | None = None,
) -> list[Audit]:
    """Audits, newest first, optionally of one dataset (object or name) and one status."""
    query = select(Audit).order_by(Audit.id.desc())
    if dataset is not None:
        if isinstance(dataset, str):
            dataset = get_dataset(session, dataset)
        query = query.where(Audit.dataset_id == dataset.id)
    if status is not None:
        query = query.where(Audit.status == status)
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


def set_audit_status(
    session: Session,
    audit_id: int,
    status: str,
    *,
    message: str | None = None,
    error: str | None = None,
    task_id: str | None = None,
) -> Audit:
    """Move an audit to `status`, stamping started/finished times.

    Illegal moves (e.g. a cancelled audit to succeeded, when a worker finished after the user
    cancelled) raise `Conflict`, so the first final state wins. Re-queueing resets progress, the
    error and the cancel flag.
    """
    if status not in AUDIT_STATUSES:
        raise ValueError(f"unknown audit status {status!r}")
    audit = get_audit(session, audit_id)
    session.refresh(audit, with_for_update=True)
    if status not in _ALLOWED_TRANSITIONS[audit.status]:
        raise Conflict(f"audit {audit_id} is {audit.status}; it cannot become {status}")
    now = utcnow()
    audit.status = status
    if status == "queued":
        audit.progress, audit.error, audit.cancel_requested = 0.0, None, False
        audit.started_at = audit.finished_at = None
    elif status == "running":
        audit.started_at, audit.heartbeat_at, audit.finished_at = now, now, None
        audit.deliveries = (audit.deliveries or 0) + 1
    else:
        audit.finished_at = now
        if status == "succeeded":
            audit.progress = 1.0
    if message is not None:
        audit.message = message
    if error is not None:
        audit.error = error
    if task_id is not None:
        audit.task_id = task_id
    session.flush()
    return audit


def update_progress(
    session: Session,
    audit_id: int,
    fraction: float,
    message: str | None = None,
    phase: dict[str, float] | None = None,
) -> bool:
    """Record progress and a heartbeat; return whether a cancel was requested.

    One UPDATE ... RETURNING, so a progress callback can check for cancellation at no extra cost
    and raise `auditor.errors.Cancelled` itself. `phase` (where the current step began: its
    `fraction` and `started_at`, epoch seconds) is kept as the running audit's summary, the only
    thing it holds until the analysis's own summary replaces it: the ETA is computed from it.
    """
    values: dict[str, Any] = {
        "progress": min(max(float(fraction), 0.0), 1.0),
        "heartbeat_at": utcnow(),
    }
    if message is not None:
        values["message"] = message
    if phase is not None:
        values["summary"] = {"phase": dict(phase)}
    cancel = session.scalar(
        update(Audit)
        .where(Audit.id == audit_id)
        .values(**values)
        .returning(Audit.cancel_requested)
        .execution_options(synchronize_session=False)
    )
    if cancel is None:
        raise NotFound(f"no audit with id {audit_id}")
    return bool(cancel)


def set_audit_summary(session: Session, audit_id: int, summary: dict[str, Any]) -> None:
    """Store the analysis's summary of the whole audit (JSON)."""
    audit = get_audit(session, audit_id)
    audit.summary = finite_json(summary)
    session.flush()


def merge_audit_summary(session: Session, audit_id: int, key: str, value: Any) -> None:
    """Set one key of the audit's summary, keeping the others (what happened to an audit after
    it finished, such as a re-ranking of its queue, is added beside what the analysis said)."""
    audit = get_audit(session, audit_id)
    session.refresh(audit, ["summary"], with_for_update=True)
    audit.summary = finite_json({**(audit.summary or {}), key: value})
    session.flush()


def request_cancel(session: Session, audit_id: int, stale_before: datetime | None = None) -> Audit:
    """Ask an audit to stop.

    A queued audit is cancelled at once (a worker that picks it up later skips it); a running
    one gets `cancel_requested`, which its next progress report sees, or, when its heartbeat is
    older than `stale_before` (its lease expired: nobody runs it), is cancelled at once. Cancelling a cancelled audit
    is a no-op; a succeeded or failed one raises `Conflict`.
    """
    audit = get_audit(session, audit_id)
    session.refresh(audit, with_for_update=True)
    if audit.status == "cancelled":
        return audit
    if audit.status in FINISHED_STATUSES:
        raise Conflict(f"audit {audit_id} already {audit.status}; nothing to cancel")
    audit.cancel_requested = True
    if audit.status == "queued":
        audit.status = "cancelled"
        audit.finished_at = utcnow()
        audit.message = "cancelled before it started"
    elif stale_before is not None and (
        audit.heartbeat_at is None or audit.heartbeat_at < stale_before
    ):
        # running on paper only: its lease expired, nobody is left to see the request
        audit.status = "cancelled"
        audit.finished_at = utcnow()
        audit.message = "cancelled; the process running it had stopped"
    session.flush()
    return audit


def is_cancel_requested(session: Session, audit_id: int) -> bool:
    """Whether someone asked the audit to stop (read fresh from the database)."""
    flag = session.scalar(select(Audit.cancel_requested).where(Audit.id == audit_id))
    if flag is None:
        raise NotFound(f"no audit with id {audit_id}")
    return bool(flag)


def touch_heartbeat(session: Session, audit_id: int) -> None:
    """Stamp a running audit's heartbeat (the computation is alive)."""
    session.execute(
        update(Audit)
        .where(Audit.id == audit_id, Audit.status == "running")
        .values(heartbeat_at=utcnow())
    )


def stale_audits(session: Session, heartbeat_before: datetime) -> list[Audit]:
    """Running audits whose last heartbeat is older than `heartbeat_before` (a lost worker)."""
    return list(
        session.scalars(
            select(Audit)
            .where(Audit.status == "running", Audit.heartbeat_at < heartbeat_before)
            .order_by(Audit.id)
        )
    )


def find_audit(session: Session, audit_id: int, *, for_update: bool = False) -> Audit | None:
    """The audit with id `audit_id` (locked as in `get_audit` with `for_update`), or None."""
    audit = session.get(Audit, audit_id) if in_id_range(audit_id) else None
    if audit is not None and for_update:
        session.refresh(audit, with_for_update=True)
    return audit


def audit_status(session: Session, audit_id: int) -> str | None:
    """The audit's status read afresh from the database (None: no such audit)."""
    return session.scalar(select(Audit.status).where(Audit.id == audit_id))


def lost_audit_ids(
    session: Session, stale_before: datetime, among: list[int] | None = None
) -> list[int]:
    """Running audits whose heartbeat is older than `stale_before` (or missing), by id."""
    query = select(Audit.id).where(
        Audit.status == "running",
        (Audit.heartbeat_at < stale_before) | Audit.heartbeat_at.is_(None),
    )
    if among is not None:
        query = query.where(Audit.id.in_([i for i in among if in_id_range(i)]))
    return list(session.scalars(query.order_by(Audit.id)))


def old_queued_audit_ids(
    session: Session, created_before: datetime, among: list[int] | None = None
) -> list[int]:
    """Queued audits created before `created_before`, by id (candidates for a lost message)."""
    query = select(Audit.id).where(Audit.status == "queued", Audit.created_at < created_before)
    if among is not None:
        query = query.where(Audit.id.in_([i for i in among if in_id_range(i)]))
    return list(session.scalars(query.order_by(Audit.id)))


def set_task_id(session: Session, audit_id: int, task_id: str) -> None:
    """Record the broker message id a queued audit is sent as (reconcile matches it to the
    queue); a finished audit keeps the id of the run that finished it."""
    audit = get_audit(session, audit_id)
    if audit.status == "queued":
        audit.task_id = task_id


def audits_of_kind(session: Session, dataset_id: int, kind: str, *, status: str | None = None) -> list[Audit]:
    """A data set's audits of one kind, newest first (optionally of one status)."""
    query = select(Audit).where(Audit.dataset_id == dataset_id, Audit.kind == kind)
    if status is not None:
        query = query.where(Audit.status == status)
    return list(session.scalars(query.order_by(Audit.id.desc())))
