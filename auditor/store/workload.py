"""The review workload of an audit in numbers: what is flagged and decided, by class pair, when
decisions were made, and the rows a re-ranking of the queue reads and rewrites.

Each function takes the caller's `Session` and never commits: the caller owns the unit of work.

A decision is the standing one in `reviews`, keyed by (dataset, example_key), so a decision made
from another audit of the same data set counts here too. Counts over decided findings are driven
from `reviews` (a few thousand human decisions) into the findings' unique (audit, key, kind)
index; counts over the flagged set walk the (audit, flagged, queue_rank) index. Neither reads
the ranked-only findings, which are most of a million.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, exists, func, null, select, true, update
from sqlalchemy.orm import Session

from auditor.store._sql import uses_psycopg
from auditor.store.models import Audit, Finding, Review, ReviewEvent

LABEL = "label"  # the finding kind of a label check
ROWS_PER_FETCH = 20_000


def _dataset_of(session: Session, audit_id: int) -> int | None:
    return session.scalar(select(Audit.dataset_id).where(Audit.id == audit_id))


def _suggested() -> Any:
    return Finding.payload["suggested_label"].as_integer()


def _label_findings(audit_id: int, *, flagged_only: bool = False) -> Any:
    """The condition selecting the audit's label findings (its review workload with
    `flagged_only`)."""
    cond = (Finding.audit_id == audit_id) & (Finding.kind == LABEL)
    return cond & (Finding.flagged == true()) if flagged_only else cond


def _decided(audit_id: int, dataset_id: int | None, *, flagged_only: bool = False) -> Any:
    """Standing decisions joined to the audit's label findings of the same example: from the
    reviews' side, since a data set's decisions are far fewer than an audit's findings and each
    is looked up in the findings' (audit, example_key, kind) unique index."""
    return (
        select()
        .select_from(Review)
        .join(
            Finding,
            _label_findings(audit_id, flagged_only=flagged_only)
            & (Finding.example_key == Review.example_key),
        )
        .where(Review.dataset_id == dataset_id)
    )


def flagged_pair_counts(
    session: Session, audit_id: int
) -> list[tuple[int | None, int | None, int]]:
    """(given label, suggested label, count) over the audit's flagged label findings."""
    suggested = _suggested()
    rows = session.execute(
        select(Finding.label, suggested, func.count())
        .where(_label_findings(audit_id, flagged_only=True))
        .group_by(Finding.label, suggested)
    )
    return [(given, sugg, int(n)) for given, sugg, n in rows]


def decided_pair_counts(
    session: Session, audit_id: int
) -> list[tuple[bool, int | None, int | None, str, int]]:
    """(flagged, given label, suggested label, standing decision, count) over the audit's label
    findings whose example has a standing decision."""
    dataset_id = _dataset_of(session, audit_id)
    if dataset_id is None:
        return []
    suggested = _suggested()
    rows = session.execute(
        _decided(audit_id, dataset_id)
        .add_columns(Finding.flagged, Finding.label, suggested, Review.decision, func.count())
        .group_by(Finding.flagged, Finding.label, suggested, Review.decision)
    )
    return [(bool(f), given, sugg, decision, int(n)) for f, given, sugg, decision, n in rows]


def flagged_counts(session: Session, audit_id: int) -> tuple[int, int]:
    """(flagged, reviewed): the audit's flagged label findings, and those of them whose example
    has a standing decision (what a list of audits shows; no payload is read)."""
    dataset_id = _dataset_of(session, audit_id)
    total = session.scalar(
        select(func.count())
        .select_from(Finding)
        .where(_label_findings(audit_id, flagged_only=True))
    )
    reviewed = session.scalar(
        _decided(audit_id, dataset_id, flagged_only=True).add_columns(func.count())
    )
    return int(total or 0), int(reviewed or 0)


def flagged_decisions_in_order(session: Session, audit_id: int) -> list[str]:
    """The standing decisions on the audit's flagged label findings, in the order they were
    made (precision so far, decision by decision)."""
    dataset_id = _dataset_of(session, audit_id)
    query = _decided(audit_id, dataset_id, flagged_only=True).add_columns(Review.decision)
    return list(session.scalars(query.order_by(Review.decided_at, Review.id)))


def decision_count(session: Session, audit_id: int) -> int:
    """How many of the audit's label findings have a standing decision."""
    dataset_id = _dataset_of(session, audit_id)
    if dataset_id is None:
        return 0
    return int(session.scalar(_decided(audit_id, dataset_id).add_columns(func.count())) or 0)


def decision_times(session: Session, audit_id: int) -> list[datetime]:
    """When each decision (not undo) prompted by one of the audit's findings was made, oldest
    first: the reviewers' pace."""
    return list(
        session.scalars(
            select(ReviewEvent.created_at)
            .where(ReviewEvent.audit_id == audit_id, ReviewEvent.decision != "undone")
            .order_by(ReviewEvent.created_at, ReviewEvent.id)
        )
    )


def label_score_rows(
    session: Session, audit_id: int, columns: Sequence[str], *, decided: bool
) -> Iterator[tuple[Any, ...]]:
    """The audit's label findings with (`decided`) or without a standing decision, as tuples
    (finding id, flagged, queue_rank, rank, decision or None, *payload columns as floats or
    None), in queue order. Read ROWS_PER_FETCH at a time: only the named payload columns
    travel, not the payloads."""
    dataset_id = _dataset_of(session, audit_id)
    same_example = (Review.dataset_id == dataset_id) & (Review.example_key == Finding.example_key)
    features = [Finding.payload[c].as_float() for c in columns]
    where = [Finding.audit_id == audit_id, Finding.kind == LABEL]
    if decided:
        query = select(
            Finding.id,
            Finding.flagged,
            Finding.queue_rank,
            Finding.rank,
            Review.decision,
            *features,
        ).join(Review, same_example)
    else:
        query = select(
            Finding.id, Finding.flagged, Finding.queue_rank, Finding.rank, null(), *features
        ).where(~exists().where(same_example))
    query = query.where(*where).order_by(Finding.flagged.desc(), Finding.queue_rank, Finding.id)
    result = session.execute(query.execution_options(yield_per=ROWS_PER_FETCH))
    for row in result:
        yield tuple(row)


def set_queue_ranks(session: Session, ranks: Sequence[tuple[int, int]]) -> int:
    """Give each finding id its new queue_rank ((id, queue_rank) pairs); return how many."""
    if not ranks:
        return 0
    session.flush()
    if uses_psycopg(session):
        # one COPY and one UPDATE ... FROM instead of a statement per row (a million at most)
        connection = session.connection().connection.driver_connection
        with connection.cursor() as cursor:  # type: ignore[union-attr]
            cursor.execute(
                "CREATE TEMP TABLE queue_ranks_incoming (id bigint, queue_rank integer) ON COMMIT DROP"
            )
            with cursor.copy("COPY queue_ranks_incoming (id, queue_rank) FROM STDIN") as copy:
                for row in ranks:
                    copy.write_row(row)
            cursor.execute(
                "UPDATE findings SET queue_rank = q.queue_rank FROM queue_ranks_incoming AS q "
                "WHERE findings.id = q.id AND findings.queue_rank <> q.queue_rank"
            )
            cursor.execute("DROP TABLE queue_ranks_incoming")
        _expire_findings(session)
        return len(ranks)
    statement = (
        update(Finding)
        .where(Finding.id == bindparam("fid"))
        .values(queue_rank=bindparam("new_queue_rank"))
    )
    session.connection().execute(
        statement, [{"fid": fid, "new_queue_rank": rank} for fid, rank in ranks]
    )
    _expire_findings(session)
    return len(ranks)


def _expire_findings(session: Session) -> None:
    """Findings already loaded must not keep their old queue_rank."""
    for obj in list(session.identity_map.values()):
        if isinstance(obj, Finding):
            session.expire(obj, ["queue_rank"])
