"""Review decisions: an append-only event history with the standing decision derived from it.

Each function takes the caller's `Session` and never commits: the caller owns the unit of work.
Missing rows raise `NotFound`, lost races raise `Conflict`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

from sqlalchemy import exists, select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from auditor.errors import AuditorError, Conflict
from auditor.store._sql import in_chunks
from auditor.store.datasets import locators
from auditor.store.db import lock_race, try_transaction_lock
from auditor.store.findings import get_finding
from auditor.store.models import (
    DECISIONS,
    Audit,
    Finding,
    Review,
    ReviewEvent,
    utcnow,
)


def settled_keys(session: Session, dataset_id: int) -> set[str]:
    """Keys of the dataset's examples that a reviewer has decided about."""
    return set(session.scalars(select(Review.example_key).where(Review.dataset_id == dataset_id)))


def get_review(session: Session, dataset_id: int, example_key: str) -> Review | None:
    """The decision about one example of a dataset, if any."""
    return session.scalar(
        select(Review).where(Review.dataset_id == dataset_id, Review.example_key == example_key)
    )


def list_reviews(session: Session, dataset_id: int) -> list[Review]:
    """All decisions about a dataset, oldest first."""
    return list(
        session.scalars(select(Review).where(Review.dataset_id == dataset_id).order_by(Review.id))
    )


def _example_name(session: Session, finding: Finding) -> str:
    """How a conflict names what it is about, as a reviewer knows it: "finding 12 (example
    cats/img00042.png)", the file or row, not the content hash."""
    where = None
    if finding.example_index >= 0:
        snapshot_id = session.scalar(select(Audit.snapshot_id).where(Audit.id == finding.audit_id))
        if snapshot_id is not None:
            where = locators(session, snapshot_id, [finding.example_index]).get(finding.example_index)
    return f"finding {finding.id} (example {where or finding.example_key})"


def _check_decision(decision: str, new_label: int | None) -> None:
    if decision not in DECISIONS:
        raise AuditorError(f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
    if decision == "relabelled" and (new_label is None or new_label < 0):
        raise AuditorError("a relabel decision needs the new label (a non-negative integer)")
    if decision != "relabelled" and new_label is not None:
        raise AuditorError(f"a {decision} decision takes no new label")


class Busy(Conflict):
    """Another reviewer's transaction is deciding this example and did not finish within the
    lock wait allowed (PostgreSQL's lock_timeout), or at all when not waiting: nothing was
    stored, trying again will do."""


@contextmanager
def _written_alone(session: Session, name: str, lost: type[Exception], why: str) -> Iterator[None]:
    """Run a write in a savepoint; a race it lost is one line naming the finding: `lost` (a
    unique key taken, a version moved on) is a `Conflict` saying `why`, a lock wait that timed
    out or a deadlock (`store.db.lock_race`) is `Busy`."""
    try:
        with session.begin_nested():
            yield
    except lost:
        raise Conflict(f"{name} {why}") from None
    except DBAPIError as exc:
        if lock_race(exc):
            raise Busy(f"someone else is deciding {name}; try again") from None
        raise


def _claim(session: Session, dataset_id: int, finding: Finding) -> None:
    """Hold the example for this transaction, or raise `Busy` at once when another holds it.

    Bulk accepts take these claims (`decide(wait=False)`): one that finds an example claimed by
    another passes over it instead of queueing behind it, so bulk accepts never wait for each
    other, and with no wait there is no deadlock. A single decision does not claim: it waits on
    the row (the unique key, the version), as long as the transaction's lock_timeout allows.
    """
    if not try_transaction_lock(session, (dataset_id, finding.example_key)):
        raise Busy(f"someone else is deciding {_example_name(session, finding)}; try again")


def decide(
    session: Session,
    finding_id: int,
    decision: str,
    new_label: int | None = None,
    reviewer: str = "",
    note: str | None = None,
    expected_version: int | None = None,
    user_id: int | None = None,
    *,
    wait: bool = True,
) -> Review:
    """Record a reviewer's decision about the example behind a finding.

    `expected_version` is the version of the decision the reviewer saw: None means "no decision
    yet" (a first decision), an integer means "change decision version N". Anything else, or a
    concurrent reviewer winning the race (the unique (dataset, example_key) insert or the
    optimistic version check on update), raises `Conflict` naming what is there now; a lock
    wait past the transaction's lock_timeout (a concurrent decision that has not committed in
    time) raises `Busy`, and so does, at once, an example another bulk accept holds when
    `wait` is False (`_claim`). Every message names the finding and its example.
    """
    _check_decision(decision, new_label)
    finding = get_finding(session, finding_id)
    dataset_id = session.scalar(select(Audit.dataset_id).where(Audit.id == finding.audit_id))
    assert dataset_id is not None
    if not wait:
        _claim(session, dataset_id, finding)
    review = get_review(session, dataset_id, finding.example_key)
    name = _example_name(session, finding)  # read before a lost race can spoil the session
    event = ReviewEvent(
        dataset_id=dataset_id, example_key=finding.example_key, decision=decision,
        new_label=new_label, reviewer=reviewer, user_id=user_id, note=note,
        finding_id=finding.id, audit_id=finding.audit_id, created_at=utcnow(),
    )  # fmt: skip
    if review is None:
        if expected_version is not None:
            raise Conflict(
                f"{name} has no decision yet, but version {expected_version} was expected"
            )
        review = Review(
            finding_id=finding.id,
            dataset_id=dataset_id,
            example_key=finding.example_key,
            decision=decision,
            new_label=new_label,
            reviewer=reviewer,
            note=note,
            decided_at=event.created_at,
        )
        with _written_alone(session, name, IntegrityError, "was decided by another reviewer just now"):
            session.add(review)
            session.add(event)
        return review

    if expected_version is None or review.version != expected_version:
        raise Conflict(
            f"{name} was already decided: {review.decision} by "
            f"{review.reviewer or 'someone'} at {review.decided_at:%Y-%m-%d %H:%M} UTC "
            f"(version {review.version})"
        )
    with _written_alone(session, name, StaleDataError, "was changed by another reviewer just now"):
        review.finding_id = finding.id
        review.decision = decision
        review.new_label = new_label
        review.reviewer = reviewer
        review.note = note
        review.decided_at = event.created_at
        session.flush()  # the version check happens here, before the event is added
        session.add(event)
    return review


def standing_decision(events: Sequence[ReviewEvent]) -> ReviewEvent | None:
    """The decision event standing after `events` (one example's history, oldest first): each
    decision replaces the one before; an `undone` event withdraws the latest standing one and
    brings back the one it had replaced. This is how `reviews` is derived from the history."""
    stack: list[ReviewEvent] = []
    for e in events:
        if e.decision == "undone":
            if stack:
                stack.pop()
        else:
            stack.append(e)
    return stack[-1] if stack else None


def review_history(session: Session, dataset_id: int, example_key: str) -> list[ReviewEvent]:
    """Every event about one example of a dataset, oldest first."""
    return list(
        session.scalars(
            select(ReviewEvent)
            .where(ReviewEvent.dataset_id == dataset_id, ReviewEvent.example_key == example_key)
            .order_by(ReviewEvent.id)
        )
    )


def list_review_events(session: Session, dataset_id: int | None = None) -> list[ReviewEvent]:
    """All review events (of one dataset), oldest first."""
    query = select(ReviewEvent).order_by(ReviewEvent.id)
    if dataset_id is not None:
        query = query.where(ReviewEvent.dataset_id == dataset_id)
    return list(session.scalars(query))


def undo(
    session: Session,
    finding_id: int,
    reviewer: str = "",
    expected_version: int | None = None,
    user_id: int | None = None,
    note: str | None = None,
) -> Review | None:
    """Withdraw the decision standing on the finding's example: an `undone` event is appended
    and the decision before it (if any) stands again. Returns the standing review, or None.

    `expected_version` is the version of the decision the reviewer saw; a different one (someone
    decided in between) is a `Conflict`. With nothing to undo, an `AuditorError`.
    """
    finding = get_finding(session, finding_id)
    dataset_id = session.scalar(select(Audit.dataset_id).where(Audit.id == finding.audit_id))
    assert dataset_id is not None
    review = get_review(session, dataset_id, finding.example_key)
    name = _example_name(session, finding)
    if review is None:
        raise Conflict(f"{name} has no decision to undo")
    if expected_version is not None and review.version != expected_version:
        raise Conflict(
            f"{name} was changed by {review.reviewer or 'someone'} "
            f"since (now version {review.version}); reload before undoing"
        )
    history = review_history(session, dataset_id, finding.example_key)
    standing = standing_decision(history)
    event = ReviewEvent(
        dataset_id=dataset_id, example_key=finding.example_key, decision="undone",
        new_label=None, reviewer=reviewer, user_id=user_id, note=note, finding_id=finding.id,
        audit_id=finding.audit_id, undoes_id=standing.id if standing else None, created_at=utcnow(),
    )  # fmt: skip
    before = standing_decision([*history, event])
    with _written_alone(session, name, StaleDataError, "was changed by another reviewer just now"):
        if before is None:
            session.delete(review)
        else:
            review.finding_id = before.finding_id
            review.decision = before.decision
            review.new_label = before.new_label
            review.reviewer = before.reviewer
            review.note = before.note
            review.decided_at = before.created_at
        session.flush()
        session.add(event)
    return None if before is None else review


def next_unsettled_finding(
    session: Session,
    *,
    audit_id: int | None = None,
    dataset_id: int | None = None,
    kind: str | None = None,
    exclude: Iterable[int] = (),
) -> Finding | None:
    """The first finding of the review queue whose example no reviewer has decided about yet:
    flagged findings first, then ranked-only ones, each by queue_rank (the rank until decisions
    re-rank what is left). One query per group, so each walks the (audit, flagged, queue_rank)
    index in order and stops at the first undecided row.

    With `audit_id`, from that audit; otherwise from the newest succeeded audit of `dataset_id`
    (or of any dataset when neither is given). `exclude`: finding ids to pass over (skipped for
    now by this reviewer). None when everything is settled.
    """
    if audit_id is None:
        latest = select(Audit.id).where(Audit.status == "succeeded")
        if dataset_id is not None:
            latest = latest.where(Audit.dataset_id == dataset_id)
        audit_id = session.scalar(latest.order_by(Audit.id.desc()).limit(1))
        if audit_id is None:
            return None
    reviewed = exists().where(
        Review.dataset_id == Audit.dataset_id, Review.example_key == Finding.example_key
    )
    query = (
        select(Finding)
        .join(Audit, Audit.id == Finding.audit_id)
        .where(Finding.audit_id == audit_id, ~reviewed)
    )
    if kind is not None:
        query = query.where(Finding.kind == kind)
    exclude = list(exclude)
    if exclude:
        query = query.where(Finding.id.not_in(exclude))
    for flagged in (True, False):
        found = session.scalar(
            query.where(Finding.flagged == flagged)
            .order_by(Finding.queue_rank, Finding.id)
            .limit(1)
        )
        if found is not None:
            return found
    return None


def reviews_of_keys(session: Session, dataset_id: int, keys: Iterable[str]) -> dict[str, Review]:
    """The standing decision of each of `keys` that has one."""
    found: dict[str, Review] = {}
    for chunk in in_chunks(sorted(set(keys))):
        for review in session.scalars(
            select(Review).where(Review.dataset_id == dataset_id, Review.example_key.in_(chunk))
        ):
            found[review.example_key] = review
    return found


class PromptedEvent(NamedTuple):
    """A history event with the label suggested by the finding that prompted it (what a confirm
    accepted), read up front so that showing the event needs no query."""

    event: ReviewEvent
    suggested_label: int | None


def review_history_with_suggestions(
    session: Session, dataset_id: int, example_key: str
) -> list[PromptedEvent]:
    """Every event about one example of a dataset, oldest first, each with its finding's
    suggested label (None when the finding suggests none or is gone): two queries in all."""
    events = list(
        session.scalars(
            select(ReviewEvent)
            .where(ReviewEvent.dataset_id == dataset_id, ReviewEvent.example_key == example_key)
            .order_by(ReviewEvent.id)
        )
    )
    finding_ids = sorted({e.finding_id for e in events if e.finding_id is not None})
    suggested: dict[int, int | None] = {}
    for start in range(0, len(finding_ids), 1000):
        chunk = finding_ids[start : start + 1000]
        rows = session.execute(select(Finding.id, Finding.payload).where(Finding.id.in_(chunk)))
        suggested.update((fid, _suggested(payload)) for fid, payload in rows)
    return [
        PromptedEvent(e, suggested.get(e.finding_id) if e.finding_id is not None else None)
        for e in events
    ]


def _suggested(payload: dict | None) -> int | None:
    value = (payload or {}).get("suggested_label")
    return int(value) if value is not None else None
def decided_findings(session: Session, audit_id: int, kind: str = "label") -> list[tuple[Finding, Review]]:
    """The audit's findings of `kind` whose example has a standing decision, each with it, by
    rank: what a verification applies (decisions follow the example, so one made while
    reviewing an earlier audit of the same data set counts too)."""
    query = (
        select(Finding, Review)
        .join(Audit, Audit.id == Finding.audit_id)
        .join(Review, (Review.dataset_id == Audit.dataset_id) & (Review.example_key == Finding.example_key))
        .where(Finding.audit_id == audit_id, Finding.kind == kind)
        .order_by(Finding.rank, Finding.id)
    )
    return [(finding, review) for finding, review in session.execute(query)]
