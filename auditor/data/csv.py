"""CSV adapter: one row per example, numeric feature columns, a label column, optional group column.

Labels may be non-negative integers or strings; strings are mapped to 0..C-1 in sorted order and
the names kept in `class_names`, so "cat"/"dog" files and 0/1 files both work. Every other column
is a feature and must be numeric: a problem names the file, the column and the line.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from auditor.data.base import MAX_CLASSES, Examples
from auditor.data.keys import example_keys
from auditor.errors import DataError

DEFAULT_LABEL_COLUMN = "label"


def _read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    where = str(path)
    try:
        # The delimiter follows the suffix; csv.Sniffer guesses wrong on numeric data too often.
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle, delimiter=delimiter))
    except FileNotFoundError:
        raise DataError(f"{where}: no such file") from None
    except UnicodeDecodeError:
        raise DataError(f"{where}: not a UTF-8 text file") from None
    except csv.Error as exc:
        raise DataError(f"{where}: not a readable CSV file ({exc})") from None
    # Blank lines (often one at the end) are not examples.
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if not rows:
        raise DataError(f"{where}: the file is empty")
    header = [name.strip() for name in rows[0]]
    body = rows[1:]
    if not body:
        raise DataError(f"{where}: the file has a header but no rows")
    for line, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(
                f"{where}: line {line} has {len(row)} fields, the header has {len(header)}"
            )
    return header, body


def _as_number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def _parse_labels(
    values: list[str], where: str, column: str
) -> tuple[np.ndarray, list[str] | None]:
    """Integer labels ("3" or "3.0") as they are; text labels mapped to sorted class names.

    A column of numbers with fractions is refused rather than read as class names: it is almost
    always a regression target or the wrong column.
    """
    stripped = [value.strip() for value in values]
    for line, value in enumerate(stripped, start=2):
        if not value:
            raise DataError(f"{where}: label column {column!r} is empty on line {line}")
    numbers = [_as_number(value) for value in stripped]
    if any(number is None for number in numbers):
        names = sorted(set(stripped))
        index = {name: i for i, name in enumerate(names)}
        return np.array([index[value] for value in stripped], dtype=np.int64), names
    for line, number in enumerate(numbers, start=2):
        assert number is not None
        if not np.isfinite(number) or number != round(number):
            raise DataError(
                f"{where}: label column {column!r} must hold integers or class names, "
                f"found {stripped[line - 2]!r} on line {line}"
            )
    labels = np.array(numbers, dtype=np.float64).astype(np.int64)
    if labels.min() < 0:
        line = int(np.argmin(labels)) + 2
        raise DataError(
            f"{where}: label {labels.min()} on line {line} is negative; labels must be >= 0"
        )
    if labels.max() >= MAX_CLASSES:
        line = int(np.argmax(labels)) + 2
        raise DataError(
            f"{where}: label {labels.max()} on line {line} is not a class index (labels are 0..K-1 "
            f"with K <= {MAX_CLASSES})"
        )
    return labels, None


def _parse_feature(values: list[str], where: str, column: str) -> np.ndarray:
    try:
        parsed = np.array(values, dtype=np.float64)
    except ValueError:
        for line, value in enumerate(values, start=2):
            if not value.strip():
                raise DataError(
                    f"{where}: column {column!r} has a missing value on line {line}"
                ) from None
            try:
                float(value)
            except ValueError:
                raise DataError(
                    f"{where}: column {column!r} is not numeric ({value!r} on line {line})"
                ) from None
        raise  # pragma: no cover - numpy and float() disagree
    bad = ~np.isfinite(parsed)
    if bad.any():
        line = int(np.argmax(bad)) + 2
        raise DataError(f"{where}: column {column!r} has NaN or infinity on line {line}")
    return parsed


def load_csv(
    path: str | Path,
    label_column: str | None = None,
    group_column: str | None = None,
) -> Examples:
    """Read a CSV file with a header row into float32 features and integer labels."""
    path = Path(path)
    where = str(path)
    label_column = label_column or DEFAULT_LABEL_COLUMN
    header, body = _read_rows(path)
    if label_column not in header:
        raise DataError(
            f"{where}: no label column {label_column!r} (columns: {', '.join(header)}); "
            "pass --label-column"
        )
    if group_column is not None and group_column not in header:
        raise DataError(f"{where}: no group column {group_column!r} (columns: {', '.join(header)})")
    if len(set(header)) != len(header):
        duplicate = next(name for name in header if header.count(name) > 1)
        raise DataError(f"{where}: column {duplicate!r} appears twice in the header")
    columns = list(zip(*body, strict=True))
    by_name = {name: list(columns[i]) for i, name in enumerate(header)}
    labels, class_names = _parse_labels(by_name[label_column], where, label_column)
    feature_names = [name for name in header if name not in (label_column, group_column)]
    if not feature_names:
        raise DataError(f"{where}: no feature columns besides the label")
    features = np.stack(
        [_parse_feature(by_name[name], where, name) for name in feature_names], axis=1
    ).astype(np.float32)
    groups = np.array([value.strip() for value in by_name[group_column]]) if group_column else None
    return Examples(
        x=features,
        y=labels,
        keys=example_keys(features, labels),
        source=str(path.resolve()),
        is_image=False,
        feature_names=feature_names,
        groups=groups,
        class_names=class_names,
    )
