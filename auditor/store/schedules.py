"""Schedules: recurring audits, due rows locked for one beat, the last audited content.

Each function takes the caller's `Session` and never commits: the caller owns the unit of work.
Missing rows raise `NotFound`, lost races raise `Conflict`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from auditor.errors import NotFound
from auditor.recurrence import check_recurrence, next_run
from auditor.store._sql import in_id_range
from auditor.store.models import (
    Audit,
    Dataset,
    Schedule,
    Snapshot,
    utcnow,
)


def next_run_after(schedule: Schedule, after: datetime) -> datetime:
    """When the schedule is due next after `after` (cron expressions are read in UTC)."""
    return next_run(schedule.interval_seconds, schedule.cron, after)


def add_schedule(
    session: Session,
    dataset: Dataset,
    kind: str,
    *,
    params: dict[str, Any] | None = None,
    interval_seconds: int | None = None,
    cron: str | None = None,
    skip_unchanged: bool = True,
    now: datetime | None = None,
) -> Schedule:
    """A recurring audit, first due one interval (or the next cron time) from now."""
    check_recurrence(interval_seconds, cron)
    schedule = Schedule(
        dataset_id=dataset.id,
        kind=kind,
        params=params or {},
        interval_seconds=interval_seconds,
        cron=cron,
        enabled=True,
        skip_unchanged=skip_unchanged,
    )
    schedule.next_run_at = next_run_after(schedule, now or utcnow())
    session.add(schedule)
    session.flush()
    return schedule


def get_schedule(session: Session, schedule_id: int) -> Schedule:
    """The schedule with id `schedule_id`, or `NotFound`."""
    schedule = session.get(Schedule, schedule_id) if in_id_range(schedule_id) else None
    if schedule is None:
        raise NotFound(f"no schedule with id {schedule_id} (see `auditor schedule list`)")
    return schedule


def list_schedules(session: Session, dataset: Dataset | None = None) -> list[Schedule]:
    """Schedules by id, optionally of one dataset."""
    query = select(Schedule).order_by(Schedule.id)
    if dataset is not None:
        query = query.where(Schedule.dataset_id == dataset.id)
    return list(session.scalars(query))


def set_schedule_enabled(
    session: Session, schedule_id: int, enabled: bool, now: datetime | None = None
) -> Schedule:
    """Pause or resume. Resuming schedules the next run from now, so a long pause does not
    fire a backlog of runs at once."""
    schedule = get_schedule(session, schedule_id)
    if enabled and not schedule.enabled:
        schedule.next_run_at = next_run_after(schedule, now or utcnow())
    schedule.enabled = enabled
    session.flush()
    return schedule


def remove_schedule(session: Session, schedule_id: int) -> None:
    """Delete a schedule (its past audits stay, with schedule_id cleared)."""
    get_schedule(session, schedule_id)
    session.execute(delete(Schedule).where(Schedule.id == schedule_id))


def due_schedules(
    session: Session, now: datetime | None = None, *, lock: bool = False
) -> list[Schedule]:
    """Enabled schedules whose next run is at or before `now`, earliest first.

    With `lock=True` the rows are locked FOR UPDATE SKIP LOCKED on PostgreSQL, so two beat
    processes never both run the same schedule.
    """
    query = (
        select(Schedule)
        .where(Schedule.enabled.is_(True), Schedule.next_run_at <= (now or utcnow()))
        .order_by(Schedule.next_run_at, Schedule.id)
    )
    if lock:
        query = query.with_for_update(skip_locked=True)
    return list(session.scalars(query))


def mark_schedule_ran(session: Session, schedule: Schedule, now: datetime | None = None) -> None:
    """Stamp a run (or a deliberate skip) and move `next_run_at` past now."""
    now = now or utcnow()
    schedule.last_run_at = now
    schedule.next_run_at = next_run_after(schedule, now)
    session.flush()


def last_audited_hash(session: Session, schedule_id: int) -> str | None:
    """Content hash of the snapshot the schedule's newest non-failed audit looked at.

    With `skip_unchanged`, a due schedule whose dataset still has this hash need not run.
    """
    return session.scalar(
        select(Snapshot.content_hash)
        .join(Audit, Audit.snapshot_id == Snapshot.id)
        .where(
            Audit.schedule_id == schedule_id, Audit.status.in_(("queued", "running", "succeeded"))
        )
        .order_by(Audit.id.desc())
        .limit(1)
    )


def last_audit_created(session: Session, schedule_id: int) -> datetime | None:
    """When the audit behind `last_audited_hash` was created (same statuses)."""
    return session.scalar(
        select(Audit.created_at)
        .where(
            Audit.schedule_id == schedule_id, Audit.status.in_(("queued", "running", "succeeded"))
        )
        .order_by(Audit.id.desc())
        .limit(1)
    )
