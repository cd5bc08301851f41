"""SQLAlchemy 2 models: one schema for SQLite (embedded) and PostgreSQL (service).

Portability choices:
- JSON columns are `JSON` everywhere and `JSONB` on PostgreSQL (indexable, compact).
- Timestamps are timezone-aware UTC in Python on both backends (`UTCDateTime`), because SQLite
  has no time zones and would otherwise hand back naive datetimes.
- Status and decision columns are short strings guarded by CHECK constraints rather than native
  enums, so adding a value is a plain migration on both backends.
- A naming convention names every constraint, which Alembic batch mode on SQLite needs.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

AUDIT_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED_STATUSES = ("succeeded", "failed", "cancelled")
DECISIONS = ("confirmed", "relabelled", "dismissed")
# A review event is a decision or the undo of the latest standing one (append-only history).
EVENT_KINDS = (*DECISIONS, "undone")
ROLES = ("viewer", "reviewer", "admin")

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONType = JSON().with_variant(JSONB(), "postgresql")
# Findings are the one table that can pass 2**31 rows over a service's life; SQLite needs plain
# INTEGER for its rowid alias to autoincrement.
BigIdType = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    """Now, timezone-aware in UTC (the only kind of datetime stored)."""
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python.

    Naive datetimes are taken to be UTC already. SQLite stores the naive UTC value; PostgreSQL
    stores `timestamptz`.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    """Declarative base; its metadata is Alembic's target."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONType}


class Dataset(Base):
    """A named data source (a file or folder) that is re-read on each scan."""

    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    source_path: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(String(32))
    # Reader options (label/group column, resize) so a re-scan reads the source the same way.
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Class names as the source names them (ImageFolder folders, CSV label values, NPZ
    # `class_names`), refreshed at each scan; None when the source only has indices.
    class_names: Mapped[list[str] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    snapshots: Mapped[list[Snapshot]] = relationship(
        back_populates="dataset", order_by="Snapshot.id", passive_deletes=True
    )


class Snapshot(Base):
    """The content of a dataset at one scan: its hash and, in `snapshot_examples`, its keys.

    A new snapshot is recorded only when the content hash changes, so audits can tell whether
    their data is current and schedules can skip unchanged datasets.
    """

    __tablename__ = "snapshots"

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), index=True
    )
    content_hash: Mapped[str] = mapped_column(String(64))
    n: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    dataset: Mapped[Dataset] = relationship(back_populates="snapshots")


class SnapshotExample(Base):
    """One example of a snapshot: row index in the source, content key and label.

    A row per example (rather than one JSON blob per snapshot) keeps a 100k-example snapshot a
    bulk insert, lets SQL answer "which row holds key K" and label counts, and never needs the
    whole list in memory on the database side.
    """

    __tablename__ = "snapshot_examples"

    snapshot_id: Mapped[int] = mapped_column(
        ForeignKey("snapshots.id", ondelete="CASCADE"), primary_key=True
    )
    example_index: Mapped[int] = mapped_column(primary_key=True)
    example_key: Mapped[str] = mapped_column(String(64))
    label: Mapped[int | None]
    # Where a person finds the example: its file relative to the data set's root (ImageFolder)
    # or "row N" of the file (NPZ, CSV; CSV rows count data lines from 1 after the header).
    locator: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_snapshot_examples_snapshot_key", "snapshot_id", "example_key"),)


class Audit(Base):
    """One analysis run over one snapshot; the row is also its progress and cancel channel."""

    __tablename__ = "audits"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    dataset_id: Mapped[int] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), index=True
    )
    snapshot_id: Mapped[int] = mapped_column(ForeignKey("snapshots.id", ondelete="CASCADE"))
    test_dataset_id: Mapped[int | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL")
    )
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    progress: Mapped[float] = mapped_column(default=0.0, server_default="0")
    message: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    task_id: Mapped[str | None] = mapped_column(String(200))
    cancel_requested: Mapped[bool] = mapped_column(default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    # times a run started (a poison audit that kills its worker is failed after a bound)
    deliveries: Mapped[int] = mapped_column(default=0, server_default="0")
    schedule_id: Mapped[int | None] = mapped_column(ForeignKey("schedules.id", ondelete="SET NULL"))
    # What the analysis reports about the whole audit (recall, groups, success rate, solver).
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSONType)

    __table_args__ = (
        CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')",
            name="status",
        ),
    )

    dataset: Mapped[Dataset] = relationship(foreign_keys=[dataset_id])
    snapshot: Mapped[Snapshot] = relationship()
    test_dataset: Mapped[Dataset | None] = relationship(foreign_keys=[test_dataset_id])


class Finding(Base):
    """One ranked result row of an audit; unique per (audit, example_key, kind) so storing is
    idempotent when a worker retries."""

    __tablename__ = "findings"

    id: Mapped[int] = mapped_column(BigIdType, primary_key=True)
    audit_id: Mapped[int] = mapped_column(ForeignKey("audits.id", ondelete="CASCADE"))
    example_index: Mapped[int]
    example_key: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    score: Mapped[float] = mapped_column(index=True)
    rank: Mapped[int]
    label: Mapped[int | None]
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # A label check's estimate of the wrong labels: True for its members (the review workload),
    # False for examples that are ranked only. Other kinds flag what their analysis says.
    flagged: Mapped[bool] = mapped_column(default=False, server_default=false())
    # Position in the review queue: the rank until reviewers' decisions re-rank what is left
    # (decided findings keep theirs).
    queue_rank: Mapped[int] = mapped_column(default=0, server_default="0")

    __table_args__ = (
        UniqueConstraint("audit_id", "example_key", "kind"),
        # "top N of an audit" and "next unsettled by rank" both walk this index.
        Index("ix_findings_audit_rank", "audit_id", "rank"),
        # "the flagged set in queue order" (the review workload) walks this one.
        Index("ix_findings_audit_flagged_queue", "audit_id", "flagged", "queue_rank"),
    )

    audit: Mapped[Audit] = relationship()


class Review(Base):
    """A reviewer's decision about one example of a dataset.

    Keyed by (dataset, example_key), not by finding, so the decision still holds for the same
    example in later audits and re-scans. `version` is SQLAlchemy's optimistic-lock counter: an
    UPDATE that raced another reviewer's matches no row and fails instead of overwriting.
    """

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(primary_key=True)
    finding_id: Mapped[int | None] = mapped_column(
        BigIdType, ForeignKey("findings.id", ondelete="SET NULL"), index=True
    )
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    example_key: Mapped[str] = mapped_column(String(64))
    decision: Mapped[str] = mapped_column(String(16))
    new_label: Mapped[int | None]
    reviewer: Mapped[str] = mapped_column(String(200))
    note: Mapped[str | None] = mapped_column(Text)
    decided_at: Mapped[datetime] = mapped_column(default=utcnow)
    version: Mapped[int] = mapped_column(nullable=False)

    __mapper_args__ = {"version_id_col": version}
    __table_args__ = (
        UniqueConstraint("dataset_id", "example_key"),
        CheckConstraint(
            "decision IN ('confirmed', 'relabelled', 'dismissed')",
            name="decision",
        ),
    )


class ReviewEvent(Base):
    """One entry of the append-only decision history of an example of a dataset.

    `reviews` holds the decision standing now, derived from these events in the same
    transaction (`review_store.decide`, `review_store.undo`): an event of a decision kind stands until a later
    one replaces it; an `undone` event withdraws the latest standing decision (its id in
    `undoes_id`), bringing back the one before it, or none. Nothing here is updated or deleted,
    so "who decided what, and when" is always answerable.
    """

    __tablename__ = "review_events"

    id: Mapped[int] = mapped_column(BigIdType, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    example_key: Mapped[str] = mapped_column(String(64))
    decision: Mapped[str] = mapped_column(String(16))
    new_label: Mapped[int | None]
    reviewer: Mapped[str] = mapped_column(String(200))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    note: Mapped[str | None] = mapped_column(Text)
    # What prompted it: the finding (and its audit) the reviewer was looking at.
    finding_id: Mapped[int | None] = mapped_column(
        BigIdType, ForeignKey("findings.id", ondelete="SET NULL")
    )
    audit_id: Mapped[int | None] = mapped_column(ForeignKey("audits.id", ondelete="SET NULL"))
    undoes_id: Mapped[int | None] = mapped_column(BigIdType)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        Index("ix_review_events_example", "dataset_id", "example_key", "id"),
        CheckConstraint(
            "decision IN ('confirmed', 'relabelled', 'dismissed', 'undone')",
            name="decision",
        ),
    )


class User(Base):
    """Someone who signs in to the review app or decides from the CLI.

    Roles: a viewer reads; a reviewer also decides; an admin also manages users. Passwords are
    stored as PBKDF2-SHA256 hashes (`auditor.auth`), never in clear.

    An id is never given to a second user: on SQLite the table is AUTOINCREMENT (without it
    SQLite hands a removed user's id, the largest, to the next user added, and anything still
    naming the old id would name the new user); PostgreSQL's sequence never goes back anyway.
    """

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        CheckConstraint("role IN ('viewer', 'reviewer', 'admin')", name="role"),
        {"sqlite_autoincrement": True},
    )


class ApiToken(Base):
    """A bearer token for scripts (`POST /api/token`); only its SHA-256 is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]

    user: Mapped[User] = relationship()


class WebSession(Base):
    """A signed-in browser (`POST /login`), kept on the server so that it can be ended: the
    cookie holds a random session key, this row only its SHA-256. Signing out deletes the row;
    a new password, a new role or removing the user deletes all of the user's rows (removal
    also by the foreign key's cascade), so a copied cookie stops working at once."""

    __tablename__ = "web_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class LoginFailure(Base):
    """One failed sign-in (`POST /login` or `POST /api/token`), by the user name it tried and the
    client address it came from. Kept in the database so that every app server behind one
    address counts the same failures; rows older than the window are deleted as new ones come."""

    __tablename__ = "login_failures"

    id: Mapped[int] = mapped_column(BigIdType, primary_key=True)
    user_name: Mapped[str] = mapped_column(String(200))
    address: Mapped[str] = mapped_column(String(64))
    failed_at: Mapped[datetime] = mapped_column(index=True)

    __table_args__ = (
        Index("ix_login_failures_user_name", "user_name", "failed_at"),
        Index("ix_login_failures_address", "address", "failed_at"),
    )


class Artifact(Base):
    """A stored fitted thing (trained weights, curvature factors): a safetensors file under the
    artifact folder, found again by `key`, the hash of everything it depends on (model weights,
    the examples' content, settings). Recorded only once the file is complete, so a reader never
    picks up a half-written one."""

    __tablename__ = "artifacts"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    key: Mapped[str] = mapped_column(String(64), unique=True)
    path: Mapped[str] = mapped_column(Text)  # relative to the artifact folder
    bytes: Mapped[int] = mapped_column(BigInteger)
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"))
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime] = mapped_column(default=utcnow)
    uses: Mapped[int] = mapped_column(default=0, server_default="0")


class Schedule(Base):
    """A recurring audit of a dataset, every `interval_seconds` or on a `cron` expression."""

    __tablename__ = "schedules"

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    interval_seconds: Mapped[int | None]
    cron: Mapped[str | None] = mapped_column(String(100))
    enabled: Mapped[bool] = mapped_column(default=True, server_default=true())
    last_run_at: Mapped[datetime | None]
    next_run_at: Mapped[datetime | None] = mapped_column(index=True)
    # Skip a due run when the dataset's content hash equals the one last audited.
    skip_unchanged: Mapped[bool] = mapped_column(default=True, server_default=true())

    __table_args__ = (
        CheckConstraint(
            "(interval_seconds IS NULL) <> (cron IS NULL)",
            name="interval_xor_cron",
        ),
    )

    dataset: Mapped[Dataset] = relationship()
