"""Recurring audits: the library behind `auditor schedule ...`, the `auditor.tick_schedules` task
and `auditor beat`.

The schedules table is the only copy of a schedule. A tick takes two steps:

1. Claim, in one short transaction: lock the due schedules (`SELECT ... FOR UPDATE SKIP LOCKED`
   on PostgreSQL; on SQLite every unit of work starts with `BEGIN IMMEDIATE`, which serialises
   them) and move each one's `next_run_at` past now (`last_run_at` = now). Two ticks at once
   therefore never take the same schedule: the second skips the locked rows, or finds them no
   longer due once the first commits. A claimed run happens at most once: if the process dies
   between claim and scan, that run is lost and the schedule comes due again one period later.
2. Scan each claimed schedule, outside that transaction: re-read the dataset's source (and test
   set), record a snapshot when the content changed, then
   - skip it (action "skipped", reason "unchanged") when `skip_unchanged` is on and the dataset's
     content hash equals the one of the schedule's newest queued, running or succeeded audit,
     and the test set (if any) has no snapshot newer than that audit. A failed or cancelled
     audit does not count, so the next run tries again; a still-queued or running audit of the
     same data does, so a slow worker does not pile up duplicates;
   - otherwise create a queued audit that names the schedule (`audits.create_audit`: checked
     like any other audit, with the recorded damping) and start it: in the embedded default (no
     broker) it runs in this process, with a broker it is sent to the Celery queue `gpu`. Data
     the checks refuse fails the run with their one-line reason, and no snapshot is recorded.

Reviews are keyed by (dataset, example_key), so findings of a scheduled audit on examples a
reviewer already settled stay out of the review queue; an edited or relabelled example has a
new key and comes back.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from auditor import audits, recurrence
from auditor.analyses.registry import check_request
from auditor.config import Settings
from auditor.data.options import DataOptions
from auditor.datasets import snapshotted
from auditor.errors import AuditorError
from auditor.factories import listed_factories
from auditor.runner import AuditStarter
from auditor.store import datasets as dataset_store
from auditor.store import schedules as schedule_store
from auditor.store.models import Schedule, Snapshot, utcnow

log = logging.getLogger(__name__)

# Key of a schedule's params that names its test set; the rest are the audit's params.
TEST_DATASET_PARAM = "test_dataset"



# ---------------------------------------------------------------------------------------------
# managing schedules


def format_interval(seconds: int) -> str:
    """The shortest text `recurrence.parse_interval` reads back to `seconds` (21600 -> "6h")."""
    parts = []
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def schedule_doc(schedule: Schedule) -> dict[str, Any]:
    """A schedule as the CLI prints it (`--json`)."""
    params = dict(schedule.params or {})
    test = params.pop(TEST_DATASET_PARAM, None)
    return {
        "id": schedule.id,
        "dataset": schedule.dataset.name,
        "kind": schedule.kind,
        "test_dataset": test,
        "every": format_interval(schedule.interval_seconds) if schedule.interval_seconds else None,
        "interval_seconds": schedule.interval_seconds,
        "cron": schedule.cron,
        "enabled": schedule.enabled,
        "skip_unchanged": schedule.skip_unchanged,
        "params": params,
        "last_run_at": _iso(schedule.last_run_at),
        "next_run_at": _iso(schedule.next_run_at) if schedule.enabled else None,
    }


def _iso(when: datetime | None) -> str | None:
    return when.isoformat() if when is not None else None


def add_schedule(
    sessions: sessionmaker[Session],
    dataset_name: str,
    kind: str,
    params: dict[str, Any],
    *,
    every: str | None = None,
    cron: str | None = None,
    test_name: str | None = None,
    skip_unchanged: bool = True,
    due_now: bool = False,
    now: datetime | None = None,
    settings: Settings,
) -> tuple[dict[str, Any], bool]:
    """Add a recurring audit; returns (its doc, whether it was created).

    Idempotent: when an enabled or paused schedule with the same dataset, kind, params, timing and
    skip setting exists, that one is returned (created False) rather than a duplicate that would
    audit the same data twice per period. `due_now` makes the first run due at once instead of
    one period from now. `settings` say which model factories are registered.
    """
    with listed_factories(settings.model_factories):
        check_request(kind, params, test_name)
    if (every is None) == (cron is None):
        raise AuditorError("give exactly one of --every (e.g. 6h) or --cron (e.g. '0 3 * * *')")
    interval = recurrence.parse_interval(every) if every is not None else None
    stored = dict(params)
    if test_name:
        stored[TEST_DATASET_PARAM] = test_name
    now = now or utcnow()
    with sessions() as s, s.begin():
        dataset = dataset_store.get_dataset(s, dataset_name)
        if test_name:
            dataset_store.get_dataset(s, test_name)
        for existing in schedule_store.list_schedules(s, dataset):
            same = (
                existing.kind == kind
                and existing.interval_seconds == interval
                and existing.cron == cron
                and existing.skip_unchanged == skip_unchanged
                and (existing.params or {}) == stored
            )
            if same:
                return schedule_doc(existing), False
        schedule = schedule_store.add_schedule(
            s,
            dataset,
            kind,
            params=stored,
            interval_seconds=interval,
            cron=cron,
            skip_unchanged=skip_unchanged,
            now=now,
        )
        if due_now:
            schedule.next_run_at = now
            s.flush()
        return schedule_doc(schedule), True


def list_schedule_docs(
    sessions: sessionmaker[Session], dataset_name: str | None = None
) -> list[dict[str, Any]]:
    """Every schedule (optionally of one dataset), by id."""
    with sessions() as s:
        dataset = dataset_store.get_dataset(s, dataset_name) if dataset_name else None
        return [schedule_doc(schedule) for schedule in schedule_store.list_schedules(s, dataset)]


def set_enabled(
    sessions: sessionmaker[Session], schedule_id: int, enabled: bool
) -> tuple[dict[str, Any], bool]:
    """Pause or resume; returns (the doc, whether anything changed). Pausing a paused schedule
    (or resuming a running one) changes nothing and is not an error."""
    with sessions() as s, s.begin():
        schedule = schedule_store.get_schedule(s, schedule_id)
        changed = schedule.enabled != enabled
        schedule_store.set_schedule_enabled(s, schedule_id, enabled)
        return schedule_doc(schedule), changed


def remove(sessions: sessionmaker[Session], schedule_id: int) -> None:
    """Delete a schedule; its past audits stay. `NotFound` when there is no such schedule."""
    with sessions() as s, s.begin():
        schedule_store.remove_schedule(s, schedule_id)


# ---------------------------------------------------------------------------------------------
# ticking


@dataclass(frozen=True)
class Claim:
    """What a scan needs of a schedule, copied out of the claiming transaction."""

    schedule_id: int
    dataset_id: int
    dataset: str
    kind: str
    params: dict[str, Any]
    skip_unchanged: bool
    next_run_at: datetime | None


@dataclass
class ScanOutcome:
    """What one due schedule's run did.

    action: "ran" (embedded: the audit ran here; see audit_status), "enqueued" (sent to a worker),
    "skipped" (reason "unchanged") or "failed" (reason: why no audit could be created or sent).
    """

    schedule_id: int
    dataset: str
    kind: str
    action: str
    reason: str | None = None
    audit_id: int | None = None
    audit_status: str | None = None
    snapshot_id: int | None = None
    new_snapshot: bool = False
    next_run_at: datetime | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["next_run_at"] = _iso(self.next_run_at)
        return doc

    def describe(self) -> str:
        """One line for humans and logs."""
        head = f"schedule {self.schedule_id} ({self.kind} on {self.dataset}): "
        if self.action == "skipped":
            return head + f"skipped: {self.reason}"
        if self.action == "failed":
            suffix = f" (audit {self.audit_id})" if self.audit_id is not None else ""
            return head + f"failed: {self.reason}{suffix}"
        status = f" {self.audit_status}" if self.action == "ran" else ""
        return head + f"audit {self.audit_id} {self.action}{status}"


def claim_due(sessions: sessionmaker[Session], now: datetime | None = None) -> list[Claim]:
    """Lock the due schedules, move each to its next run, and return them (see module doc)."""
    now = now or utcnow()
    with sessions() as s, s.begin():
        claims = []
        for schedule in schedule_store.due_schedules(s, now, lock=True):
            schedule_store.mark_schedule_ran(s, schedule, now)
            claims.append(
                Claim(
                    schedule_id=schedule.id,
                    dataset_id=schedule.dataset_id,
                    dataset=schedule.dataset.name,
                    kind=schedule.kind,
                    params=dict(schedule.params or {}),
                    skip_unchanged=schedule.skip_unchanged,
                    next_run_at=schedule.next_run_at,
                )
            )
        return claims


def scan(sessions: sessionmaker[Session], claim: Claim, start: AuditStarter, *, settings: Settings) -> ScanOutcome:
    """Run one claimed schedule: re-read, snapshot, skip if unchanged, else create and start.

    The audit is created by `audits.create_audit`, the same checks as `audit run|enqueue`, in
    the transaction that recorded the snapshot: data it refuses (one class, too few examples)
    fails the run with that one-line reason and records nothing. `settings` give the home of
    recorded dampings and how the data set is read."""
    outcome = ScanOutcome(claim.schedule_id, claim.dataset, claim.kind, "failed")
    outcome.next_run_at = claim.next_run_at
    params = dict(claim.params)
    test_name = params.pop(TEST_DATASET_PARAM, None)

    def said(chosen: dict[str, Any]) -> None:
        log.info(
            "schedule %s: damping %g chosen by validate --sweep-damping",
            claim.schedule_id,
            chosen["damping"],
        )

    try:
        with snapshotted(sessions, claim.dataset_id, test_name, data=DataOptions.from_settings(settings)) as snap:
            seen = snap.snapshot.id, snap.diff.new_snapshot
            if claim.skip_unchanged and _unchanged(
                snap.session, claim.schedule_id, snap.snapshot, snap.test_snapshot
            ):
                outcome.snapshot_id, outcome.new_snapshot = seen
                outcome.action, outcome.reason = "skipped", "unchanged"
                return outcome
            outcome.audit_id = audits.create_audit(
                sessions,
                claim.kind,
                claim.dataset,
                params,
                test_name,
                claim.schedule_id,
                settings=settings,
                snapshot=snap,
                on_damping=said,
            )
        outcome.snapshot_id, outcome.new_snapshot = seen  # committed with the audit
    except AuditorError as exc:
        outcome.reason = str(exc)
        return outcome
    outcome.action, outcome.audit_status = start(sessions, outcome.audit_id)
    if outcome.action == "failed":
        outcome.reason = "could not enqueue the audit"
    return outcome


def _unchanged(
    session: Session, schedule_id: int, snapshot: Snapshot, test_snapshot: Snapshot | None
) -> bool:
    if schedule_store.last_audited_hash(session, schedule_id) != snapshot.content_hash:
        return False
    if test_snapshot is None:
        return True
    audited_at = schedule_store.last_audit_created(session, schedule_id)
    return audited_at is not None and test_snapshot.created_at <= audited_at


def run_due(
    sessions: sessionmaker[Session],
    now: datetime | None = None,
    *,
    start: AuditStarter,
    settings: Settings,
) -> list[ScanOutcome]:
    """Claim every schedule due at `now` (default: now) and scan each, starting each new audit
    with `start` (the front door chooses: run in process, or send to a worker)."""
    outcomes = [scan(sessions, claim, start, settings=settings) for claim in claim_due(sessions, now)]
    for outcome in outcomes:
        log.info("%s", outcome.describe())
    return outcomes


def tick(
    sessions: sessionmaker[Session], now: datetime | None = None, *, start: AuditStarter, settings: Settings
) -> list[int]:
    """Run or enqueue whatever is due now; returns the ids of the audits created."""
    outcomes = run_due(sessions, now, start=start, settings=settings)
    return [o.audit_id for o in outcomes if o.audit_id is not None]
