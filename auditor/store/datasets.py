"""Datasets and their snapshots: registration, content keys per example, snapshot diffs.

Each function takes the caller's `Session` and never commits: the caller owns the unit of work.
Missing rows raise `NotFound`, lost races raise `Conflict`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from auditor.data.base import Examples
from auditor.data.keys import content_hash
from auditor.errors import Conflict, NotFound
from auditor.store._sql import (
    add_unique,
    bulk_insert,
    in_chunks,
)
from auditor.store.models import (
    Dataset,
    Snapshot,
    SnapshotExample,
)


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
    bulk_insert(session, SnapshotExample.__table__, rows)  # type: ignore[arg-type]
    diff = SnapshotDiff(
        previous.id if previous is not None else None, True, added, changed, removed, unchanged
    )
    return snapshot, diff


def snapshot_holds(session: Session, snapshot_id: int, keys: Iterable[str]) -> set[str]:
    """Which of `keys` the snapshot holds."""
    held: set[str] = set()
    for chunk in in_chunks(sorted(set(keys))):
        held.update(
            session.scalars(
                select(SnapshotExample.example_key).where(
                    SnapshotExample.snapshot_id == snapshot_id,
                    SnapshotExample.example_key.in_(chunk),
                )
            )
        )
    return held
