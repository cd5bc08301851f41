from __future__ import annotations

import numpy as np
from factories import make_examples, with_rows
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from auditor.store import datasets as dataset_store
from auditor.store.models import SnapshotExample


def test_first_scan_counts_every_example_as_added(sessions: sessionmaker[Session]) -> None:
    examples = make_examples(50)
    with sessions() as s, s.begin():
        dataset = dataset_store.create_dataset(s, "ds", "/data/ds.npz", "npz")
        snapshot, diff = dataset_store.record_snapshot(s, dataset, examples)
    assert diff.new_snapshot and diff.previous_snapshot_id is None
    assert (diff.added, diff.changed, diff.removed, diff.unchanged) == (50, 0, 0, 0)
    with sessions() as s:
        assert dataset_store.snapshot_keys(s, snapshot.id) == examples.keys
        assert sum(dataset_store.label_counts(s, snapshot.id).values()) == 50


def test_unchanged_content_reuses_the_latest_snapshot(sessions: sessionmaker[Session]) -> None:
    examples = make_examples(30)
    with sessions() as s, s.begin():
        dataset = dataset_store.create_dataset(s, "ds", "/data/ds.npz", "npz")
        first, _ = dataset_store.record_snapshot(s, dataset, examples)
        again, diff = dataset_store.record_snapshot(s, dataset, examples)
        assert again.id == first.id and not diff.new_snapshot
        assert (diff.added, diff.changed, diff.removed, diff.unchanged) == (0, 0, 0, 30)
        assert s.scalar(select(func.count()).select_from(SnapshotExample)) == 30


def test_rescan_counts_added_changed_and_removed(sessions: sessionmaker[Session]) -> None:
    old = make_examples(10)
    x, y = old.x.copy(), old.y.copy()
    y[2] = (y[2] + 1) % 3  # relabelled in place -> changed
    x[5, 0] += 1.0  # edited in place -> changed
    # Row 9 deleted and two rows appended: the first new row lands at index 9.
    x = np.concatenate([np.delete(x, 9, axis=0), np.full((2, 4), 9.0)])
    y = np.concatenate([np.delete(y, 9), [0, 1]])
    new = with_rows(old, x.astype(np.float32), y)
    with sessions() as s, s.begin():
        dataset = dataset_store.create_dataset(s, "ds", "/data/ds.npz", "npz")
        first, _ = dataset_store.record_snapshot(s, dataset, old)
        second, diff = dataset_store.record_snapshot(s, dataset, new)
    assert second.id != first.id and second.n == 11
    assert diff.previous_snapshot_id == first.id
    # Index 9 now holds a different, new example: changed (with rows 2 and 5), not removed+added.
    assert (diff.added, diff.changed, diff.removed, diff.unchanged) == (1, 3, 0, 7)


def test_reordering_rows_is_a_new_snapshot_without_changes() -> None:
    assert dataset_store.diff_keys(["a", "b", "c"], ["c", "a", "b"]) == (0, 0, 0, 3)


def test_growing_and_shrinking_count_added_and_removed() -> None:
    assert dataset_store.diff_keys(["a", "b"], ["a", "b", "c", "d"]) == (2, 0, 0, 2)
    assert dataset_store.diff_keys(["a", "b", "c"], ["a"]) == (0, 0, 2, 1)
    assert dataset_store.diff_keys(["a", "b", "c"], ["b", "c"]) == (0, 0, 1, 2)


@given(
    st.lists(st.integers(0, 30), unique=True, max_size=25),
    st.lists(st.integers(0, 30), unique=True, max_size=25),
)
def test_diff_counts_never_overlap_and_add_up(old_ids: list[int], new_ids: list[int]) -> None:
    old, new = [f"k{i}" for i in old_ids], [f"k{i}" for i in new_ids]
    added, changed, removed, unchanged = dataset_store.diff_keys(old, new)
    assert min(added, changed, removed, unchanged) >= 0
    assert added + changed + unchanged == len(new)
    assert removed + changed + unchanged == len(old)
