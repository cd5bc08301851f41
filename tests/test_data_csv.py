from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditor.data.csv import load_csv
from auditor.data.keys import example_keys
from auditor.errors import DataError


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


finite32 = st.floats(allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(finite32, finite32, st.integers(0, 5)), min_size=1, max_size=20))
def test_written_rows_read_back_exactly(
    tmp_path: Path, rows: list[tuple[float, float, int]]
) -> None:
    path = tmp_path / "data.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["a", "label", "b"])
        writer.writerows([(repr(a), label, repr(b)) for a, b, label in rows])
    examples = load_csv(path)
    expected = np.array([(a, b) for a, b, _ in rows], dtype=np.float32)
    np.testing.assert_array_equal(examples.x, expected)
    assert examples.y.tolist() == [label for _, _, label in rows]
    assert examples.feature_names == ["a", "b"] and examples.class_names is None
    assert examples.keys == example_keys(expected, examples.y)


@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(labels=st.lists(st.sampled_from(["cat", "dog", "emu", "1x"]), min_size=1, max_size=15))
def test_text_labels_map_to_sorted_class_names(tmp_path: Path, labels: list[str]) -> None:
    path = _write(tmp_path / "t.csv", "f,label\n" + "".join(f"1,{name}\n" for name in labels))
    examples = load_csv(path)
    assert examples.class_names == sorted(set(labels))
    assert [examples.class_names[i] for i in examples.y] == labels


def test_label_and_group_columns_can_be_named(tmp_path: Path) -> None:
    path = _write(tmp_path / "g.csv", "site,x1,x2,target\nA,1,2,0\nB,3,4,1.0\n\n")
    examples = load_csv(path, label_column="target", group_column="site")
    assert examples.feature_names == ["x1", "x2"] and examples.y.tolist() == [0, 1]
    assert examples.groups.tolist() == ["A", "B"]


def test_tsv_files_are_tab_separated(tmp_path: Path) -> None:
    examples = load_csv(_write(tmp_path / "t.tsv", "x\tlabel\n0.5\t1\n"))
    assert examples.x.tolist() == [[0.5]]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,b\n1,2\n", "no label column 'label' (columns: a, b); pass --label-column"),
        ("a,label\n1,0\nx,1\n", "column 'a' is not numeric ('x' on line 3)"),
        ("a,label\n1,0\nnan,1\n", "column 'a' has NaN or infinity on line 3"),
        ("a,label\n1,0\n,1\n", "column 'a' has a missing value on line 3"),
        ("a,label\n1,0.5\n", "must hold integers or class names, found '0.5' on line 2"),
        ("a,label\n1,-1\n", "label -1 on line 2 is negative"),
        ("a,label\n1,\n", "label column 'label' is empty on line 2"),
        ("a,label\n1,0,3\n", "line 2 has 3 fields, the header has 2"),
        ("a,label\n", "header but no rows"),
        ("", "the file is empty"),
        ("label\n1\n", "no feature columns"),
        ("a,a,label\n1,2,0\n", "column 'a' appears twice"),
    ],
)
def test_bad_csv_is_a_one_line_error_naming_the_file(
    tmp_path: Path, text: str, message: str
) -> None:
    path = _write(tmp_path / "bad.csv", text)
    with pytest.raises(DataError) as caught:
        load_csv(path)
    assert str(caught.value) == f"{path}: {message}" or message in str(caught.value)
    assert str(caught.value).startswith(str(path)) and "\n" not in str(caught.value)


def test_missing_group_column_and_file_are_errors(tmp_path: Path) -> None:
    path = _write(tmp_path / "ok.csv", "a,label\n1,0\n")
    with pytest.raises(DataError, match="no group column 'site'"):
        load_csv(path, group_column="site")
    with pytest.raises(DataError, match="no such file"):
        load_csv(tmp_path / "absent.csv")
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(DataError, match="not a UTF-8 text file"):
        load_csv(binary)


def test_a_file_is_parsed_in_chunks_with_the_same_result_and_the_file_s_own_line_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows are parsed CHUNK_ROWS at a time (the text of a large file is never held whole): a
    file spanning several chunks reads as one, class names are sorted over every chunk, and an
    error in a later chunk names its line in the file, blank lines counted."""
    import auditor.data.csv as csv_module

    lines = ["a,b,label,site"] + [f"{i},{i * 0.5},{'cat' if i % 3 else 'dog'},s{i % 2}" for i in range(10)]
    lines.insert(4, "")  # a blank line inside the data: skipped, but it is line 5 of the file
    path = _write(tmp_path / "d.csv", "\n".join(lines) + "\n")
    whole = load_csv(path, group_column="site")
    monkeypatch.setattr(csv_module, "CHUNK_ROWS", 3)
    chunked = load_csv(path, group_column="site")
    np.testing.assert_array_equal(chunked.x, whole.x)
    assert chunked.y.tolist() == whole.y.tolist() and chunked.class_names == ["cat", "dog"]
    assert chunked.groups.tolist() == whole.groups.tolist() and chunked.keys == whole.keys
    assert len(chunked) == 10
    bad = _write(tmp_path / "bad.csv", "\n".join(lines[:9] + ["9,x,dog,s1"]) + "\n")
    with pytest.raises(DataError, match=r"column 'b' is not numeric \('x' on line 10\)"):
        load_csv(bad, group_column="site")
