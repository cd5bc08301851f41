"""Small shared builders for tests: bundled data as `Examples`, without the store."""

from __future__ import annotations

import hashlib

import numpy as np
from sklearn.datasets import load_digits

from auditor.data.base import Examples


def key(x: np.ndarray, y: int) -> str:
    return hashlib.sha256(x.tobytes() + str(int(y)).encode()).hexdigest()[:32]


def digits(n: int | None = None, offset: int = 0) -> Examples:
    """sklearn's digits as uint8 8x8 images (0..16 scaled to 0..255)."""
    d = load_digits()
    x = np.rint(d.data * 255 / 16).astype(np.uint8).reshape(-1, 8, 8)
    y = d.target.astype(np.int64)
    sl = slice(offset, None if n is None else offset + n)
    x, y = x[sl], y[sl]
    return Examples(x, y, [key(x[i], y[i]) for i in range(len(y))], source="digits", is_image=True)
