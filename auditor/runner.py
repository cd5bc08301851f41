"""Run one audit end to end: the single code path behind `audit run` and the Celery worker.

load audit row -> mark running -> read the dataset (and test set) -> call the analysis with a
progress callback that writes to the audit row and notices cancel requests -> upsert findings
-> mark succeeded. Any `AuditorError` marks the audit failed with its one-line reason; findings
and reviews already stored stay. Running it twice for the same audit (a redelivered task after a
worker died) recomputes and upserts: no duplicates, nothing missing. A delivery that finds the
audit already finished returns at once; one that runs alongside another delivery (a short Redis
visibility timeout) stops as soon as the other one finishes, and never overwrites its result.
A worker being stopped (SIGTERM) puts the audit back to queued, since its message goes back to
the queue; Ctrl+C on an in-process run marks it cancelled.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from auditor.analyses.base import AnalysisInput
from auditor.analyses.registry import get_analysis, get_kind
from auditor.artifacts import ArtifactStore
from auditor.artifacts import root as fitted_root
from auditor.config import Settings, artifacts_dir
from auditor.data.keys import content_hash
from auditor.data.options import DataOptions
from auditor.errors import AuditorError, Cancelled, Conflict, DataError
from auditor.factories import listed_factories, local_models
from auditor.progress import Progress, Rates
from auditor.resolve import load_dataset_source
from auditor.store import audits as audit_store
from auditor.store import findings as finding_store
from auditor.store.models import FINISHED_STATUSES, Audit

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class RunOutcome:
    audit_id: int
    status: str
    findings: int = 0
    error: str | None = None


class Superseded(Cancelled):
    """The audit reached a final state elsewhere while this run was still computing (another
    delivery of the same task finished it, or failed it): stop without writing anything."""


class StoreProgress:
    """Progress callback writing to the audit row at most every `interval` seconds.

    Each write also returns the cancel flag, so a cancel reaches the analysis within `interval`
    seconds, as a `Cancelled` raised from inside its loop. A run whose audit was finished by
    another delivery meanwhile gets `Superseded` instead, before it overwrites the progress.
    """

    def __init__(self, sessions: sessionmaker[Session], audit_id: int, echo: Progress | None = None, interval: float = 0.5) -> None:
        self.sessions, self.audit_id, self.echo, self.interval = sessions, audit_id, echo, interval
        self._last = 0.0
        self.rates = Rates()
        self._phase_written: dict[str, float] | None = None

    def __call__(self, fraction: float, message: str) -> None:
        message = self.rates.update(fraction, message)
        if self.echo is not None:
            self.echo(fraction, message)
        now = time.monotonic()
        if now - self._last < self.interval and fraction < 1.0:
            return
        self._last = now
        try:
            with self.sessions() as s, s.begin():
                status = audit_store.audit_status(s, self.audit_id)
                if status in FINISHED_STATUSES:
                    raise Superseded(f"audit {self.audit_id} already {status} in another run")
                phase = self.rates.phase_doc()  # written when it changes: the ETA's base
                changed = phase if phase != self._phase_written else None
                cancel = audit_store.update_progress(s, self.audit_id, fraction, message, phase=changed)
            self._phase_written = phase
        except DATABASE_UNREACHABLE:  # keep computing; the next report (or the end) tries again
            log.warning("audit %s: could not record progress, the database is unreachable", self.audit_id)
            return
        if cancel:
            raise Cancelled(f"audit {self.audit_id} was cancelled")


# What a database that is down, restarting or unreachable raises (psycopg and sqlite3 alike).
DATABASE_UNREACHABLE = (OperationalError, InterfaceError)
STORE_RETRY_S = 120.0  # how long the final write of an audit keeps trying


def with_database_retries(fn: Callable[[], T], what: str, patience: float = STORE_RETRY_S) -> T:
    """`fn()`, tried again with back-off (0.5 s doubling to 10 s) while the database is
    unreachable, for up to `patience` seconds; then the error propagates."""
    deadline, pause = time.monotonic() + patience, 0.5
    while True:
        try:
            return fn()
        except DATABASE_UNREACHABLE:
            if time.monotonic() + pause > deadline:
                raise
            log.warning("%s: the database is unreachable; trying again in %.1f s", what, pause)
            time.sleep(pause)
            pause = min(pause * 2, 10.0)


class Heartbeat:
    """While an audit computes, stamp its `heartbeat_at` every lease / 4 seconds from a thread.

    Progress reports also stamp it, but an analysis can go minutes between reports (fitting the
    curvature of a large model); the lease reconciler (`auditor.reconcile`) must not take such an
    audit for lost. A missed beat (the database briefly down) is only logged."""

    def __init__(self, sessions: sessionmaker[Session], audit_id: int, lease_seconds: float) -> None:
        self.sessions, self.audit_id = sessions, audit_id
        self.interval = max(lease_seconds / 4, 0.25)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{audit_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with self.sessions() as s, s.begin():
                    audit_store.touch_heartbeat(s, self.audit_id)
            except Exception:  # noqa: BLE001 - a beat is best effort
                log.warning("audit %s: heartbeat not recorded", self.audit_id, exc_info=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def poison_reason(audit: Audit) -> str:
    """Why an audit that used up its deliveries is failed (the runner and the reconciler)."""
    return (
        f"gave up after {audit.deliveries} starts: each one ended without a result, so the "
        f"process running it died (last seen: {audit.message or 'starting'})"
    )


def load_inputs(audit: Audit, data: DataOptions) -> AnalysisInput:
    """Read the audit's data set (checked against its snapshot) and test set, as `data` says."""
    train = load_dataset_source(audit.dataset, data=data)
    digest = content_hash(train.keys)
    if digest != audit.snapshot.content_hash:
        raise DataError(
            f"dataset {audit.dataset.name!r} changed on disk since snapshot {audit.snapshot_id}; "
            "run `auditor dataset scan` and enqueue a new audit"
        )
    test = None
    if audit.test_dataset is not None:
        test = load_dataset_source(audit.test_dataset, data=data)
    elif get_kind(audit.kind).needs_test:
        raise DataError(f"{audit.kind} audits need a test set: pass --test DATASET")
    return AnalysisInput(train=train, test=test, params=dict(audit.params or {}))


def execute_audit(
    sessions: sessionmaker[Session],
    audit_id: int,
    *,
    settings: Settings,
    task_id: str | None = None,
    echo: Progress | None = None,
    local: bool = False,
) -> RunOutcome:
    """Run audit `audit_id` to a final state and return it. Never raises for a user error.

    `settings` (read once by the entry point) give the lease, the poison bound, where artifacts
    go, how data sets are read and which model factories are registered.

    `task_id` is the Celery task id when a worker runs it (None in process): it decides what an
    interruption means (see the module docstring). `local` True: started here by the person who
    typed the command (`audit run`), so an explicit MODULE:FACTORY model may be imported
    (`auditor.factories`); a worker builds registered factories only.
    """
    with sessions() as s, s.begin():
        audit = audit_store.get_audit(s, audit_id, for_update=True)
        if audit.status == "succeeded":  # a redelivered task: the first delivery finished it
            return RunOutcome(audit_id, "succeeded", findings=finding_store.count_findings(s, audit_id))
        if audit.status == "cancelled":
            return RunOutcome(audit_id, "cancelled")
        if audit.cancel_requested:
            if audit.status == "failed":  # it failed before it saw the cancel: leave the reason
                return RunOutcome(audit_id, "failed", error=audit.error)
            audit_store.set_audit_status(s, audit_id, "cancelled", message="cancelled before it started")
            return RunOutcome(audit_id, "cancelled")
        limit = settings.max_deliveries
        if audit.status == "running" and audit.deliveries >= limit:
            # A poison audit: every earlier start ended without a result or a reason, which is
            # what a worker process that dies (os.abort, out of memory, a segfault) leaves.
            reason = poison_reason(audit)
            audit_store.set_audit_status(s, audit_id, "failed", error=reason, message="failed")
            return RunOutcome(audit_id, "failed", error=reason)
        if audit.status == "failed":
            audit_store.set_audit_status(s, audit_id, "queued")
        audit_store.set_audit_status(s, audit_id, "running", message="starting", task_id=task_id)
        kind = audit.kind

    def compute() -> RunOutcome:
        with sessions() as s:
            audit = audit_store.get_audit(s, audit_id)
            inp, dataset_id = load_inputs(audit, DataOptions.from_settings(settings)), audit.dataset_id
        out_dir = Path(artifacts_dir(settings)) / f"audit-{audit_id}"
        out_dir.mkdir(parents=True, exist_ok=True)
        inp.artifacts_dir = out_dir
        inp.cache = ArtifactStore(sessions, dataset_id, folder=fitted_root(settings))
        inp.progress = StoreProgress(sessions, audit_id, echo)
        result = get_analysis(kind)(inp)

        def store() -> int:
            with sessions() as s, s.begin():
                # Lock the row first: a cancel or another delivery that got here first wins, and
                # this run's findings are then rolled back with the failed status change.
                audit = audit_store.get_audit(s, audit_id, for_update=True)
                if audit.status in FINISHED_STATUSES:
                    raise Superseded(f"audit {audit_id} already {audit.status} in another run")
                if audit.cancel_requested:
                    raise Cancelled(f"audit {audit_id} was cancelled")
                n = finding_store.upsert_findings(s, audit_id, result.findings)
                audit_store.set_audit_summary(s, audit_id, result.summary)
                audit_store.set_audit_status(s, audit_id, "succeeded", message=f"{n} findings")
            return n

        # hours of work are not thrown away for a database that is briefly unreachable
        n = with_database_retries(store, f"storing the results of audit {audit_id}")
        return RunOutcome(audit_id, "succeeded", findings=n)

    lease = settings.lease_seconds
    with listed_factories(settings.model_factories):
        if local:
            with local_models():
                return guarded(sessions, audit_id, compute, in_worker=False, lease_seconds=lease)
        return guarded(sessions, audit_id, compute, in_worker=task_id is not None, lease_seconds=lease)


def guarded(
    sessions: sessionmaker[Session],
    audit_id: int,
    compute: Callable[[], RunOutcome],
    *,
    in_worker: bool,
    lease_seconds: float,
    part: str = "",
    requeue: bool = True,
) -> RunOutcome:
    """The one audit lifecycle around a computation, for whole audits and shards alike.

    A cancel (or another delivery finishing first) ends it cancelled; an `AuditorError` marks the
    audit failed with its one-line reason; any other exception is a bug, recorded on the audit
    as an internal error with the traceback in the log; an interruption (Ctrl+C, a stopping
    worker) leaves a truthful status and propagates. `part` ("shard 2/4") prefixes reasons;
    `requeue` False keeps an interrupted worker's audit running (a shard: its own message comes
    back and the other shards go on) instead of queued. The heartbeat beats every
    `lease_seconds` / 4.
    """
    prefix = f"{part}: " if part else ""
    try:
        with Heartbeat(sessions, audit_id, lease_seconds):
            return compute()
    except DATABASE_UNREACHABLE:
        # Not the audit's fault: leave it for the next delivery (a worker's task retries, see
        # workers/tasks.py) or for the lease reconciler, instead of failing it for good.
        log.warning("audit %s: the database is unreachable; leaving the audit to be retried", audit_id)
        raise
    except Cancelled as exc:
        return finish(sessions, audit_id, "cancelled", str(exc))
    except AuditorError as exc:
        return finish(sessions, audit_id, "failed", f"{prefix}{exc}")
    except Exception as exc:  # a bug: record it on the audit, keep the traceback in the log
        interrupt = _interruption_inside(exc)
        if interrupt is not None:
            # A stop signal landed while Python was wrapping exceptions (an import running a
            # dataclass `__set_name__` turns it into a RuntimeError): still an interruption,
            # not a failure of the audit.
            _interrupted(sessions, audit_id, in_worker=in_worker, requeue=requeue)
            raise interrupt from exc
        where = f" in {part}" if part else ""
        log.error("audit %s%s crashed:\n%s", audit_id, where, traceback.format_exc())
        return finish(sessions, audit_id, "failed", f"internal error{where}: {type(exc).__name__}: {exc}")
    except BaseException:  # interrupted: Ctrl+C in process, or the worker is being stopped
        _interrupted(sessions, audit_id, in_worker=in_worker, requeue=requeue)
        raise


def _interruption_inside(exc: BaseException) -> BaseException | None:
    """The KeyboardInterrupt / SystemExit (Celery's WorkerTerminate) that caused `exc`, if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if not isinstance(current, Exception):
            return current
        current = current.__cause__ or current.__context__
    return None


def finish(sessions: sessionmaker[Session], audit_id: int, status: str, reason: str) -> RunOutcome:
    """Move the audit to a final `status`; when another final state won the race, report that one."""
    with sessions() as s, s.begin():
        try:
            if status == "failed":
                audit_store.set_audit_status(s, audit_id, status, error=reason, message="failed")
            else:
                audit_store.set_audit_status(s, audit_id, status, message=reason)
        except Conflict:  # e.g. cancelled while we were failing: the first final state wins
            audit = audit_store.get_audit(s, audit_id)
            return RunOutcome(audit_id, audit.status, error=audit.error)
    return RunOutcome(audit_id, status, error=reason if status == "failed" else None)


def _interrupted(sessions: sessionmaker[Session], audit_id: int, *, in_worker: bool, requeue: bool) -> None:
    """Leave a truthful status behind an interrupted run, best effort (we are on our way out).

    In a worker the task's message goes back to the queue (Celery's cold shutdown restores
    unacknowledged messages), so the audit is queued again (`requeue`) or stays running (a
    shard), unless a cancel was asked for. In process nobody will resume it, so it is cancelled.
    """
    try:
        with sessions() as s, s.begin():
            audit = audit_store.get_audit(s, audit_id, for_update=True)
            if audit.status != "running":
                return
            if in_worker and not audit.cancel_requested:
                if requeue:
                    audit_store.set_audit_status(s, audit_id, "queued")
                    audit.message = "worker stopped; the audit goes back to the queue"
                    # a clean stop is not a crash: it does not count towards the poison bound
                    audit.deliveries = max((audit.deliveries or 0) - 1, 0)
            else:
                audit_store.set_audit_status(s, audit_id, "cancelled", message="interrupted")
    except Exception:  # the database may be what interrupted us; the next delivery copes
        log.warning("could not record the interruption of audit %s", audit_id, exc_info=True)


# What to do with a newly created audit: (sessions, audit_id) -> (action, audit status afterwards).
# Schedules take one; the embedded default is `audits.run_in_process`, a broker's is in `workers`.
AuditStarter = Callable[[sessionmaker[Session], int], tuple[str, str]]

