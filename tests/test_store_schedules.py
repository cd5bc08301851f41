from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from factories import make_audit, make_dataset
from sqlalchemy.orm import Session, sessionmaker

from auditor import recurrence
from auditor.errors import AuditorError, NotFound
from auditor.store import datasets as dataset_store
from auditor.store import schedules as schedule_store

NOON = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("15m", 900), ("6h", 21600), ("1d", 86400), ("1h30m", 5400)]
)
def test_intervals_parse_to_seconds(text: str, seconds: int) -> None:
    assert recurrence.parse_interval(text) == seconds


@pytest.mark.parametrize("text", ["", "6", "h", "6x", "0h", "1h 3"])
def test_unreadable_intervals_are_refused(text: str) -> None:
    with pytest.raises(AuditorError):
        recurrence.parse_interval(text)


def test_schedules_fall_due_and_move_on_when_run(sessions: sessionmaker[Session]) -> None:
    with sessions() as s, s.begin():
        dataset = make_dataset(s)
        every = schedule_store.add_schedule(s, dataset, "label-check", interval_seconds=3600, now=NOON)
        nightly = schedule_store.add_schedule(s, dataset, "explain", cron="0 3 * * *", now=NOON)
        assert nightly.next_run_at == datetime(2026, 3, 2, 3, 0, tzinfo=timezone.utc)
    with sessions() as s, s.begin():
        assert schedule_store.due_schedules(s, NOON + timedelta(minutes=59)) == []
        due = schedule_store.due_schedules(s, NOON + timedelta(hours=1), lock=True)
        assert [d.id for d in due] == [every.id]
        schedule_store.mark_schedule_ran(s, due[0], NOON + timedelta(hours=1))
        assert due[0].next_run_at == NOON + timedelta(hours=2)
    with sessions() as s:
        due = schedule_store.due_schedules(s, NOON + timedelta(days=1))
        assert [d.id for d in due] == [every.id, nightly.id]


def test_paused_schedules_are_never_due_and_resume_from_now(
    sessions: sessionmaker[Session],
) -> None:
    with sessions() as s, s.begin():
        schedule = schedule_store.add_schedule(
            s, make_dataset(s), "label-check", interval_seconds=60, now=NOON
        )
        schedule_store.set_schedule_enabled(s, schedule.id, False)
        assert schedule_store.due_schedules(s, NOON + timedelta(days=3)) == []
        later = NOON + timedelta(days=3)
        resumed = schedule_store.set_schedule_enabled(s, schedule.id, True, now=later)
        assert resumed.next_run_at == later + timedelta(seconds=60)
        schedule_store.remove_schedule(s, schedule.id)
        assert schedule_store.list_schedules(s) == []
        with pytest.raises(NotFound):
            schedule_store.remove_schedule(s, schedule.id)


def test_a_schedule_needs_exactly_one_valid_timing(sessions: sessionmaker[Session]) -> None:
    with sessions() as s, s.begin():
        dataset = make_dataset(s)
        with pytest.raises(AuditorError, match="exactly one"):
            schedule_store.add_schedule(s, dataset, "label-check")
        with pytest.raises(AuditorError, match="exactly one"):
            schedule_store.add_schedule(s, dataset, "label-check", interval_seconds=60, cron="* * * * *")
        with pytest.raises(AuditorError, match="invalid cron"):
            schedule_store.add_schedule(s, dataset, "label-check", cron="every day")


def test_last_audited_hash_lets_unchanged_datasets_be_skipped(
    sessions: sessionmaker[Session],
) -> None:
    with sessions() as s, s.begin():
        dataset = make_dataset(s)
        schedule = schedule_store.add_schedule(s, dataset, "label-check", interval_seconds=60)
        assert schedule_store.last_audited_hash(s, schedule.id) is None
        audit = make_audit(s, dataset)
        audit.schedule_id = schedule.id
        s.flush()
        assert (
            schedule_store.last_audited_hash(s, schedule.id)
            == dataset_store.latest_snapshot(s, dataset.id).content_hash
        )
