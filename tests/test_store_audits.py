from __future__ import annotations

from datetime import timedelta, timezone

import pytest
from factories import make_audit, make_dataset
from sqlalchemy.orm import Session, sessionmaker

from auditor.errors import Conflict, NotFound
from auditor.store import audits as audit_store
from auditor.store import datasets as dataset_store
from auditor.store.models import utcnow


def test_an_audit_runs_from_queued_to_succeeded(sessions: sessionmaker[Session]) -> None:
    with sessions() as s, s.begin():
        dataset = make_dataset(s)
        audit = make_audit(s, dataset, status="queued")
        assert audit.snapshot_id == dataset_store.latest_snapshot(s, dataset.id).id
    with sessions() as s, s.begin():
        audit_store.set_audit_status(s, audit.id, "running", task_id="task-1")
        assert audit_store.update_progress(s, audit.id, 0.4, "scoring") is False
    with sessions() as s, s.begin():
        audit_store.set_audit_status(s, audit.id, "succeeded", message="done")
    with sessions() as s:
        audit = audit_store.get_audit(s, audit.id)
        assert (audit.status, audit.progress, audit.task_id) == ("succeeded", 1.0, "task-1")
        assert audit.started_at.tzinfo == timezone.utc
        assert audit.started_at <= audit.heartbeat_at <= audit.finished_at <= utcnow()


def test_cancelling_a_queued_audit_cancels_it_at_once(sessions: sessionmaker[Session]) -> None:
    with sessions() as s, s.begin():
        audit = make_audit(s, make_dataset(s), status="queued")
        cancelled = audit_store.request_cancel(s, audit.id)
        assert cancelled.status == "cancelled" and cancelled.finished_at is not None
        assert audit_store.request_cancel(s, audit.id).status == "cancelled"  # idempotent
        with pytest.raises(Conflict, match="cannot become running"):
            audit_store.set_audit_status(s, audit.id, "running")


def test_cancelling_a_running_audit_reaches_its_progress_callback(
    sessions: sessionmaker[Session],
) -> None:
    with sessions() as s, s.begin():
        audit = make_audit(s, make_dataset(s), status="running")
    with sessions() as s, s.begin():
        assert audit_store.request_cancel(s, audit.id).status == "running"
    with sessions() as s, s.begin():
        assert audit_store.is_cancel_requested(s, audit.id)
        assert audit_store.update_progress(s, audit.id, 0.5) is True
        audit_store.set_audit_status(s, audit.id, "cancelled")
    with sessions() as s, s.begin():
        with pytest.raises(Conflict, match="cancelled; it cannot become succeeded"):
            audit_store.set_audit_status(s, audit.id, "succeeded")
        with pytest.raises(Conflict, match="nothing to cancel"):
            audit_store.request_cancel(s, make_audit(s, dataset_store.get_dataset(s, "ds")).id)


def test_requeueing_resets_progress_and_the_cancel_flag(sessions: sessionmaker[Session]) -> None:
    with sessions() as s, s.begin():
        audit = make_audit(s, make_dataset(s), status="running")
        audit_store.request_cancel(s, audit.id)
        audit_store.set_audit_status(s, audit.id, "failed", error="worker lost")
        audit = audit_store.set_audit_status(s, audit.id, "queued")
        assert (audit.progress, audit.error, audit.cancel_requested) == (0.0, None, False)


def test_audits_are_listed_newest_first_per_dataset(sessions: sessionmaker[Session]) -> None:
    with sessions() as s, s.begin():
        first, other = make_dataset(s, "a"), make_dataset(s, "b")
        older, newer = make_audit(s, first), make_audit(s, first, status="failed")
        make_audit(s, other)
        assert [a.id for a in audit_store.list_audits(s, "a")] == [newer.id, older.id]
        assert [a.id for a in audit_store.list_audits(s, first, status="failed")] == [newer.id]
        assert len(audit_store.list_audits(s)) == 3


def test_missing_rows_raise_not_found(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        with pytest.raises(NotFound, match="no audit with id 99"):
            audit_store.get_audit(s, 99)
        with pytest.raises(NotFound):
            audit_store.update_progress(s, 99, 0.5)
        with pytest.raises(NotFound, match="no dataset named 'x'"):
            dataset_store.get_dataset(s, "x")


def test_dataset_names_are_unique(sessions: sessionmaker[Session]) -> None:
    with sessions() as s, s.begin():
        make_dataset(s, "ds")
        with pytest.raises(Conflict, match="already exists"):
            dataset_store.create_dataset(s, "ds", "/elsewhere", "csv")


def test_running_audits_without_heartbeat_are_stale(sessions: sessionmaker[Session]) -> None:
    with sessions() as s, s.begin():
        audit = make_audit(s, make_dataset(s), status="running")
        assert audit_store.stale_audits(s, utcnow() - timedelta(minutes=5)) == []
        assert [a.id for a in audit_store.stale_audits(s, utcnow() + timedelta(seconds=1))] == [audit.id]
