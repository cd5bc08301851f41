"""Run one audit end to end: the single code path behind `audit run` and the Celery worker.

load audit row -> mark running -> read the dataset (and test set) -> call the analysis with a
progress callback that writes to the audit row and notices cancel requests -> upsert findings
-> mark succeeded. Any `AuditorError` marks the audit failed with its one-line reason; findings
and reviews already stored stay. Running it twice for the same audit (a redelivered task after a
worker died) recomputes and upserts: no duplicates, nothing missing.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from auditor.analyses.base import AnalysisInput, Progress
from auditor.analyses.registry import NEEDS_TEST, get_analysis
from auditor.config import artifacts_dir, get_settings
from auditor.data.keys import content_hash
from auditor.errors import AuditorError, Cancelled, Conflict, DataError
from auditor.resolve import load_dataset_source
from auditor.store import repo

log = logging.getLogger(__name__)


@dataclass
class RunOutcome:
    audit_id: int
    status: str
    findings: int = 0
    error: str | None = None


class StoreProgress:
    """Progress callback writing to the audit row at most every `interval` seconds.

    Each write also returns the cancel flag, so a cancel reaches the analysis within `interval`
    seconds, as a `Cancelled` raised from inside its loop.
    """

    def __init__(self, sessions: sessionmaker[Session], audit_id: int, echo: Progress | None = None, interval: float = 0.5) -> None:
        self.sessions, self.audit_id, self.echo, self.interval = sessions, audit_id, echo, interval
        self._last = 0.0

    def __call__(self, fraction: float, message: str) -> None:
        if self.echo is not None:
            self.echo(fraction, message)
        now = time.monotonic()
        if now - self._last < self.interval and fraction < 1.0:
            return
        self._last = now
        with self.sessions() as s, s.begin():
            cancel = repo.update_progress(s, self.audit_id, fraction, message)
        if cancel:
            raise Cancelled(f"audit {self.audit_id} was cancelled")


def _load_inputs(s: Session, audit) -> AnalysisInput:
    train = load_dataset_source(audit.dataset)
    digest = content_hash(train.keys)
    if digest != audit.snapshot.content_hash:
        raise DataError(
            f"dataset {audit.dataset.name!r} changed on disk since snapshot {audit.snapshot_id}; "
            "run `auditor dataset scan` and enqueue a new audit"
        )
    test = None
    if audit.test_dataset is not None:
        test = load_dataset_source(audit.test_dataset)
    elif audit.kind in NEEDS_TEST:
        raise DataError(f"a {audit.kind} audit needs a test set: pass --test DATASET")
    return AnalysisInput(train=train, test=test, params=dict(audit.params or {}))


def execute_audit(
    sessions: sessionmaker[Session],
    audit_id: int,
    *,
    task_id: str | None = None,
    echo: Progress | None = None,
) -> RunOutcome:
    """Run audit `audit_id` to a final state and return it. Never raises for a user error."""
    with sessions() as s, s.begin():
        audit = repo.get_audit(s, audit_id)
        if audit.status in ("succeeded", "cancelled") or audit.cancel_requested:
            if audit.status not in ("succeeded", "cancelled"):
                repo.set_audit_status(s, audit_id, "cancelled", message="cancelled before it started")
            return RunOutcome(audit_id, "cancelled" if audit.status != "succeeded" else "succeeded")
        if audit.status == "failed":
            repo.set_audit_status(s, audit_id, "queued")
        repo.set_audit_status(s, audit_id, "running", message="starting", task_id=task_id)
        kind = audit.kind
    progress = StoreProgress(sessions, audit_id, echo)
    try:
        with sessions() as s:
            audit = repo.get_audit(s, audit_id)
            inp = _load_inputs(s, audit)
        out_dir = Path(artifacts_dir(get_settings())) / f"audit-{audit_id}"
        out_dir.mkdir(parents=True, exist_ok=True)
        inp.artifacts_dir = out_dir
        inp.progress = progress
        result = get_analysis(kind)(inp)
        with sessions() as s, s.begin():
            n = repo.upsert_findings(s, audit_id, result.findings)
            repo.set_audit_summary(s, audit_id, result.summary)
            repo.set_audit_status(s, audit_id, "succeeded", message=f"{n} findings")
        return RunOutcome(audit_id, "succeeded", findings=n)
    except Cancelled as exc:
        return _finish(sessions, audit_id, "cancelled", str(exc))
    except AuditorError as exc:
        return _finish(sessions, audit_id, "failed", str(exc))
    except Exception as exc:  # a bug: record it on the audit, keep the traceback in the log
        log.error("audit %s crashed:\n%s", audit_id, traceback.format_exc())
        return _finish(sessions, audit_id, "failed", f"internal error: {type(exc).__name__}: {exc}")


def _finish(sessions: sessionmaker[Session], audit_id: int, status: str, reason: str) -> RunOutcome:
    with sessions() as s, s.begin():
        try:
            if status == "failed":
                repo.set_audit_status(s, audit_id, status, error=reason, message="failed")
            else:
                repo.set_audit_status(s, audit_id, status, message=reason)
        except Conflict:  # e.g. cancelled while we were failing: the first final state wins
            pass
    return RunOutcome(audit_id, status, error=reason if status == "failed" else None)
