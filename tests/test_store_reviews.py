from __future__ import annotations

import threading

import pytest
from factories import make_audit, make_dataset, make_records
from sqlalchemy.orm import Session, sessionmaker

from auditor.errors import AuditorError, Conflict
from auditor.store import datasets as dataset_store
from auditor.store import findings as finding_store
from auditor.store import reviews as review_store
from auditor.store.models import Finding, Review


def _audit_with_findings(sessions: sessionmaker[Session], n: int = 5) -> tuple[int, int]:
    with sessions() as s, s.begin():
        dataset = make_dataset(s)
        audit = make_audit(s, dataset)
        finding_store.upsert_findings(s, audit.id, make_records(n))
        return dataset.id, audit.id


def _finding_id(sessions: sessionmaker[Session], audit_id: int, rank: int = 0) -> int:
    with sessions() as s:
        return finding_store.list_findings(s, audit_id)[rank].id


def test_a_second_first_decision_conflicts(sessions: sessionmaker[Session]) -> None:
    dataset_id, audit_id = _audit_with_findings(sessions)
    finding_id = _finding_id(sessions, audit_id)
    with sessions() as s, s.begin():
        review = review_store.decide(s, finding_id, "relabelled", 2, reviewer="ana", note="a 7")
    assert review.version == 1
    with sessions() as s, s.begin(), pytest.raises(Conflict, match="relabelled by ana"):
        review_store.decide(s, finding_id, "dismissed", reviewer="bo")
    with sessions() as s:
        assert review_store.settled_keys(s, dataset_id) == {"k000000"}


def test_changing_a_decision_needs_the_version_that_was_seen(
    sessions: sessionmaker[Session],
) -> None:
    _, audit_id = _audit_with_findings(sessions)
    finding_id = _finding_id(sessions, audit_id)
    with sessions() as s, s.begin():
        review_store.decide(s, finding_id, "confirmed", reviewer="ana")
    with sessions() as s, s.begin():
        review = review_store.decide(s, finding_id, "dismissed", reviewer="bo", expected_version=1)
    assert (review.decision, review.reviewer, review.version) == ("dismissed", "bo", 2)
    with sessions() as s, s.begin(), pytest.raises(Conflict, match="version 2"):
        review_store.decide(s, finding_id, "confirmed", reviewer="cy", expected_version=1)


def test_an_update_racing_another_reviewer_conflicts(sessions: sessionmaker[Session]) -> None:
    """Both reviewers passed the version check at version 1; the one who writes second loses."""
    _, audit_id = _audit_with_findings(sessions)
    finding_id = _finding_id(sessions, audit_id)
    with sessions() as s, s.begin():
        review_store.decide(s, finding_id, "confirmed", reviewer="ana")
    with sessions() as slow:
        with slow.begin():
            seen = slow.query(Review).one()  # stays loaded (and referenced) at version 1
            assert seen.version == 1
        with sessions() as s, s.begin():
            review_store.decide(s, finding_id, "dismissed", reviewer="bo", expected_version=1)
        with slow.begin(), pytest.raises(Conflict, match="changed by another reviewer"):
            review_store.decide(slow, finding_id, "relabelled", 1, reviewer="cy", expected_version=1)
    with sessions() as s:
        assert s.query(Review).one().reviewer == "bo"


@pytest.mark.services
def test_concurrent_first_decisions_on_postgres_one_conflicts(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two reviewers both see no decision, both insert: the unique key lets one win."""
    from auditor.store.db import session_factory
    from auditor.store.migrate import upgrade

    upgrade(pg_url)
    sessions = session_factory(pg_url)
    _, audit_id = _audit_with_findings(sessions)
    finding_id = _finding_id(sessions, audit_id)

    both_looked = threading.Barrier(2, timeout=10)
    real_get_review = review_store.get_review

    def get_review_then_wait(session: Session, dataset_id: int, key: str) -> Review | None:
        review = real_get_review(session, dataset_id, key)
        both_looked.wait()
        return review

    monkeypatch.setattr(review_store, "get_review", get_review_then_wait)
    outcomes: dict[str, str] = {}

    def reviewer(name: str, decision: str) -> None:
        try:
            with sessions() as s, s.begin():
                review_store.decide(s, finding_id, decision, reviewer=name)
            outcomes[name] = "ok"
        except Conflict:
            outcomes[name] = "conflict"

    threads = [
        threading.Thread(target=reviewer, args=("ana", "confirmed")),
        threading.Thread(target=reviewer, args=("bo", "dismissed")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes.values()) == ["conflict", "ok"]
    winner = next(name for name, outcome in outcomes.items() if outcome == "ok")
    with sessions() as s:
        assert s.query(Review).one().reviewer == winner
    sessions.kw["bind"].dispose()


@pytest.mark.parametrize(
    ("decision", "new_label", "message"),
    [
        ("maybe", None, "decision must be one of"),
        ("relabelled", None, "needs the new label"),
        ("relabelled", -1, "needs the new label"),
        ("confirmed", 3, "takes no new label"),
    ],
)
def test_malformed_decisions_are_refused(
    decision: str, new_label: int | None, message: str
) -> None:
    with pytest.raises(AuditorError, match=message):
        review_store.decide(None, 1, decision, new_label)  # type: ignore[arg-type]


def test_next_unsettled_finding_skips_decided_examples_by_rank(
    sessions: sessionmaker[Session],
) -> None:
    dataset_id, audit_id = _audit_with_findings(sessions)
    first, third = _finding_id(sessions, audit_id, 0), _finding_id(sessions, audit_id, 2)
    with sessions() as s, s.begin():
        assert review_store.next_unsettled_finding(s, audit_id=audit_id).rank == 0
        review_store.decide(s, first, "confirmed", reviewer="ana")
        review_store.decide(s, third, "dismissed", reviewer="ana")
    with sessions() as s, s.begin():
        assert review_store.next_unsettled_finding(s, audit_id=audit_id).rank == 1
        # A later audit of the same dataset finds the same examples already settled.
        dataset = dataset_store.get_dataset_by_id(s, dataset_id)
        later = make_audit(s, dataset)
        finding_store.upsert_findings(s, later.id, make_records(5)[::-1])
    with sessions() as s, s.begin():
        found = review_store.next_unsettled_finding(s, dataset_id=dataset_id)
        assert (found.audit_id, found.rank) == (later.id, 1)
        for finding in finding_store.list_findings(s, later.id):
            if finding.example_key not in review_store.settled_keys(s, dataset_id):
                review_store.decide(s, finding.id, "confirmed", reviewer="bo")
    with sessions() as s:
        assert review_store.next_unsettled_finding(s, audit_id=later.id) is None
        assert review_store.next_unsettled_finding(s, audit_id=audit_id) is None


def test_reviews_survive_their_finding_being_deleted(sessions: sessionmaker[Session]) -> None:
    dataset_id, audit_id = _audit_with_findings(sessions)
    finding_id = _finding_id(sessions, audit_id)
    with sessions() as s, s.begin():
        review_store.decide(s, finding_id, "confirmed", reviewer="ana")
    with sessions() as s, s.begin():
        s.delete(s.get(Finding, finding_id))
    with sessions() as s:
        (review,) = review_store.list_reviews(s, dataset_id)
        assert review.finding_id is None and review.example_key == "k000000"
