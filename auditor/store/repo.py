"""Repository functions: every read and write the CLI and the workers make.

Each function takes the caller's `Session` and never commits: the caller owns the unit of work
(`with factory() as s, s.begin(): ...`). Functions flush when they need database-assigned ids or
need a constraint checked now. Missing rows raise `NotFound`, lost races raise `Conflict`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from croniter import croniter
from sqlalchemy import Table, delete, exists, func, insert, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from auditor.data.base import Examples
from auditor.data.keys import content_hash
from auditor.errors import AuditorError, Conflict, NotFound
from auditor.records import FindingRecord, finite_json
from auditor.store.db import dumps_json
from auditor.store.migrate import ensure_schema as ensure_schema  # re-export for front doors
from auditor.store.models import (
    AUDIT_STATUSES,
    DECISIONS,
    FINISHED_STATUSES,
    Audit,
    Dataset,
    Finding,
    Review,
    ReviewEvent,
    Schedule,
    Snapshot,
    SnapshotExample,
    utcnow,
)

# Rows per executemany call: bounds the memory of the converted parameters. PostgreSQL (psycopg)
# streams through COPY and is not chunked.
EXECUTEMANY_CHUNK_ROWS = 20_000
T = TypeVar("T")

# ---------------------------------------------------------------------------------------------
# datasets and snapshots


def create_dataset(
    session: Session,
    name: str,
    source_path: str,
    format: str,
    options: dict[str, Any] | None = None,
) -> Dataset:
    """Register a dataset; `Conflict` when the name is taken (also when another process won)."""
    if session.scalar(select(Dataset.id).where(Dataset.name == name)) is not None:
        raise Conflict(f"dataset {name!r} already exists (use --update to re-read its source)")
    dataset = Dataset(name=name, source_path=source_path, format=format, options=options or {})
    return add_unique(session, dataset, f"dataset {name!r} was just created by someone else")


def add_unique(session: Session, row: T, conflict: str) -> T:
    """Insert `row` in a savepoint; when a unique constraint says it is there already (another
    process won the race), `Conflict(conflict)` and the caller's transaction goes on."""
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        raise Conflict(conflict) from None
    return row


def get_dataset(session: Session, name: str) -> Dataset:
    """The dataset called `name`, or `NotFound`."""
    dataset = session.scalar(select(Dataset).where(Dataset.name == name))
    if dataset is None:
        raise NotFound(f"no dataset named {name!r} (see `auditor dataset list`)")
    return dataset


def get_dataset_by_id(session: Session, dataset_id: int) -> Dataset:
    """The dataset with primary key `dataset_id`, or `NotFound`."""
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise NotFound(f"no dataset with id {dataset_id}")
    return dataset


def list_datasets(session: Session) -> list[Dataset]:
    """All datasets by name."""
    return list(session.scalars(select(Dataset).order_by(Dataset.name)))


def update_dataset_source(
    session: Session,
    dataset: Dataset,
    source_path: str,
    format: str,
    options: dict[str, Any] | None = None,
) -> Dataset:
    """Point an existing dataset at a (possibly new) source and reader options."""
    dataset.source_path = source_path
    dataset.format = format
    dataset.options = options or {}
    return dataset


def latest_snapshot(session: Session, dataset_id: int) -> Snapshot | None:
    """The dataset's newest snapshot, or None before its first scan."""
    return session.scalar(
        select(Snapshot)
        .where(Snapshot.dataset_id == dataset_id)
        .order_by(Snapshot.id.desc())
        .limit(1)
    )


def list_snapshots(session: Session, dataset_id: int) -> list[Snapshot]:
    """The dataset's snapshots, oldest first."""
    return list(
        session.scalars(
            select(Snapshot).where(Snapshot.dataset_id == dataset_id).order_by(Snapshot.id)
        )
    )


def snapshot_keys(session: Session, snapshot_id: int) -> list[str]:
    """The example keys of a snapshot in source order (index i -> key of row i)."""
    return list(
        session.scalars(
            select(SnapshotExample.example_key)
            .where(SnapshotExample.snapshot_id == snapshot_id)
            .order_by(SnapshotExample.example_index)
        )
    )


def locators(session: Session, snapshot_id: int, indices: Iterable[int]) -> dict[int, str]:
    """Where a person finds examples of a snapshot (file path or "row N"), by example index.
    Snapshots recorded before locators existed answer "row N"."""
    wanted = sorted({int(i) for i in indices if i >= 0})
    out = {i: f"row {i}" for i in wanted}
    for start in range(0, len(wanted), 1000):
        chunk = wanted[start : start + 1000]
        rows = session.execute(
            select(SnapshotExample.example_index, SnapshotExample.locator).where(
                SnapshotExample.snapshot_id == snapshot_id,
                SnapshotExample.example_index.in_(chunk),
            )
        )
        out.update({int(i): loc for i, loc in rows if loc})
    return out


def label_counts(session: Session, snapshot_id: int) -> dict[int, int]:
    """How many examples of a snapshot carry each label."""
    rows = session.execute(
        select(SnapshotExample.label, func.count())
        .where(SnapshotExample.snapshot_id == snapshot_id)
        .group_by(SnapshotExample.label)
        .order_by(SnapshotExample.label)
    )
    return {int(label) if label is not None else -1: int(count) for label, count in rows}


@dataclass(frozen=True)
class SnapshotDiff:
    """How a scan differs from the dataset's previous snapshot, counted in examples.

    Semantics (the three counts never overlap):
    - changed: row i exists in both scans and holds a different key, and neither key appears
      anywhere in the other scan, i.e. the example at that row was edited in place (new pixels
      or a new label);
    - added: keys of the new scan that the old one lacks, other than the changed rows;
    - removed: keys of the old scan that the new one lacks, other than the changed rows;
    - unchanged: keys in both scans, wherever they sit (a pure reordering changes the content
      hash and makes a new snapshot, but counts as 0 added/changed/removed).
    The first scan of a dataset counts every example as added.
    """

    previous_snapshot_id: int | None
    new_snapshot: bool
    added: int
    changed: int
    removed: int
    unchanged: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def diff_keys(old: Sequence[str], new: Sequence[str]) -> tuple[int, int, int, int]:
    """(added, changed, removed, unchanged) between two key lists; see `SnapshotDiff`."""
    old_set, new_set = set(old), set(new)
    changed = sum(
        1
        for old_key, new_key in zip(old, new, strict=False)
        if old_key != new_key and old_key not in new_set and new_key not in old_set
    )
    unchanged = len(old_set & new_set)
    added = len(new_set - old_set) - changed
    removed = len(old_set - new_set) - changed
    return added, changed, removed, unchanged


def record_snapshot(
    session: Session, dataset: Dataset, examples: Examples
) -> tuple[Snapshot, SnapshotDiff]:
    """Record the examples as the dataset's newest snapshot, unless nothing changed.

    When the content hash equals the latest snapshot's, that snapshot is returned and the diff
    says `new_snapshot=False`.
    """
    digest = content_hash(examples.keys)
    if examples.class_names is not None and dataset.class_names != examples.class_names:
        dataset.class_names = list(examples.class_names)
    previous = latest_snapshot(session, dataset.id)
    if previous is not None and previous.content_hash == digest:
        n = previous.n
        return previous, SnapshotDiff(previous.id, False, 0, 0, 0, n)

    old_keys = snapshot_keys(session, previous.id) if previous is not None else []
    added, changed, removed, unchanged = diff_keys(old_keys, examples.keys)
    snapshot = Snapshot(dataset_id=dataset.id, content_hash=digest, n=len(examples))
    session.add(snapshot)
    session.flush()
    labels = examples.y.tolist()
    files = examples.extra.get("files")
    if not (isinstance(files, list) and len(files) == len(labels)):
        files = None
    rows = [
        (snapshot.id, index, key, int(label), files[index] if files else f"row {index}")
        for index, (key, label) in enumerate(zip(examples.keys, labels, strict=True))
    ]
    _bulk_insert(session, SnapshotExample.__table__, rows)  # type: ignore[arg-type]
    diff = SnapshotDiff(
        previous.id if previous is not None else None, True, added, changed, removed, unchanged
    )
    return snapshot, diff


def _bulk_insert(session: Session, table: Table, rows: list[tuple[Any, ...]]) -> None:
    """Plain bulk insert of tuples in column order: COPY on psycopg, executemany elsewhere."""
    columns = [column.name for column in table.columns]
    if _uses_psycopg(session):
        cursor_conn = session.connection().connection.driver_connection
        with cursor_conn.cursor() as cursor:  # type: ignore[union-attr]
            sql = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN"
            with cursor.copy(sql) as copy:
                for row in rows:
                    copy.write_row(row)
        _analyze_after_bulk(session, table.name, len(rows))
        return
    if session.get_bind().dialect.name == "sqlite":
        placeholders = ", ".join("?" for _ in columns)
        sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({placeholders})"
        session.connection().exec_driver_sql(sql, rows)
        return
    statement = insert(table)
    for start in range(0, len(rows), EXECUTEMANY_CHUNK_ROWS):
        chunk = rows[start : start + EXECUTEMANY_CHUNK_ROWS]
        session.execute(statement, [dict(zip(columns, row, strict=True)) for row in chunk])


def _uses_psycopg(session: Session) -> bool:
    dialect = session.get_bind().dialect
    return dialect.name == "postgresql" and dialect.driver == "psycopg"


# ---------------------------------------------------------------------------------------------
# audits

_ALLOWED_TRANSITIONS: dict[str, set[str]] = {
    "queued": {"running", "failed", "cancelled"},
    # running -> running/queued: a redelivered task (worker lost) starts the audit again.
    "running": {"running", "queued", "succeeded", "failed", "cancelled"},
    # A finished audit can only be queued again, deliberately (re-run).
    "succeeded": {"queued"},
    "failed": {"queued"},
    "cancelled": {"queued"},
}


def create_audit(
    session: Session,
    kind: str,
    dataset: Dataset,
    *,
    snapshot: Snapshot | None = None,
    params: dict[str, Any] | None = None,
    test_dataset: Dataset | None = None,
    schedule_id: int | None = None,
) -> Audit:
    """A queued audit of `dataset` at `snapshot` (default: its latest snapshot)."""
    snapshot = snapshot or latest_snapshot(session, dataset.id)
    if snapshot is None:
        raise NotFound(f"dataset {dataset.name!r} has no snapshot yet: run `auditor dataset scan`")
    audit = Audit(
        kind=kind,
        dataset_id=dataset.id,
        snapshot_id=snapshot.id,
        test_dataset_id=test_dataset.id if test_dataset is not None else None,
        params=params or {},
        status="queued",
        schedule_id=schedule_id,
    )
    session.add(audit)
    session.flush()
    return audit


ID_MAX = 2**31 - 1  # ids are 32-bit integers on PostgreSQL; beyond that nothing can match


def _in_range(row_id: int) -> bool:
    """Whether an id can exist at all: a larger one would fail in the database ("integer out of
    range") instead of being simply not found."""
    return 0 < int(row_id) <= ID_MAX


def get_audit(session: Session, audit_id: int) -> Audit:
    """The audit with id `audit_id`, or `NotFound`."""
    audit = session.get(Audit, audit_id) if _in_range(audit_id) else None
    if audit is None:
        raise NotFound(f"no audit with id {audit_id} (see `auditor audit list`)")
    return audit


def list_audits(
    session: Session,
    dataset: Dataset | str | None = None,
    *,
    status: str | None = None,
    limit: int | None = None,
) -> list[Audit]:
    """Audits, newest first, optionally of one dataset (object or name) and one status."""
    query = select(Audit).order_by(Audit.id.desc())
    if dataset is not None:
        if isinstance(dataset, str):
            dataset = get_dataset(session, dataset)
        query = query.where(Audit.dataset_id == dataset.id)
    if status is not None:
        query = query.where(Audit.status == status)
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


def set_audit_status(
    session: Session,
    audit_id: int,
    status: str,
    *,
    message: str | None = None,
    error: str | None = None,
    task_id: str | None = None,
) -> Audit:
    """Move an audit to `status`, stamping started/finished times.

    Illegal moves (e.g. a cancelled audit to succeeded, when a worker finished after the user
    cancelled) raise `Conflict`, so the first final state wins. Re-queueing resets progress, the
    error and the cancel flag.
    """
    if status not in AUDIT_STATUSES:
        raise ValueError(f"unknown audit status {status!r}")
    audit = get_audit(session, audit_id)
    session.refresh(audit, with_for_update=True)
    if status not in _ALLOWED_TRANSITIONS[audit.status]:
        raise Conflict(f"audit {audit_id} is {audit.status}; it cannot become {status}")
    now = utcnow()
    audit.status = status
    if status == "queued":
        audit.progress, audit.error, audit.cancel_requested = 0.0, None, False
        audit.started_at = audit.finished_at = None
    elif status == "running":
        audit.started_at, audit.heartbeat_at, audit.finished_at = now, now, None
        audit.deliveries = (audit.deliveries or 0) + 1
    else:
        audit.finished_at = now
        if status == "succeeded":
            audit.progress = 1.0
    if message is not None:
        audit.message = message
    if error is not None:
        audit.error = error
    if task_id is not None:
        audit.task_id = task_id
    session.flush()
    return audit


def update_progress(
    session: Session, audit_id: int, fraction: float, message: str | None = None
) -> bool:
    """Record progress and a heartbeat; return whether a cancel was requested.

    One UPDATE ... RETURNING, so a progress callback can check for cancellation at no extra cost
    and raise `auditor.errors.Cancelled` itself.
    """
    values: dict[str, Any] = {
        "progress": min(max(float(fraction), 0.0), 1.0),
        "heartbeat_at": utcnow(),
    }
    if message is not None:
        values["message"] = message
    cancel = session.scalar(
        update(Audit)
        .where(Audit.id == audit_id)
        .values(**values)
        .returning(Audit.cancel_requested)
        .execution_options(synchronize_session=False)
    )
    if cancel is None:
        raise NotFound(f"no audit with id {audit_id}")
    return bool(cancel)


def set_audit_summary(session: Session, audit_id: int, summary: dict[str, Any]) -> None:
    """Store the analysis's summary of the whole audit (JSON)."""
    audit = get_audit(session, audit_id)
    audit.summary = finite_json(summary)
    session.flush()


def request_cancel(session: Session, audit_id: int, stale_before: datetime | None = None) -> Audit:
    """Ask an audit to stop.

    A queued audit is cancelled at once (a worker that picks it up later skips it); a running
    one gets `cancel_requested`, which its next progress report sees, or, when its heartbeat is
    older than `stale_before` (its lease expired: nobody runs it), is cancelled at once. Cancelling a cancelled audit
    is a no-op; a succeeded or failed one raises `Conflict`.
    """
    audit = get_audit(session, audit_id)
    session.refresh(audit, with_for_update=True)
    if audit.status == "cancelled":
        return audit
    if audit.status in FINISHED_STATUSES:
        raise Conflict(f"audit {audit_id} already {audit.status}; nothing to cancel")
    audit.cancel_requested = True
    if audit.status == "queued":
        audit.status = "cancelled"
        audit.finished_at = utcnow()
        audit.message = "cancelled before it started"
    elif stale_before is not None and (audit.heartbeat_at is None or audit.heartbeat_at < stale_before):
        # running on paper only: its lease expired, nobody is left to see the request
        audit.status = "cancelled"
        audit.finished_at = utcnow()
        audit.message = "cancelled; the process running it had stopped"
    session.flush()
    return audit


def is_cancel_requested(session: Session, audit_id: int) -> bool:
    """Whether someone asked the audit to stop (read fresh from the database)."""
    flag = session.scalar(select(Audit.cancel_requested).where(Audit.id == audit_id))
    if flag is None:
        raise NotFound(f"no audit with id {audit_id}")
    return bool(flag)


def touch_heartbeat(session: Session, audit_id: int) -> None:
    """Stamp a running audit's heartbeat (the computation is alive)."""
    session.execute(
        update(Audit).where(Audit.id == audit_id, Audit.status == "running").values(heartbeat_at=utcnow())
    )


def stale_audits(session: Session, heartbeat_before: datetime) -> list[Audit]:
    """Running audits whose last heartbeat is older than `heartbeat_before` (a lost worker)."""
    return list(
        session.scalars(
            select(Audit)
            .where(Audit.status == "running", Audit.heartbeat_at < heartbeat_before)
            .order_by(Audit.id)
        )
    )


# ---------------------------------------------------------------------------------------------
# findings


FINDING_CHUNK_ROWS = 20_000  # findings converted to rows at a time while storing


def _finding_row(r: FindingRecord) -> tuple[Any, ...]:
    """A plain tuple (index, key, kind, score, rank, label, payload) of one finding."""
    score = float(r.score)
    if not math.isfinite(score):
        raise ValueError(f"finding for example {r.example_key} has a non-finite score ({score})")
    label = int(r.label) if r.label is not None else None
    return (int(r.example_index), r.example_key, r.kind, score, int(r.rank), label, finite_json(r.payload))


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


_FINDING_COLUMNS = ("example_index", "example_key", "kind", "score", "rank", "label", "payload")
_FINDING_UPDATED = ("example_index", "score", "rank", "label", "payload")


def upsert_findings(session: Session, audit_id: int, records: Iterable[FindingRecord]) -> int:
    """Insert or update an audit's findings on (audit_id, example_key, kind); return the number
    of rows written.

    Idempotent, so a retried task can store its results again. PostgreSQL (psycopg): COPY into
    a temporary table, then one INSERT ... ON CONFLICT DO UPDATE; SQLite: the same upsert as a
    chunked executemany of one prepared statement. Records are read once, in order, a chunk at a
    time, so they may be made on demand.
    """
    if _uses_psycopg(session):
        written = _upsert_findings_copy(session, audit_id, _finding_chunks(records))
        _analyze_after_bulk(session, "findings", written)
        return written
    return sum(_upsert_findings_statements(session, audit_id, rows) for rows in _finding_chunks(records))


def _upsert_findings_copy(session: Session, audit_id: int, chunks: Iterable[list[tuple[Any, ...]]]) -> int:
    connection = session.connection().connection.driver_connection
    columns = ", ".join(_FINDING_COLUMNS)
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in _FINDING_UPDATED)
    with connection.cursor() as cursor:  # type: ignore[union-attr]
        cursor.execute(
            "CREATE TEMP TABLE findings_incoming (seq bigserial, example_index integer, "
            "example_key varchar(64), kind varchar(32), score double precision, rank integer, "
            "label integer, payload jsonb) ON COMMIT DROP"
        )
        with cursor.copy(f"COPY findings_incoming ({columns}) FROM STDIN") as copy:
            for rows in chunks:
                for row in rows:
                    copy.write_row((*row[:6], dumps_json(row[6]) if row[6] else "{}"))
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


# After this many rows arrive at once, PostgreSQL's statistics are refreshed in the same
# transaction: before autovacuum gets to it, the planner would take a million fresh findings for
# a few thousand and pick a nested loop (the review queue's "undecided" count took minutes at 1M
# findings instead of well under a second; bench/review_app.py).
ANALYZE_AFTER_ROWS = 10_000


def _analyze_after_bulk(session: Session, table: str, rows: int) -> None:
    if rows >= ANALYZE_AFTER_ROWS:
        session.connection().exec_driver_sql(f"ANALYZE {table}")


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
            f"INSERT INTO findings ({columns}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            f"ON CONFLICT (audit_id, example_key, kind) DO UPDATE SET {updates}"
        )
        connection = session.connection()
        for start in range(0, len(rows), EXECUTEMANY_CHUNK_ROWS):
            chunk = rows[start : start + EXECUTEMANY_CHUNK_ROWS]
            connection.exec_driver_sql(
                sql, [(audit_id, *row[:6], dumps_json(row[6]) if row[6] else "{}") for row in chunk]
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
    session: Session, audit_id: int, top: int | None = None, kind: str | None = None
) -> list[Finding]:
    """An audit's findings by rank (best first), optionally the first `top` and one kind."""
    query = select(Finding).where(Finding.audit_id == audit_id)
    if kind is not None:
        query = query.where(Finding.kind == kind)
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
) -> FindingPage:
    """Findings of an audit filtered by kind, given label (class) and decision, sorted and paged.

    `decision`: "undecided" or one of DECISIONS, as it stands now (the example's latest decision
    in this dataset, whichever audit prompted it). `order`: rank (best first), score (lowest
    first), -score (highest first) or label.
    """
    if decision is not None and decision not in FINDING_DECISION_FILTERS:
        raise AuditorError(f"decision filter must be one of {', '.join(FINDING_DECISION_FILTERS)}, not {decision!r}")
    if order not in FINDING_ORDERS:
        raise AuditorError(f"order must be one of {', '.join(FINDING_ORDERS)}, not {order!r}")
    if offset < 0 or (limit is not None and limit < 0):
        raise AuditorError("offset and limit must not be negative")
    audit = get_audit(session, audit_id)
    same_example = (Review.dataset_id == audit.dataset_id) & (Review.example_key == Finding.example_key)
    base = [Finding.audit_id == audit_id]
    if kind is not None:
        base.append(Finding.kind == kind)
    if label is not None:
        base.append(Finding.label == label)
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
    total = int(session.scalar(select(func.count()).select_from(Finding).where(*counted)) or 0)
    sort = {
        "rank": (Finding.rank, Finding.id),
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
                select(Review).where(Review.dataset_id == audit.dataset_id, Review.example_key.in_(chunk))
            )
        )
    return FindingPage([(f, reviews.get(f.example_key)) for f in findings], total)


def finding_kinds(session: Session, audit_id: int) -> list[str]:
    """The kinds of finding an audit stored ("label", "helpful:t3", ...)."""
    return list(session.scalars(select(Finding.kind).where(Finding.audit_id == audit_id).distinct().order_by(Finding.kind)))


def findings_for_example(session: Session, audit_id: int, example_index: int) -> list[Finding]:
    """An audit's findings about the example at `example_index`, label check first."""
    rows = session.scalars(
        select(Finding).where(Finding.audit_id == audit_id, Finding.example_index == example_index)
    )
    return sorted(rows, key=lambda f: (f.kind != "label", f.kind, f.rank))


def neighbour_findings(session: Session, audit_id: int, kind: str, rank: int) -> tuple[int | None, int | None]:
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
    finding = session.get(Finding, finding_id) if _in_range(finding_id) else None
    if finding is None:
        raise NotFound(f"no finding with id {finding_id}")
    return finding


# ---------------------------------------------------------------------------------------------
# reviews


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


def _check_decision(decision: str, new_label: int | None) -> None:
    if decision not in DECISIONS:
        raise AuditorError(f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
    if decision == "relabelled" and (new_label is None or new_label < 0):
        raise AuditorError("a relabel decision needs the new label (a non-negative integer)")
    if decision != "relabelled" and new_label is not None:
        raise AuditorError(f"a {decision} decision takes no new label")


def decide(
    session: Session,
    finding_id: int,
    decision: str,
    new_label: int | None = None,
    reviewer: str = "",
    note: str | None = None,
    expected_version: int | None = None,
    user_id: int | None = None,
) -> Review:
    """Record a reviewer's decision about the example behind a finding.

    `expected_version` is the version of the decision the reviewer saw: None means "no decision
    yet" (a first decision), an integer means "change decision version N". Anything else, or a
    concurrent reviewer winning the race (the unique (dataset, example_key) insert or the
    optimistic version check on update), raises `Conflict` naming what is there now.
    """
    _check_decision(decision, new_label)
    finding = get_finding(session, finding_id)
    dataset_id = session.scalar(select(Audit.dataset_id).where(Audit.id == finding.audit_id))
    assert dataset_id is not None
    review = get_review(session, dataset_id, finding.example_key)
    event = ReviewEvent(
        dataset_id=dataset_id, example_key=finding.example_key, decision=decision,
        new_label=new_label, reviewer=reviewer, user_id=user_id, note=note,
        finding_id=finding.id, audit_id=finding.audit_id, created_at=utcnow(),
    )  # fmt: skip
    if review is None:
        if expected_version is not None:
            raise Conflict(
                f"example {finding.example_key} has no decision yet, "
                f"but version {expected_version} was expected"
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
        try:
            with session.begin_nested():
                session.add(review)
                session.add(event)
        except IntegrityError:
            raise Conflict(
                f"example {finding.example_key} was decided by another reviewer just now"
            ) from None
        return review

    if expected_version is None or review.version != expected_version:
        raise Conflict(
            f"example {finding.example_key} was already decided: {review.decision} by "
            f"{review.reviewer or 'someone'} at {review.decided_at:%Y-%m-%d %H:%M} UTC "
            f"(version {review.version})"
        )
    try:
        with session.begin_nested():
            review.finding_id = finding.id
            review.decision = decision
            review.new_label = new_label
            review.reviewer = reviewer
            review.note = note
            review.decided_at = event.created_at
            session.flush()  # the version check happens here, before the event is added
            session.add(event)
    except StaleDataError:
        raise Conflict(
            f"example {finding.example_key} was changed by another reviewer just now"
        ) from None
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
    if review is None:
        raise Conflict(f"example {finding.example_key} has no decision to undo")
    if expected_version is not None and review.version != expected_version:
        raise Conflict(
            f"example {finding.example_key} was changed by {review.reviewer or 'someone'} "
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
    try:
        with session.begin_nested():
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
    except StaleDataError:
        raise Conflict(
            f"example {finding.example_key} was changed by another reviewer just now"
        ) from None
    return None if before is None else review


def next_unsettled_finding(
    session: Session,
    *,
    audit_id: int | None = None,
    dataset_id: int | None = None,
    kind: str | None = None,
    exclude: Iterable[int] = (),
) -> Finding | None:
    """The best-ranked finding whose example no reviewer has decided about yet.

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
    return session.scalar(query.order_by(Finding.rank, Finding.id).limit(1))


# ---------------------------------------------------------------------------------------------
# schedules

_INTERVAL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_INTERVAL_PART = re.compile(r"(\d+)([smhdw])")


def parse_interval(text: str) -> int:
    """Seconds in an interval like "90s", "15m", "6h", "1d", "1h30m"."""
    compact = text.strip().lower().replace(" ", "")
    parts = _INTERVAL_PART.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise AuditorError(f"cannot read interval {text!r}: use e.g. 30m, 6h, 1d or 1h30m")
    seconds = sum(int(n) * _INTERVAL_UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise AuditorError(f"interval {text!r} must be longer than zero")
    return seconds


def next_run_after(schedule: Schedule, after: datetime) -> datetime:
    """When the schedule is due next after `after` (cron expressions are read in UTC)."""
    if schedule.cron is not None:
        return croniter(schedule.cron, after).get_next(datetime)
    assert schedule.interval_seconds is not None
    return after + timedelta(seconds=schedule.interval_seconds)


def add_schedule(
    session: Session,
    dataset: Dataset,
    kind: str,
    *,
    params: dict[str, Any] | None = None,
    interval_seconds: int | None = None,
    cron: str | None = None,
    skip_unchanged: bool = True,
    now: datetime | None = None,
) -> Schedule:
    """A recurring audit, first due one interval (or the next cron time) from now."""
    if (interval_seconds is None) == (cron is None):
        raise AuditorError("give exactly one of an interval (--every) or a cron expression")
    if cron is not None and not croniter.is_valid(cron):
        raise AuditorError(f"invalid cron expression {cron!r}: use 5 fields, e.g. '0 3 * * *'")
    if interval_seconds is not None and interval_seconds <= 0:
        raise AuditorError("the interval must be longer than zero")
    schedule = Schedule(
        dataset_id=dataset.id,
        kind=kind,
        params=params or {},
        interval_seconds=interval_seconds,
        cron=cron,
        enabled=True,
        skip_unchanged=skip_unchanged,
    )
    schedule.next_run_at = next_run_after(schedule, now or utcnow())
    session.add(schedule)
    session.flush()
    return schedule


def get_schedule(session: Session, schedule_id: int) -> Schedule:
    """The schedule with id `schedule_id`, or `NotFound`."""
    schedule = session.get(Schedule, schedule_id) if _in_range(schedule_id) else None
    if schedule is None:
        raise NotFound(f"no schedule with id {schedule_id} (see `auditor schedule list`)")
    return schedule


def list_schedules(session: Session, dataset: Dataset | None = None) -> list[Schedule]:
    """Schedules by id, optionally of one dataset."""
    query = select(Schedule).order_by(Schedule.id)
    if dataset is not None:
        query = query.where(Schedule.dataset_id == dataset.id)
    return list(session.scalars(query))


def set_schedule_enabled(
    session: Session, schedule_id: int, enabled: bool, now: datetime | None = None
) -> Schedule:
    """Pause or resume. Resuming schedules the next run from now, so a long pause does not
    fire a backlog of runs at once."""
    schedule = get_schedule(session, schedule_id)
    if enabled and not schedule.enabled:
        schedule.next_run_at = next_run_after(schedule, now or utcnow())
    schedule.enabled = enabled
    session.flush()
    return schedule


def remove_schedule(session: Session, schedule_id: int) -> None:
    """Delete a schedule (its past audits stay, with schedule_id cleared)."""
    get_schedule(session, schedule_id)
    session.execute(delete(Schedule).where(Schedule.id == schedule_id))


def due_schedules(
    session: Session, now: datetime | None = None, *, lock: bool = False
) -> list[Schedule]:
    """Enabled schedules whose next run is at or before `now`, earliest first.

    With `lock=True` the rows are locked FOR UPDATE SKIP LOCKED on PostgreSQL, so two beat
    processes never both run the same schedule.
    """
    query = (
        select(Schedule)
        .where(Schedule.enabled.is_(True), Schedule.next_run_at <= (now or utcnow()))
        .order_by(Schedule.next_run_at, Schedule.id)
    )
    if lock:
        query = query.with_for_update(skip_locked=True)
    return list(session.scalars(query))


def mark_schedule_ran(session: Session, schedule: Schedule, now: datetime | None = None) -> None:
    """Stamp a run (or a deliberate skip) and move `next_run_at` past now."""
    now = now or utcnow()
    schedule.last_run_at = now
    schedule.next_run_at = next_run_after(schedule, now)
    session.flush()


def last_audited_hash(session: Session, schedule_id: int) -> str | None:
    """Content hash of the snapshot the schedule's newest non-failed audit looked at.

    With `skip_unchanged`, a due schedule whose dataset still has this hash need not run.
    """
    return session.scalar(
        select(Snapshot.content_hash)
        .join(Audit, Audit.snapshot_id == Snapshot.id)
        .where(
            Audit.schedule_id == schedule_id, Audit.status.in_(("queued", "running", "succeeded"))
        )
        .order_by(Audit.id.desc())
        .limit(1)
    )
