"""Decisions are an append-only history; the standing decision is derived from it; undo is an
event too. Findings can be filtered by class and decision, and paged. On SQLite and PostgreSQL."""

from __future__ import annotations

import random

import pytest
from factories import make_audit, make_dataset, make_records
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from auditor.errors import AuditorError, Conflict
from auditor.store import findings as finding_store
from auditor.store import reviews as review_store
from auditor.store.models import Review, ReviewEvent


def _setup(sessions: sessionmaker[Session], n: int = 12) -> tuple[int, int, list[int]]:
    with sessions() as s, s.begin():
        dataset = make_dataset(s, n=n)
        audit = make_audit(s, dataset)
        finding_store.upsert_findings(s, audit.id, make_records(n))
        ids = [f.id for f in finding_store.list_findings(s, audit.id)]
        return dataset.id, audit.id, ids


def test_every_decision_and_undo_is_kept_and_undo_brings_back_the_one_before(sessions) -> None:
    dataset_id, audit_id, ids = _setup(sessions)
    f = ids[0]
    with sessions() as s, s.begin():
        review_store.decide(s, f, "confirmed", reviewer="ana", user_id=None)
    with sessions() as s, s.begin():
        review_store.decide(s, f, "relabelled", 2, reviewer="bo", expected_version=1, note="a two")
    with sessions() as s, s.begin():
        standing = review_store.undo(s, f, reviewer="bo", expected_version=2)
        assert (standing.decision, standing.reviewer) == ("confirmed", "ana")
    with sessions() as s, s.begin():
        assert review_store.undo(s, f, reviewer="ana") is None  # back to no decision
        assert review_store.settled_keys(s, dataset_id) == set()
    with sessions() as s:
        history = review_store.review_history(s, dataset_id, "k000000")
        assert [(e.decision, e.reviewer, e.new_label) for e in history] == [
            ("confirmed", "ana", None), ("relabelled", "bo", 2), ("undone", "bo", None), ("undone", "ana", None),
        ]
        assert history[2].undoes_id == history[1].id and history[3].undoes_id == history[0].id
        assert {e.audit_id for e in history} == {audit_id} and {e.finding_id for e in history} == {f}
    with sessions() as s, s.begin(), pytest.raises(Conflict, match="no decision to undo"):
        review_store.undo(s, f, reviewer="ana")
    with sessions() as s:  # the refused undo stored nothing
        assert len(review_store.review_history(s, dataset_id, "k000000")) == 4


def test_a_stale_undo_or_decision_is_refused_and_stores_no_event(sessions) -> None:
    dataset_id, _, ids = _setup(sessions)
    with sessions() as s, s.begin():
        review_store.decide(s, ids[1], "dismissed", reviewer="ana")
    with sessions() as s, s.begin():
        review_store.decide(s, ids[1], "confirmed", reviewer="bo", expected_version=1)
    with sessions() as s, s.begin(), pytest.raises(Conflict, match="since"):
        review_store.undo(s, ids[1], reviewer="ana", expected_version=1)  # ana saw version 1; it is 2 now
    with sessions() as s, s.begin(), pytest.raises(Conflict, match="already decided"):
        review_store.decide(s, ids[1], "dismissed", reviewer="ana", expected_version=1)
    with sessions() as s, s.begin(), pytest.raises(AuditorError, match="new label"):
        review_store.decide(s, ids[2], "relabelled", None, reviewer="ana")
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(ReviewEvent)) == 2


def test_the_standing_decisions_are_exactly_what_the_history_derives(sessions) -> None:
    """A random walk of decisions, changes and undos by several reviewers: after it, the reviews
    table equals `standing_decision` over each example's events."""
    dataset_id, _, ids = _setup(sessions, n=6)
    rng = random.Random(7)
    for _ in range(60):
        f = rng.choice(ids)
        with sessions() as s, s.begin():
            finding = finding_store.get_finding(s, f)
            current = review_store.get_review(s, dataset_id, finding.example_key)
            version = current.version if current else None
            action = rng.choice(["confirmed", "dismissed", "relabelled", "undo", "undo"])
            who = rng.choice(["ana", "bo", "cy"])
            try:
                if action == "undo":
                    review_store.undo(s, f, reviewer=who, expected_version=version)
                else:
                    label = rng.randrange(3) if action == "relabelled" else None
                    review_store.decide(s, f, action, label, reviewer=who, expected_version=version)
            except Conflict:
                assert action == "undo" and current is None
    with sessions() as s:
        for f in ids:
            key = finding_store.get_finding(s, f).example_key
            derived = review_store.standing_decision(review_store.review_history(s, dataset_id, key))
            review = review_store.get_review(s, dataset_id, key)
            if derived is None:
                assert review is None
            else:
                assert (review.decision, review.new_label, review.reviewer) == (
                    derived.decision, derived.new_label, derived.reviewer,
                )


def test_findings_filter_by_class_and_decision_and_page(sessions) -> None:
    _, audit_id, ids = _setup(sessions, n=12)  # labels are i % 3
    with sessions() as s, s.begin():
        review_store.decide(s, ids[0], "confirmed", reviewer="ana")
        review_store.decide(s, ids[3], "relabelled", 1, reviewer="ana")
        review_store.decide(s, ids[4], "dismissed", reviewer="ana")
    with sessions() as s:
        class0 = finding_store.query_findings(s, audit_id, label=0, limit=None)
        assert [f.example_index for f, _ in class0.rows] == [0, 3, 6, 9] and class0.total == 4
        undecided0 = finding_store.query_findings(s, audit_id, label=0, decision="undecided")
        assert [f.example_index for f, _ in undecided0.rows] == [6, 9]
        relabelled = finding_store.query_findings(s, audit_id, decision="relabelled")
        assert [(f.example_index, r.new_label) for f, r in relabelled.rows] == [(3, 1)]
        page2 = finding_store.query_findings(s, audit_id, offset=5, limit=5)
        assert [f.example_index for f, _ in page2.rows] == [5, 6, 7, 8, 9] and page2.total == 12
        lowest = finding_store.query_findings(s, audit_id, order="score", limit=2)
        assert [f.example_index for f, _ in lowest.rows] == [11, 10]
        with pytest.raises(AuditorError, match="decision filter"):
            finding_store.query_findings(s, audit_id, decision="maybe")


def test_upgrading_keeps_decisions_made_before_the_history_existed(tmp_path) -> None:
    """Migration 0004 turns each standing decision into its example's first event."""
    from sqlalchemy import create_engine, text

    from auditor.store.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0003")
    engine = create_engine(url)
    with engine.begin() as c:
        c.execute(text("INSERT INTO datasets (id, name, source_path, format, options, created_at) VALUES (1, 'd', '/x', 'npz', '{}', '2026-01-01')"))
        c.execute(text("INSERT INTO snapshots (id, dataset_id, content_hash, n, created_at) VALUES (1, 1, 'h', 1, '2026-01-01')"))
        c.execute(text("INSERT INTO audits (id, kind, dataset_id, snapshot_id, params, status, progress, cancel_requested, created_at, deliveries) VALUES (1, 'label-check', 1, 1, '{}', 'succeeded', 1, 0, '2026-01-01', 0)"))
        c.execute(text("INSERT INTO findings (id, audit_id, example_index, example_key, kind, score, rank, label, payload) VALUES (1, 1, 0, 'k', 'label', 1.0, 1, 0, '{}')"))
        c.execute(text("INSERT INTO reviews (id, finding_id, dataset_id, example_key, decision, new_label, reviewer, note, decided_at, version) VALUES (1, 1, 1, 'k', 'relabelled', 2, 'ana', 'old', '2026-01-02', 3)"))
    upgrade(url)
    with engine.connect() as c:
        rows = c.execute(text("SELECT decision, new_label, reviewer, note, finding_id, audit_id FROM review_events")).all()
    assert rows == [("relabelled", 2, "ana", "old", 1, 1)]
    with Session(engine) as s:
        assert s.scalar(select(Review)).version == 3
