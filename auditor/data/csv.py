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


CHUNK_ROWS = 65536  # rows parsed at a time: the text of a million-row file is never held whole


def _open(path: Path):
    where = str(path)
    try:
        return path.open(newline="", encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{where}: no such file") from None


def _read_chunks(path: Path):
    """(header, chunks): chunks yields (line numbers, rows) of up to CHUNK_ROWS non-blank rows,
    each checked to have the header's number of fields; line numbers are the file's own."""
    where = str(path)
    # The delimiter follows the suffix; csv.Sniffer guesses wrong on numeric data too often.
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    handle = _open(path)
    reader = csv.reader(handle, delimiter=delimiter)

    def rows():
        try:
            for row in reader:
                if any(cell.strip() for cell in row):  # blank lines (often one at the end) are not examples
                    yield reader.line_num, row
        except UnicodeDecodeError:
            raise DataError(f"{where}: not a UTF-8 text file") from None
        except csv.Error as exc:
            raise DataError(f"{where}: not a readable CSV file ({exc})") from None

    it = rows()
    first = next(it, None)
    if first is None:
        handle.close()
        raise DataError(f"{where}: the file is empty")
    header = [name.strip() for name in first[1]]

    def chunks():
        with handle:
            lines: list[int] = []
            body: list[list[str]] = []
            for line, row in it:
                if len(row) != len(header):
                    raise DataError(f"{where}: line {line} has {len(row)} fields, the header has {len(header)}")
                lines.append(line)
                body.append(row)
                if len(body) == CHUNK_ROWS:
                    yield lines, body
                    lines, body = [], []
            if body:
                yield lines, body

    return header, chunks()


def _as_number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def _parse_labels(
    values: list[str], where: str, column: str, lines: list[int]
) -> tuple[np.ndarray, list[str] | None]:
    """Integer labels ("3" or "3.0") as they are; text labels mapped to sorted class names.

    A column of numbers with fractions is refused rather than read as class names: it is almost
    always a regression target or the wrong column.
    """
    stripped = values  # stripped while reading
    for line, value in zip(lines, stripped, strict=True):
        if not value:
            raise DataError(f"{where}: label column {column!r} is empty on line {line}")
    numbers = [_as_number(value) for value in stripped]
    if any(number is None for number in numbers):
        names = sorted(set(stripped))
        index = {name: i for i, name in enumerate(names)}
        return np.array([index[value] for value in stripped], dtype=np.int64), names
    for i, number in enumerate(numbers):
        assert number is not None
        if not np.isfinite(number) or number != round(number):
            raise DataError(
                f"{where}: label column {column!r} must hold integers or class names, "
                f"found {stripped[i]!r} on line {lines[i]}"
            )
    labels = np.array(numbers, dtype=np.float64).astype(np.int64)
    if labels.min() < 0:
        line = lines[int(np.argmin(labels))]
        raise DataError(
            f"{where}: label {labels.min()} on line {line} is negative; labels must be >= 0"
        )
    if labels.max() >= MAX_CLASSES:
        line = lines[int(np.argmax(labels))]
        raise DataError(
            f"{where}: label {labels.max()} on line {line} is not a class index (labels are 0..K-1 "
            f"with K <= {MAX_CLASSES})"
        )
    return labels, None


def _parse_feature(values: list[str], where: str, column: str, lines: list[int]) -> np.ndarray:
    try:
        parsed = np.array(values, dtype=np.float64)
    except ValueError:
        for line, value in zip(lines, values, strict=True):
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
        line = lines[int(np.argmax(bad))]
        raise DataError(f"{where}: column {column!r} has NaN or infinity on line {line}")
    return parsed


def load_csv(
    path: str | Path,
    label_column: str | None = None,
    group_column: str | None = None,
) -> Examples:
    """Read a CSV file with a header row into float32 features and integer labels, parsing
    CHUNK_ROWS rows at a time (the file's text is never held whole)."""
    path = Path(path)
    where = str(path)
    label_column = label_column or DEFAULT_LABEL_COLUMN
    header, chunks = _read_chunks(path)
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
    feature_names = [name for name in header if name not in (label_column, group_column)]
    if not feature_names:
        raise DataError(f"{where}: no feature columns besides the label")
    at = {name: i for i, name in enumerate(header)}
    parts: list[np.ndarray] = []  # float32 features, a chunk at a time
    label_text: list[str] = []
    group_text: list[str] = []
    all_lines: list[int] = []
    for lines, body in chunks:
        columns = list(zip(*body, strict=True))
        parts.append(
            np.stack([_parse_feature(list(columns[at[name]]), where, name, lines) for name in feature_names], axis=1).astype(np.float32)
        )
        label_text.extend(value.strip() for value in columns[at[label_column]])
        if group_column:
            group_text.extend(value.strip() for value in columns[at[group_column]])
        all_lines.extend(lines)
    if not parts:
        raise DataError(f"{where}: the file has a header but no rows")
    labels, class_names = _parse_labels(label_text, where, label_column, all_lines)
    features = parts[0] if len(parts) == 1 else np.concatenate(parts)
    del parts
    groups = np.array(group_text) if group_column else None
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
