from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from auditor.data.base import Examples
from auditor.data.bundled import write_npz
from auditor.data.keys import example_keys
from auditor.data.lazy import NpyMember
from auditor.data.npz import load_npz
from auditor.data.options import DataOptions
from auditor.errors import DataError


def _save(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    x=hnp.arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 6), st.integers(1, 6))),
    seed=st.integers(0, 2**16),
)
def test_images_round_trip_with_the_same_keys(tmp_path: Path, x: np.ndarray, seed: int) -> None:
    y = np.random.default_rng(seed).integers(0, 4, size=len(x))
    examples = Examples(x=x, y=y, keys=example_keys(x, y))
    loaded = load_npz(write_npz(examples, tmp_path / "data.npz"))
    assert loaded.is_image and loaded.x.dtype == np.uint8
    np.testing.assert_array_equal(loaded.x, x)
    assert loaded.keys == examples.keys
    in_place = load_npz(write_npz(examples, tmp_path / "plain.npz", compressed=False), lazy=True)
    assert isinstance(in_place.x, NpyMember) and in_place.keys == examples.keys
    np.testing.assert_array_equal(np.asarray(in_place.x), x)
    rows = np.random.default_rng(seed).integers(0, len(x), 5)
    np.testing.assert_array_equal(in_place.x[rows], x[rows])


FEATURE_ELEMENTS = {
    np.float64: st.floats(-1e30, 1e30),
    np.float32: st.floats(allow_nan=False, allow_infinity=False, width=32),
    np.int32: st.integers(-(2**31), 2**31 - 1),
}


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    x=st.sampled_from(list(FEATURE_ELEMENTS)).flatmap(
        lambda dtype: hnp.arrays(
            dtype,
            st.tuples(st.integers(1, 12), st.integers(1, 5)),
            elements=FEATURE_ELEMENTS[dtype],
        )
    )
)
def test_numeric_features_load_as_float32(tmp_path: Path, x: np.ndarray) -> None:
    y = np.arange(len(x)) % 2
    loaded = load_npz(_save(tmp_path / "f.npz", x=x, y=y.astype(np.float64)))
    assert not loaded.is_image and loaded.x.dtype == np.float32
    np.testing.assert_array_equal(loaded.x, x.astype(np.float32))
    assert loaded.y.dtype == np.int64 and loaded.keys == example_keys(loaded.x, loaded.y)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((3, 2))}, "missing array y"),
        ({"y": np.zeros(3, dtype=int)}, "missing array x"),
        ({"x": np.zeros((3, 2)), "y": np.zeros(4, dtype=int)}, "x has 3 rows but y has 4 labels"),
        ({"x": np.zeros((2, 2)), "y": np.array([0.0, 0.5])}, "labels must be integers"),
        ({"x": np.zeros((2, 2)), "y": np.array(["a", "b"])}, "labels must be integers"),
        ({"x": np.zeros((2, 2)), "y": np.array([0, -1])}, "labels must be >= 0"),
        ({"x": np.zeros((2, 2)), "y": np.array([0, np.nan])}, "NaN or infinity"),
        ({"x": np.array([[0.0, np.nan], [1, 1]]), "y": np.array([0, 1])}, "first in row 0"),
        ({"x": np.array([[0.0], [np.inf]]), "y": np.array([0, 1])}, "first in row 1"),
        ({"x": np.zeros((0, 2)), "y": np.zeros(0, dtype=int)}, "empty"),
        ({"x": np.array([["a"], ["b"]]), "y": np.array([0, 1])}, "x must be numeric"),
    ],
)
@pytest.mark.parametrize("lazy", [False, True], ids=["loaded", "lazy"])
def test_bad_arrays_are_one_line_errors_naming_the_file(
    tmp_path: Path, arrays: dict[str, np.ndarray], message: str, lazy: bool
) -> None:
    if lazy and "x" in arrays and arrays["x"].dtype == np.float64:
        arrays = {**arrays, "x": arrays["x"].astype(np.float32)}  # read in place: float32 rows
    path = _save(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message) as caught:
        load_npz(path, lazy=lazy)
    assert str(caught.value).startswith(str(path)) and "\n" not in str(caught.value)


def test_missing_and_corrupt_files_are_data_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_npz(tmp_path / "absent.npz")
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_npz(corrupt)


def test_pickled_object_arrays_are_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.array([{"a": 1}, None], dtype=object), y=np.array([0, 1]))
    path = tmp_path / "pickled.npz"
    path.write_bytes(buffer.getvalue())
    with pytest.raises(DataError, match="without pickle"):
        load_npz(path)


def test_class_names_and_groups_are_kept(tmp_path: Path) -> None:
    path = _save(
        tmp_path / "named.npz",
        x=np.zeros((3, 2)),
        y=np.array([0, 1, 1]),
        class_names=np.array(["cat", "dog"]),
        groups=np.array(["a", "b", "a"]),
    )
    loaded = load_npz(path)
    assert loaded.class_names == ["cat", "dog"] and list(loaded.groups) == ["a", "b", "a"]
    bad = _save(
        tmp_path / "short.npz",
        x=np.zeros((3, 2)),
        y=np.array([0, 1, 2]),
        class_names=np.array(["cat"]),
    )
    with pytest.raises(DataError, match="label 2 has no entry in class_names"):
        load_npz(bad)


def test_large_uncompressed_arrays_stay_on_disk_and_compressed_ones_load(tmp_path: Path) -> None:
    """By size (`DataOptions.stream_bytes`, AUDITOR_STREAM_BYTES): an array too large to hold is
    read in place; one stored compressed cannot be, so it loads whole as before."""
    x = np.random.default_rng(0).normal(size=(1000, 8)).astype(np.float32)
    y = np.arange(1000) % 3
    plain, packed = _save(tmp_path / "plain.npz", x=x, y=y), tmp_path / "packed.npz"
    np.savez_compressed(packed, x=x, y=y)
    small = DataOptions(stream_bytes=1000)
    streamed = load_npz(plain, options=small)
    assert isinstance(streamed.x, NpyMember) and not streamed.is_image
    assert streamed.keys == example_keys(x, y)
    np.testing.assert_array_equal(streamed.x[10:20], x[10:20])
    assert isinstance(load_npz(packed, options=small).x, np.ndarray)
    at_limit = DataOptions(stream_bytes=x.nbytes)  # at or under the limit: loaded
    assert isinstance(load_npz(plain, options=at_limit).x, np.ndarray)


def test_two_stream_limits_in_one_process_read_the_same_npz_alike(tmp_path: Path) -> None:
    """Two configurations side by side: with one limit the file is read in place a batch at a
    time, with the other it is loaded whole, and both give the same arrays and keys."""
    x = np.random.default_rng(1).normal(size=(500, 6)).astype(np.float32)
    y = np.arange(500) % 4
    path = _save(tmp_path / "plain.npz", x=x, y=y)
    streamed = load_npz(path, options=DataOptions(stream_bytes=0))
    loaded = load_npz(path, options=DataOptions(stream_bytes=x.nbytes * 2))
    assert isinstance(streamed.x, NpyMember) and isinstance(loaded.x, np.ndarray)
    np.testing.assert_array_equal(np.asarray(streamed.x), loaded.x)
    np.testing.assert_array_equal(streamed.y, loaded.y)
    assert streamed.keys == loaded.keys == example_keys(x, y)
