"""Small images and plots as data URIs, so one HTML file carries everything."""

from __future__ import annotations

import base64
import io

import numpy as np


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def thumbnail(img: np.ndarray, size: int = 64) -> str:
    """A uint8 image (H, W), (C, H, W) or (H, W, C) as a nearest-neighbour upscaled PNG data URI."""
    return png_data_uri(png_bytes(img, size))


def png_bytes(img: np.ndarray, size: int | None = None) -> bytes:
    """A uint8 image (H, W), (C, H, W) or (H, W, C) as PNG bytes, upscaled (nearest neighbour)
    towards `size` pixels when given. Other dtypes are stretched to 0..255."""
    from PIL import Image

    a = np.asarray(img)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.dtype != np.uint8:
        lo, hi = float(a.min()), float(a.max())
        a = (255 * (a - lo) / max(hi - lo, 1e-12)).astype(np.uint8)
    im = Image.fromarray(a)
    if size is not None:
        scale = max(1, size // max(im.size))
        im = im.resize((im.size[0] * scale, im.size[1] * scale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def figure_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return png_data_uri(buf.getvalue())


def histogram(values: np.ndarray, title: str, log: bool = False, marks: np.ndarray | None = None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 2.6))
    v = np.asarray(values, dtype=float)
    bins = 50
    if marks is not None and len(marks):
        ax.hist([v[~marks], v[marks]], bins=bins, stacked=True, label=["other", "known wrong label"], color=["#8aa", "#d33"])
        ax.legend(fontsize=7)
    else:
        ax.hist(v, bins=bins, color="#8aa")
    if log:
        ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    return figure_uri(fig)


def recall_curve(curves: dict[str, np.ndarray], budgets_marked=(0.05, 0.1, 0.2, 0.3)) -> str:
    """Fraction of known-wrong labels found vs fraction of data checked, one line per ranking."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for name, found in curves.items():
        x = np.arange(1, len(found) + 1) / len(found)
        ax.plot(x, found, label=name, lw=1.5)
    for b in budgets_marked:
        ax.axvline(b, color="#ccc", lw=0.8, ls=":")
    ax.set_xlim(0, 0.4)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("fraction of training data checked")
    ax.set_ylabel("fraction of wrong labels found")
    ax.legend(fontsize=8, loc="lower right")
    return figure_uri(fig)
