"""Records of stored artifacts (trained weights, curvature factors); the files are
`auditor.artifacts`'s.

Each function takes the caller's `Session` and never commits: the caller owns the unit of work.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from auditor.store.models import Artifact, Dataset, utcnow


def find_artifact(session: Session, key: str) -> Artifact | None:
    return session.scalar(select(Artifact).where(Artifact.key == key))


def mark_used(session: Session, key: str) -> None:
    """Stamp a use of the artifact with `key`, if it is still recorded."""
    row = find_artifact(session, key)
    if row is not None:
        row.last_used_at, row.uses = utcnow(), row.uses + 1


def record_artifact(
    session: Session,
    *,
    kind: str,
    key: str,
    path: str,
    size: int,
    dataset_id: int | None,
    meta: dict,
) -> bool:
    """Record a stored file; False when a concurrent writer recorded the same key first (same
    content: theirs is kept)."""
    now = utcnow()
    row = Artifact(
        kind=kind, key=key, path=path, bytes=size, dataset_id=dataset_id, meta=meta,
        created_at=now, last_used_at=now,
    )  # fmt: skip
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        return False
    return True


def delete_artifact(session: Session, artifact_id: int) -> None:
    row = session.get(Artifact, artifact_id)
    if row is not None:
        session.delete(row)


def artifacts_with_dataset(session: Session) -> list[tuple[Artifact, str | None]]:
    """Every artifact by id with the name of the data set it was fitted on (None: none)."""
    rows = session.execute(
        select(Artifact, Dataset.name)
        .outerjoin(Dataset, Dataset.id == Artifact.dataset_id)
        .order_by(Artifact.id)
    )
    return [(a, name) for a, name in rows]
