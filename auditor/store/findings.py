"""Findings: bulk upserts (COPY on PostgreSQL), the review queue's pages and counts.

Each function takes the caller's `Session` and never commits: the caller owns the unit of work.
Missing rows raise `NotFound`, lost races raise `Conflict`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, exists, func, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from auditor.errors import AuditorError, NotFound
from auditor.records import FindingRecord, finite_json
from auditor.store._sql import (
    EXECUTEMANY_CHUNK_ROWS,
    analyze_after_bulk,
    in_chunks,
    in_id_range,
    uses_psycopg,
)
from auditor.store.audits import get_audit
from auditor.store.db import dumps_json
from auditor.store.models import (
    DECISIONS,
    Finding,
    Review,
)

FINDING_CHUNK_ROWS = 20_000  # findings converted to rows at a time while storing


def _finding_row(r: FindingRecord) -> tuple[Any, ...]:
    """A plain tuple (index, key, kind, score, rank, label, payload, flagged, queue_rank) of one
    finding; the review queue starts in rank order."""
    score = float(r.score)
    if not math.isfinite(score):
        raise ValueError(f"finding for example {r.example_key} has a non-finite score ({score})")
    label = int(r.label) if r.label is not None else None
    return (
        int(r.example_index),
        r.example_key,
        r.kind,
        score,
        int(r.rank),
        label,
        finite_json(r.payload),
        bool(r.flagged),
        int(r.rank),
    )


def _finding_chunks(records: Iterable[FindingRecord]) -> Iterator[list[tuple[Any, ...]]]:
    """The records as rows, FINDING_CHUNK_ROWS at a time, last record per key wins in a chunk.

    Records are converted as they are stored, so a million findings are never all rows at once
    (a label check's findings are made on demand too). Analyses give each example one key, but a
    retried shard may repeat rows; PostgreSQL refuses to update one row twice in a statement, so
    duplicates are collapsed in each chunk, and later chunks update what earlier ones wrote.
    """
    rows: dict[tuple[str, str], tuple[Any, ...]] = {}
    for r in records:
        row = _finding_row(r)
        rows[(row[1], row[2])] = row
        if len(rows) >= FINDING_CHUNK_ROWS:
            yield list(rows.values())
            rows = {}
    if rows:
        yield list(rows.values())


_FINDING_COLUMNS = (
    "example_index",
    "example_key",
    "kind",
    "score",
    "rank",
    "label",
    "payload",
    "flagged",
    "queue_rank",
)


_FINDING_UPDATED = ("example_index", "score", "rank", "label", "payload", "flagged", "queue_rank")


def upsert_findings(session: Session, audit_id: int, records: Iterable[FindingRecord]) -> int:
    """Insert or update an audit's findings on (audit_id, example_key, kind); return the number
    of rows written.

    Idempotent, so a retried task can store its results again. PostgreSQL (psycopg): COPY into
    a temporary table, then one INSERT ... ON CONFLICT DO UPDATE; SQLite: the same upsert as a
    chunked executemany of one prepared statement. Records are read once, in order, a chunk at a
    time, so they may be made on demand.
    """
    if uses_psycopg(session):
        written = _upsert_findings_copy(session, audit_id, _finding_chunks(records))
        analyze_after_bulk(session, "findings", written)
        return written
    return sum(
        _upsert_findings_statements(session, audit_id, rows) for rows in _finding_chunks(records)
    )


def _upsert_findings_copy(
    session: Session, audit_id: int, chunks: Iterable[list[tuple[Any, ...]]]
) -> int:
    connection = session.connection().connection.driver_connection
    columns = ", ".join(_FINDING_COLUMNS)
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in _FINDING_UPDATED)
    with connection.cursor() as cursor:  # type: ignore[union-attr]
        cursor.execute(
            "CREATE TEMP TABLE findings_incoming (seq bigserial, example_index integer, "
            "example_key varchar(64), kind varchar(32), score double precision, rank integer, "
            "label integer, payload jsonb, flagged boolean, queue_rank integer) ON COMMIT DROP"
        )
        with cursor.copy(f"COPY findings_incoming ({columns}) FROM STDIN") as copy:
            for rows in chunks:
                for row in rows:
                    copy.write_row((*row[:6], dumps_json(row[6]) if row[6] else "{}", *row[7:]))
        # a key repeated across chunks: its last copy wins, as it would row by row
        cursor.execute(
            f"INSERT INTO findings (audit_id, {columns}) "
            f"SELECT %s, {columns} FROM (SELECT DISTINCT ON (example_key, kind) * FROM findings_incoming "
            f"ORDER BY example_key, kind, seq DESC) AS latest "
            f"ON CONFLICT (audit_id, example_key, kind) DO UPDATE SET {updates}",
            (audit_id,),
        )
        written = cursor.rowcount
        cursor.execute("DROP TABLE findings_incoming")
    return written


def _upsert_findings_statements(
    session: Session, audit_id: int, rows: list[tuple[Any, ...]]
) -> int:
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        # The driver's own executemany of one prepared statement: about three times faster
        # than SQLAlchemy's per-row parameter processing, and no bound-parameter limit.
        columns = ", ".join(("audit_id", *_FINDING_COLUMNS))
        updates = ", ".join(f"{c} = excluded.{c}" for c in _FINDING_UPDATED)
        sql = (
            f"INSERT INTO findings ({columns}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            f"ON CONFLICT (audit_id, example_key, kind) DO UPDATE SET {updates}"
        )
        connection = session.connection()
        for start in range(0, len(rows), EXECUTEMANY_CHUNK_ROWS):
            chunk = rows[start : start + EXECUTEMANY_CHUNK_ROWS]
            connection.exec_driver_sql(
                sql,
                [
                    (audit_id, *row[:6], dumps_json(row[6]) if row[6] else "{}", *row[7:])
                    for row in chunk
                ],
            )
        return len(rows)
    # Any other PostgreSQL driver: SQLAlchemy's executemany of the dialect's upsert.
    statement = postgresql.insert(Finding.__table__)
    statement = statement.on_conflict_do_update(
        index_elements=["audit_id", "example_key", "kind"],
        set_={c: statement.excluded[c] for c in _FINDING_UPDATED},
    )
    for start in range(0, len(rows), EXECUTEMANY_CHUNK_ROWS):
        chunk = rows[start : start + EXECUTEMANY_CHUNK_ROWS]
        session.execute(
            statement,
            [
                {"audit_id": audit_id, **dict(zip(_FINDING_COLUMNS, row, strict=True))}
                for row in chunk
            ],
        )
    return len(rows)


def list_findings(
    session: Session,
    audit_id: int,
    top: int | None = None,
    kind: str | None = None,
    flagged: bool | None = None,
) -> list[Finding]:
    """An audit's findings by rank (best first), optionally the first `top`, one kind, and only
    the flagged (True) or only the ranked-only (False) ones."""
    query = select(Finding).where(Finding.audit_id == audit_id)
    if kind is not None:
        query = query.where(Finding.kind == kind)
    if flagged is not None:
        query = query.where(Finding.flagged.is_(flagged))
    query = query.order_by(Finding.rank, Finding.id)
    if top is not None:
        query = query.limit(top)
    return list(session.scalars(query))


FINDING_DECISION_FILTERS = ("undecided", *DECISIONS)


FINDING_ORDERS = ("rank", "score", "-score", "label")


@dataclass
class FindingPage:
    """One page of an audit's findings with the decision standing on each example."""

    rows: list[tuple[Finding, Review | None]]
    total: int  # findings matching the filters, over all pages


def query_findings(
    session: Session,
    audit_id: int,
    *,
    kind: str | None = None,
    label: int | None = None,
    decision: str | None = None,
    order: str = "rank",
    offset: int = 0,
    limit: int | None = 50,
    flagged: bool | None = None,
) -> FindingPage:
    """Findings of an audit filtered by kind, given label (class), decision and whether they are
    flagged (the audit's estimate of its wrong labels) or ranked only, sorted and paged.

    `decision`: "undecided" or one of DECISIONS, as it stands now (the example's latest decision
    in this dataset, whichever audit prompted it). `order`: rank (the review queue: flagged
    findings first, then ranked-only ones, each by queue_rank, which is the rank until decisions
    re-rank what is left), score (lowest first), -score (highest first) or label.
    """
    if decision is not None and decision not in FINDING_DECISION_FILTERS:
        raise AuditorError(
            f"decision filter must be one of {', '.join(FINDING_DECISION_FILTERS)}, not {decision!r}"
        )
    if order not in FINDING_ORDERS:
        raise AuditorError(f"order must be one of {', '.join(FINDING_ORDERS)}, not {order!r}")
    if offset < 0 or (limit is not None and limit < 0):
        raise AuditorError("offset and limit must not be negative")
    audit = get_audit(session, audit_id)
    same_example = (Review.dataset_id == audit.dataset_id) & (
        Review.example_key == Finding.example_key
    )
    base = [Finding.audit_id == audit_id]
    if kind is not None:
        base.append(Finding.kind == kind)
    if label is not None:
        base.append(Finding.label == label)
    if flagged is not None:
        base.append(Finding.flagged.is_(flagged))
    # Two spellings of the decision filter, each planned well whatever the table statistics say:
    # the count as a (NOT) EXISTS semi-join (a hash join over the reviews), the page as a
    # per-row lookup in the reviews' unique index, which stops after `limit` rows. A plain outer
    # join was planned as a nested loop over a million findings when `reviews` had not been
    # analysed since it grew (minutes per page; bench/review_app.py).
    counted, paged = list(base), list(base)
    if decision is not None:
        decided = exists().where(same_example)
        standing = select(Review.decision).where(same_example).scalar_subquery()
        if decision == "undecided":
            counted.append(~decided)
            paged.append(standing.is_(None))
        else:
            counted.append(exists().where(same_example, Review.decision == decision))
            paged.append(standing == decision)
    by_flag = dict(
        session.execute(
            select(Finding.flagged, func.count()).where(*counted).group_by(Finding.flagged)
        ).all()
    )
    total = int(sum(by_flag.values()))
    if order == "rank":
        findings = _queue_page(session, paged, int(by_flag.get(True, 0)), offset, limit)
    else:
        sort = {
            "score": (Finding.score, Finding.id),
            "-score": (Finding.score.desc(), Finding.id),
            "label": (Finding.label, Finding.rank, Finding.id),
        }[order]
        query = select(Finding).where(*paged).order_by(*sort).offset(offset)
        if limit is not None:
            query = query.limit(limit)
        findings = list(session.scalars(query))
    keys = sorted({f.example_key for f in findings})
    reviews: dict[str, Review] = {}
    for start in range(0, len(keys), 1000):
        chunk = keys[start : start + 1000]
        reviews.update(
            (r.example_key, r)
            for r in session.scalars(
                select(Review).where(
                    Review.dataset_id == audit.dataset_id, Review.example_key.in_(chunk)
                )
            )
        )
    return FindingPage([(f, reviews.get(f.example_key)) for f in findings], total)


def _queue_page(
    session: Session, where: list[Any], flagged_total: int, offset: int, limit: int | None
) -> list[Finding]:
    """A page of the review queue: the flagged findings by queue_rank, then the ranked-only ones.
    Each group is its own query walking the (audit, flagged, queue_rank) index in order (one
    ORDER BY flagged DESC, queue_rank cannot: the directions differ), and `flagged_total` (the
    matching flagged count) says where the page starts in which."""
    out: list[Finding] = []
    for flagged, start in ((True, offset), (False, max(0, offset - flagged_total))):
        if flagged and offset >= flagged_total:
            continue
        wanted = None if limit is None else limit - len(out)
        if wanted == 0:
            break
        query = (
            select(Finding)
            .where(*where, Finding.flagged == flagged)
            .order_by(Finding.queue_rank, Finding.id)
            .offset(start)
        )
        if wanted is not None:
            query = query.limit(wanted)
        out.extend(session.scalars(query))
    return out


def finding_kinds(session: Session, audit_id: int) -> list[str]:
    """The kinds of finding an audit stored ("label", "helpful:t3", ...)."""
    return list(
        session.scalars(
            select(Finding.kind)
            .where(Finding.audit_id == audit_id)
            .distinct()
            .order_by(Finding.kind)
        )
    )


def findings_for_example(session: Session, audit_id: int, example_index: int) -> list[Finding]:
    """An audit's findings about the example at `example_index`, label check first."""
    rows = session.scalars(
        select(Finding).where(Finding.audit_id == audit_id, Finding.example_index == example_index)
    )
    return sorted(rows, key=lambda f: (f.kind != "label", f.kind, f.rank))


def decided_examples(session: Session, audit_id: int) -> int:
    """Examples of the audit's findings (any kind) with a standing decision: what an audit list
    shows beside its findings count."""
    audit = get_audit(session, audit_id)
    # from the reviews' side: an audit list polls this for every audit, and the decisions of a
    # data set are far fewer than its findings; each review is looked up in the findings'
    # (audit, example_key, kind) unique index
    decided = session.scalar(
        select(func.count(func.distinct(Review.example_key)))
        .select_from(Review)
        .join(Finding, (Finding.audit_id == audit_id) & (Finding.example_key == Review.example_key))
        .where(Review.dataset_id == audit.dataset_id)
    )
    return int(decided or 0)


def count_flagged(session: Session, audit_id: int) -> int:
    """The audit's flagged findings (its review workload)."""
    return int(
        session.scalar(
            select(func.count()).select_from(Finding).where(Finding.audit_id == audit_id, Finding.flagged.is_(True))
        )
        or 0
    )


def flagged_example_indices(session: Session, audit_id: int, indices: Iterable[int]) -> set[int]:
    """Which of the examples at `indices` are flagged (a finding of the audit in its review
    workload): what marks a helpful or harmful example that is itself suspect. One query per
    chunk of indices (a page lists a few dozen)."""
    found: set[int] = set()
    for chunk in in_chunks(sorted({int(i) for i in indices})):
        found.update(
            session.scalars(
                select(Finding.example_index).where(
                    Finding.audit_id == audit_id,
                    Finding.flagged.is_(True),
                    Finding.example_index.in_(chunk),
                )
            )
        )
    return found


def neighbour_findings(
    session: Session, audit_id: int, kind: str, rank: int
) -> tuple[int | None, int | None]:
    """Ids of the findings of the same kind ranked just before and just after `rank`."""
    base = select(Finding.id).where(Finding.audit_id == audit_id, Finding.kind == kind)
    before = session.scalar(base.where(Finding.rank < rank).order_by(Finding.rank.desc()).limit(1))
    after = session.scalar(base.where(Finding.rank > rank).order_by(Finding.rank).limit(1))
    return before, after


def count_findings(session: Session, audit_id: int, kind: str | None = None) -> int:
    """How many findings an audit stored."""
    query = select(func.count()).select_from(Finding).where(Finding.audit_id == audit_id)
    if kind is not None:
        query = query.where(Finding.kind == kind)
    return int(session.scalar(query) or 0)


def get_finding(session: Session, finding_id: int) -> Finding:
    """The finding with id `finding_id`, or `NotFound`."""
    finding = session.get(Finding, finding_id) if in_id_range(finding_id) else None
    if finding is None:
        raise NotFound(f"no finding with id {finding_id}")
    return finding


def kind_counts(session: Session, audit_id: int) -> dict[str, int]:
    """How many findings of each kind the audit has."""
    rows = session.execute(
        select(Finding.kind, func.count())
        .where(Finding.audit_id == audit_id)
        .group_by(Finding.kind)
    )
    return {kind: int(n) for kind, n in rows}


def ranks_of_keys(
    session: Session, audit_id: int, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], int]:
    """Rank of each (kind, key) among the audit's findings, where it has one."""
    wanted = set(keys)
    ranks: dict[tuple[str, str], int] = {}
    for chunk in in_chunks(sorted({key for _, key in wanted})):
        rows = session.execute(
            select(Finding.kind, Finding.example_key, Finding.rank).where(
                Finding.audit_id == audit_id, Finding.example_key.in_(chunk)
            )
        )
        for kind, key, rank in rows:
            if (kind, key) in wanted:
                ranks[(kind, key)] = int(rank)
    return ranks


def rerank(session: Session, audit_id: int) -> int:
    """Rewrite ranks 1..n by (score desc, example_index asc) within each finding kind."""
    rows = session.execute(
        select(Finding.id, Finding.kind)
        .where(Finding.audit_id == audit_id)
        .order_by(Finding.kind, Finding.score.desc(), Finding.example_index)
    ).all()
    ranks, counter = [], {}
    for fid, kind in rows:
        counter[kind] = counter.get(kind, 0) + 1
        ranks.append({"fid": fid, "new_rank": counter[kind]})
    if ranks:
        stmt = (
            update(Finding)
            .where(Finding.id == bindparam("fid"))
            .values(rank=bindparam("new_rank"), queue_rank=bindparam("new_rank"))
        )
        session.connection().execute(stmt, ranks)
    return len(ranks)


def rows_in_example_order(
    session: Session, audit_id: int, kind: str = "label"
) -> Iterator[tuple[int, str, int, int | None, dict[str, Any]]]:
    """(example_index, example_key, rank, label, payload) of an audit's findings of one kind, in
    example order, read FINDING_CHUNK_ROWS at a time: what an estimate over every row of a
    sharded label check needs from what its shards stored."""
    query = (
        select(Finding.example_index, Finding.example_key, Finding.rank, Finding.label, Finding.payload)
        .where(Finding.audit_id == audit_id, Finding.kind == kind)
        .order_by(Finding.example_index, Finding.id)
        .execution_options(yield_per=FINDING_CHUNK_ROWS)
    )
    for index, key, rank, label, payload in session.execute(query):
        yield int(index), key, int(rank), label, payload or {}


def set_flagged(session: Session, audit_id: int, keys: Iterable[str], kind: str = "label") -> int:
    """Make the findings of `kind` whose example keys are in `keys` the audit's flagged ones and
    every other finding of that kind ranked only; returns how many are flagged."""
    session.execute(
        update(Finding)
        .where(Finding.audit_id == audit_id, Finding.kind == kind)
        .values(flagged=False)
        .execution_options(synchronize_session=False)
    )
    flagged = 0
    for chunk in in_chunks(sorted(set(keys))):
        result = session.execute(
            update(Finding)
            .where(Finding.audit_id == audit_id, Finding.kind == kind, Finding.example_key.in_(chunk))
            .values(flagged=True)
            .execution_options(synchronize_session=False)
        )
        flagged += int(result.rowcount or 0)  # type: ignore[attr-defined]
    return flagged
