"""Audits nobody runs any more are ended truthfully or run again, on SQLite and PostgreSQL: the
lease reconciler, the poison bound, cancel of a lost audit. (Real worker processes, a database
cut off under them and a broker that loses its messages: tests/test_faults.py.)"""

from __future__ import annotations

from datetime import timedelta

import pytest
from factories import make_audit, make_dataset
from sqlalchemy.orm import Session, sessionmaker

from auditor.config import get_settings
from auditor.reconcile import reconcile
from auditor.runner import execute_audit
from auditor.store import audits as audit_store
from auditor.store.models import Audit, utcnow


@pytest.fixture(autouse=True)
def short_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDITOR_LEASE_SECONDS", "30")


def running_audit(sessions: sessionmaker[Session], *, beat_age: float, task_id: str | None = None) -> int:
    """A running audit whose last heartbeat was `beat_age` seconds ago."""
    with sessions() as s, s.begin():
        audit = make_audit(s, make_dataset(s, f"d{utcnow().timestamp():.6f}".replace(".", "")), status="running")
        audit.heartbeat_at = utcnow() - timedelta(seconds=beat_age)
        audit.task_id = task_id
        return audit.id


def row(sessions: sessionmaker[Session], audit_id: int) -> Audit:
    with sessions() as s:
        return audit_store.get_audit(s, audit_id)


class Sent:
    """A requeue function that records what it sent (the broker is not part of these tests)."""

    def __init__(self) -> None:
        self.ids: list[int] = []

    def __call__(self, sessions: sessionmaker[Session], audit_id: int) -> None:
        self.ids.append(audit_id)


def test_an_in_process_audit_whose_process_died_is_failed_with_the_reason(sessions) -> None:
    lost = running_audit(sessions, beat_age=120)
    alive = running_audit(sessions, beat_age=5)
    done = reconcile(sessions, settings=get_settings())
    assert done.failed == [lost]
    audit = row(sessions, lost)
    assert audit.status == "failed" and "no heartbeat since" in audit.error and "process" in audit.error
    assert row(sessions, alive).status == "running"
    assert not reconcile(sessions, settings=get_settings())  # idempotent


def test_a_lost_worker_audit_is_queued_and_sent_again_unless_its_message_waits_in_a_queue(sessions) -> None:
    gone = running_audit(sessions, beat_age=120, task_id="t-gone")
    dead = running_audit(sessions, beat_age=120, task_id="t-dead")  # its dead worker's, unacked
    held = running_audit(sessions, beat_age=120, task_id="t-held")
    sent = Sent()
    done = reconcile(sessions, settings=get_settings(), requeue=sent, pending=lambda: {"t-held": "queued", "t-dead": "unacked"})
    assert done.requeued == [gone, dead] and sent.ids == [gone, dead]
    assert row(sessions, gone).status == row(sessions, dead).status == "queued"
    assert done.waiting == [held] and row(sessions, held).status == "running"
    assert "deliver it again" in row(sessions, held).message


def test_without_a_broker_a_lost_worker_audit_is_failed_not_left_running(sessions) -> None:
    lost = running_audit(sessions, beat_age=120, task_id="t1")
    assert reconcile(sessions, settings=get_settings()).failed == [lost]
    assert "worker" in row(sessions, lost).error


def test_a_queued_audit_whose_message_was_lost_is_sent_again_once_it_is_older_than_the_lease(sessions) -> None:
    with sessions() as s, s.begin():
        old = make_audit(s, make_dataset(s, "old"), status="queued")
        old.created_at, old.task_id = utcnow() - timedelta(seconds=120), "t-lost"
        new = make_audit(s, make_dataset(s, "new"), status="queued")
        new.task_id = "t-new"
        kept = make_audit(s, make_dataset(s, "kept"), status="queued")
        kept.created_at, kept.task_id = utcnow() - timedelta(seconds=120), "t-kept"
        old_id, new_id, kept_id = old.id, new.id, kept.id
    sent = Sent()
    done = reconcile(sessions, settings=get_settings(), requeue=sent, pending=lambda: {"t-kept": "unacked"})
    assert done.requeued == [old_id] and sent.ids == [old_id]
    assert new_id not in sent.ids and kept_id not in sent.ids
    # a broker that cannot be read: nothing is re-sent on a guess
    assert not reconcile(sessions, settings=get_settings(), requeue=sent, pending=lambda: None)


def test_a_lost_audit_that_used_up_its_deliveries_is_failed_as_poison(sessions) -> None:
    lost = running_audit(sessions, beat_age=120, task_id="t")
    with sessions() as s, s.begin():
        audit_store.get_audit(s, lost).deliveries = 3
    sent = Sent()
    assert reconcile(sessions, settings=get_settings(), requeue=sent, pending=lambda: {}).failed == [lost]
    assert sent.ids == [] and "gave up after 3 starts" in row(sessions, lost).error


def test_a_delivery_beyond_the_bound_fails_the_audit_instead_of_running_it(sessions, monkeypatch) -> None:
    monkeypatch.setenv("AUDITOR_MAX_DELIVERIES", "2")
    audit_id = running_audit(sessions, beat_age=1, task_id="t")  # started once, its worker died
    with sessions() as s, s.begin():
        audit_store.set_audit_status(s, audit_id, "running", message="fitting the curvature")  # died again
    assert row(sessions, audit_id).deliveries == 2
    outcome = execute_audit(sessions, audit_id, settings=get_settings(), task_id="t")
    assert outcome.status == "failed"
    assert "gave up after 2 starts" in outcome.error and "fitting the curvature" in outcome.error


def test_cancel_ends_a_lost_running_audit_at_once_and_a_live_one_at_its_next_report(sessions) -> None:
    lost = running_audit(sessions, beat_age=120, task_id="t")
    alive = running_audit(sessions, beat_age=1, task_id="t2")
    stale_before = utcnow() - timedelta(seconds=30)
    with sessions() as s, s.begin():
        assert audit_store.request_cancel(s, lost, stale_before=stale_before).status == "cancelled"
        a = audit_store.request_cancel(s, alive, stale_before=stale_before)
        assert a.status == "running" and a.cancel_requested
