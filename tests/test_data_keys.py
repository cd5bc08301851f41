from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from auditor.data.keys import content_hash, example_key, example_keys

arrays = hnp.arrays(
    dtype=st.sampled_from([np.uint8, np.float32, np.float64, np.int64]),
    shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=5),
    elements={"allow_nan": False},
)


@given(arrays, st.integers(0, 1000))
def test_key_depends_only_on_content_and_label(x: np.ndarray, label: int) -> None:
    key = example_key(x, label)
    assert len(key) == 32 and int(key, 16) >= 0
    assert example_key(x.copy(), label) == key
    assert example_key(x.astype(x.dtype.newbyteorder(">")), label) == key
    assert example_key(np.asfortranarray(x), label) == key
    assert example_key(x, label + 1) != key


@given(arrays, st.integers(0, 9))
def test_key_changes_with_any_byte_dtype_or_shape(x: np.ndarray, label: int) -> None:
    key = example_key(x, label)
    flipped = x.copy()
    flipped.reshape(-1).view(np.uint8)[0] ^= 1
    assert example_key(flipped, label) != key
    column = x.reshape(-1, 1)
    if column.shape != x.shape:
        assert example_key(column, label) != key
    other = np.float64 if x.dtype != np.float64 else np.float32
    with np.errstate(over="ignore"):
        assert example_key(x.astype(other), label) != key


def test_duplicate_examples_get_distinct_stable_keys() -> None:
    x = np.zeros((3, 2), dtype=np.float32)
    y = np.array([1, 1, 2])
    keys = example_keys(x, y)
    assert keys[0] == example_key(x[0], 1) and len(set(keys)) == 3
    assert example_keys(x, y) == keys


@given(st.lists(st.text(min_size=1, max_size=8), min_size=2, unique=True))
def test_content_hash_is_order_sensitive(keys: list[str]) -> None:
    assert content_hash(keys) == content_hash(list(keys))
    assert content_hash(keys) != content_hash(keys[::-1])
