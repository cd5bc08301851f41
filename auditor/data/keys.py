"""Stable content keys for examples, and a hash for a whole dataset's content.

A key depends only on the example's dtype, shape, bytes and label, never on its row, file name or
the time of the scan, so findings and review decisions follow an example when rows move or files
are renamed. A relabelled example gets a new key on purpose: it is a different training example.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

KEY_CHARS = 32  # 128 bits: collisions are not a concern below ~10^18 examples


def _canonical(x_row: np.ndarray) -> np.ndarray:
    """Little-endian, C-contiguous, so the same values give the same bytes on every machine."""
    row = np.asarray(x_row)
    if row.dtype.byteorder == ">":
        row = row.astype(row.dtype.newbyteorder("<"))
    return np.ascontiguousarray(row)


def example_key(x_row: np.ndarray, label: int) -> str:
    """sha256 over dtype, shape, bytes and label; the first 32 hex characters."""
    row = _canonical(x_row)
    digest = hashlib.sha256()
    digest.update(row.dtype.str.encode())
    digest.update(repr(tuple(row.shape)).encode())
    digest.update(row.tobytes())
    digest.update(b"label=%d" % int(label))
    return digest.hexdigest()[:KEY_CHARS]


def example_keys(x: np.ndarray, y: np.ndarray) -> list[str]:
    """Keys for every row; exact duplicates are told apart by their occurrence number (see
    `unique_keys`). `x` may be lazy (read from disk): it is read in chunks, never whole."""
    from auditor.data.lazy import chunks

    labels = y.tolist()
    raw: list[str] = []
    for start, block in chunks(x):
        raw.extend(example_key(row, label) for row, label in zip(block, labels[start : start + len(block)], strict=True))
    if len(raw) != len(labels):
        raise ValueError(f"{len(raw)} examples but {len(labels)} labels")
    return unique_keys(raw)


def unique_keys(raw: list[str]) -> list[str]:
    """The second copy of an example gets `example_key` of the first mixed with "#1", the third
    "#2", and so on, so keys are unique within a dataset (findings are unique per key) and stay
    stable as long as the duplicates keep their relative order."""
    keys: list[str] = []
    seen: dict[str, int] = {}
    for key in raw:
        count = seen.get(key, 0)
        seen[key] = count + 1
        if count:
            key = hashlib.sha256(f"{key}#{count}".encode()).hexdigest()[:KEY_CHARS]
        keys.append(key)
    return keys


def content_hash(keys: Iterable[str]) -> str:
    """sha256 of the ordered keys: equal iff the same examples in the same order."""
    digest = hashlib.sha256()
    for key in keys:
        digest.update(key.encode())
        digest.update(b"\n")
    return digest.hexdigest()
