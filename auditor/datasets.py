"""Registering and scanning data sets: the library behind `auditor dataset ...`, audit creation
and scheduled scans.

Every function reads the source files completely *before* it opens a write transaction: a bad
file leaves the database as it was, and SQLite's write lock is not held while a large source is
decoded. `snapshotted` is that sequence, written once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from auditor.data.base import Examples
from auditor.data.imagefolder import parse_resize
from auditor.data.load import sniff_format
from auditor.data.options import DataOptions
from auditor.errors import Conflict, DataError, NotFound
from auditor.resolve import load_dataset_source, read_source
from auditor.store import datasets as dataset_store
from auditor.store import reviews as review_store
from auditor.store.datasets import SnapshotDiff
from auditor.store.models import Dataset, Snapshot


@dataclass
class Snapshotted:
    """Inside `snapshotted`'s write transaction: the data set(s) with fresh snapshots, and the
    examples that were read (what `audits.create_audit` checks when it is handed this)."""

    session: Session
    dataset: Dataset
    snapshot: Snapshot
    diff: SnapshotDiff
    examples: Examples
    test: Dataset | None = None
    test_snapshot: Snapshot | None = None
    test_examples: Examples | None = None


@contextmanager
def snapshotted(
    sessions: sessionmaker[Session],
    dataset: str | int,
    test: str | None = None,
    check: Callable[[Examples, Examples | None], None] | None = None,
    *,
    data: DataOptions,
) -> Iterator[Snapshotted]:
    """Re-read a data set (by name or id) and optionally a test set (as `data` says), then open one write
    transaction that records a snapshot of each where the content changed; the caller adds its
    own writes (an audit row) to the same transaction, which commits when the block ends."""
    with sessions() as s:
        row = _get(s, dataset)
        test_row = dataset_store.get_dataset(s, test) if test else None
        dataset_id, test_id = row.id, test_row.id if test_row is not None else None
    # read the files outside any transaction (see the module docstring)
    examples = load_dataset_source(row, data=data)
    test_examples = load_dataset_source(test_row, data=data) if test_row is not None else None
    if check is not None:  # refuse what the caller cannot use before anything is written
        check(examples, test_examples)
    with sessions() as s, s.begin():
        row = dataset_store.get_dataset_by_id(s, dataset_id)
        snapshot, diff = dataset_store.record_snapshot(s, row, examples)
        out = Snapshotted(s, row, snapshot, diff, examples, test_examples=test_examples)
        if test_id is not None and test_examples is not None:
            out.test = dataset_store.get_dataset_by_id(s, test_id)
            out.test_snapshot, _ = dataset_store.record_snapshot(s, out.test, test_examples)
        yield out


# Names people type, read and pass between commands: letters, digits, dot, dash and underscore,
# starting with a letter or digit, at most NAME_MAX characters. No markup, paths, spaces or
# control characters, so a name can never break a table, a terminal or a file name.
NAME_MAX = 64
_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{NAME_MAX - 1}}}")
# C0 controls, DEL and C1 controls: never in a name someone types to sign in or to look up
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def check_name(name: str, what: str) -> None:
    """Refuse a name outside the documented character set, before anything is read or stored.
    (`fullmatch`: `$` would let a trailing newline through.)"""
    if not _NAME.fullmatch(name or ""):
        raise DataError(
            f"{what} name {_shown(name)} is not allowed: use 1-{NAME_MAX} letters, digits, '.', '-' or '_', "
            "starting with a letter or digit"
        )


def check_lookup_name(name: str, what: str) -> None:
    """Refuse a name to look up (sign-in, `--reviewer`) that holds a control character or is not
    text: no name is stored with one, and PostgreSQL refuses a NUL outright (a 503 where a 400
    is right). Only those: a name stored before today's character set still signs in."""
    if _CONTROL.search(name) or not _encodable(name):
        raise DataError(f"{what} name {_shown(name)} holds a control character or is not text")


def check_free_text(text: str, what: str) -> None:
    """Refuse free text (a note) that no database can store: a NUL (PostgreSQL refuses it) or
    a lone surrogate (not encodable as UTF-8). Newlines and tabs are fine in a note."""
    if "\x00" in text:
        raise DataError(f"{what} holds a NUL character, which cannot be stored")
    if not _encodable(text):
        raise DataError(f"{what} holds an unpaired surrogate (\\ud800-\\udfff), which is not text")


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(name: str) -> str:
    """A name as an error message shows it: quoted, escaped, cut at 40 characters."""
    return repr(name if len(name) <= 40 else name[:40] + "...")


def _get(session: Session, dataset: str | int) -> Dataset:
    return dataset_store.get_dataset_by_id(session, dataset) if isinstance(dataset, int) else dataset_store.get_dataset(session, dataset)


def find_dataset(session: Session, name: str) -> Dataset | None:
    try:
        return dataset_store.get_dataset(session, name)
    except NotFound:
        return None


def reader_options(label_column: str | None, group_column: str | None, resize: str | None) -> dict[str, Any]:
    """What a re-scan needs to read the source the same way (stored with the dataset)."""
    options: dict[str, Any] = {}
    if label_column is not None:
        options["label_column"] = label_column
    if group_column is not None:
        options["group_column"] = group_column
    if resize is not None:
        options["resize"] = list(parse_resize(resize))
    return options


def register_dataset(
    sessions: sessionmaker[Session],
    name: str,
    path: str | Path,
    *,
    format: str | None = None,
    options: dict[str, Any] | None = None,
    update: bool = False,
    data: DataOptions,
) -> dict[str, Any]:
    """Register a data set and record its first snapshot (with `update`: re-point an existing
    one and re-scan it). Returns {"created", "dataset", "snapshot", "diff"}."""
    check_name(name, "dataset")
    source = Path(path).expanduser().resolve()
    with sessions() as session:
        exists = find_dataset(session, name) is not None
    if exists and not update:
        raise Conflict(f"dataset {name!r} already exists; pass --update to re-read it")
    if not source.exists():
        raise DataError(f"{source}: no such file or folder")
    fmt = format or sniff_format(source)
    options = dict(options or {})
    examples: Examples = read_source(source, fmt, options, data=data)
    with sessions() as session, session.begin():
        dataset = find_dataset(session, name)
        created = dataset is None
        if dataset is None:
            dataset = dataset_store.create_dataset(session, name, str(source), fmt, options)
        elif update:
            dataset_store.update_dataset_source(session, dataset, str(source), fmt, options)
        else:
            raise Conflict(f"dataset {name!r} was just added by someone else")
        session.flush()
        snapshot, diff = dataset_store.record_snapshot(session, dataset, examples)
        return {"created": created, **_scan_doc(session, dataset, snapshot, diff)}


def scan_dataset(sessions: sessionmaker[Session], name: str, *, data: DataOptions) -> dict[str, Any]:
    """Re-read a data set's source; record a new snapshot if its content changed.
    Returns {"dataset", "snapshot", "diff"}."""
    with snapshotted(sessions, name, data=data) as snap:
        return _scan_doc(snap.session, snap.dataset, snap.snapshot, snap.diff)


def _scan_doc(session: Session, dataset: Dataset, snapshot: Snapshot, diff: SnapshotDiff) -> dict[str, Any]:
    return {
        "dataset": dataset_doc(session, dataset),
        "snapshot": snapshot_doc(snapshot),
        "diff": diff.to_dict(),
        "message": describe_diff(dataset.name, snapshot, diff),
    }


def dataset_doc(session: Session, dataset: Dataset) -> dict[str, Any]:
    latest = dataset_store.latest_snapshot(session, dataset.id)
    return {
        "id": dataset.id,
        "name": dataset.name,
        "source_path": dataset.source_path,
        "format": dataset.format,
        "options": dataset.options,
        "created_at": dataset.created_at.isoformat(),
        "n": latest.n if latest is not None else None,
        "snapshot_id": latest.id if latest is not None else None,
        "content_hash": latest.content_hash if latest is not None else None,
        "scanned_at": latest.created_at.isoformat() if latest is not None else None,
    }


def snapshot_doc(snapshot: Snapshot) -> dict[str, Any]:
    return {
        "id": snapshot.id,
        "content_hash": snapshot.content_hash,
        "n": snapshot.n,
        "created_at": snapshot.created_at.isoformat(),
    }


def describe_diff(name: str, snapshot: Snapshot, diff: SnapshotDiff) -> str:
    if not diff.new_snapshot:
        return f"dataset {name}: unchanged ({snapshot.n} examples, snapshot {snapshot.id})"
    if diff.previous_snapshot_id is None:
        return f"dataset {name}: {snapshot.n} examples (snapshot {snapshot.id})"
    return (
        f"dataset {name}: snapshot {snapshot.id}, {snapshot.n} examples: {diff.added} added, "
        f"{diff.changed} changed, {diff.removed} removed"
    )


def list_dataset_docs(sessions: sessionmaker[Session]) -> list[dict[str, Any]]:
    with sessions() as session:
        return [dataset_doc(session, dataset) for dataset in dataset_store.list_datasets(session)]


def show_dataset(sessions: sessionmaker[Session], name: str) -> dict[str, Any]:
    """A data set with its snapshots, the label counts of the newest and how many are reviewed."""
    with sessions() as session:
        dataset = dataset_store.get_dataset(session, name)
        doc = dataset_doc(session, dataset)
        snapshots = dataset_store.list_snapshots(session, dataset.id)
        doc["snapshots"] = [snapshot_doc(snapshot) for snapshot in snapshots]
        doc["label_counts"] = (
            {str(k): v for k, v in dataset_store.label_counts(session, snapshots[-1].id).items()}
            if snapshots
            else {}
        )
        doc["reviewed"] = len(review_store.settled_keys(session, dataset.id))
    return doc
