"""Show an example to a person: images in the terminal (half-block cells), features as a table."""

from __future__ import annotations

import numpy as np
from rich.text import Text


def image_to_text(img: np.ndarray, max_width: int = 48) -> Text:
    """Render a uint8 image (H, W) or (C, H, W) / (H, W, C) with two pixels per character cell."""
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    a = a.astype(np.float64)
    if a.max() > 255 or a.min() < 0:  # float features shaped like an image: stretch to 0..255
        a = 255 * (a - a.min()) / max(np.ptp(a), 1e-12)
    rep = max(1, min(4, max_width // max(a.shape[1], 1)))
    a = np.repeat(np.repeat(a, rep, axis=1), rep, axis=0).astype(np.uint8)
    if a.shape[0] % 2:
        a = np.concatenate([a, np.zeros_like(a[:1])], 0)
    text = Text()
    for r in range(0, a.shape[0], 2):
        for c in range(a.shape[1]):
            top, bottom = a[r, c], a[r + 1, c]
            text.append("▀", style=f"{_rgb(top)} on {_rgb(bottom)}")
        text.append("\n")
    return text


def _rgb(v: np.ndarray | np.integer) -> str:
    v = np.atleast_1d(v)
    r, g, b = (int(v[0]),) * 3 if v.size == 1 else (int(v[0]), int(v[1]), int(v[2]))
    return f"rgb({r},{g},{b})"
