"""Small datasets that ship with scikit-learn, for demos, tests and benchmarks (no download).

`flip_labels` plants known label errors, which is how a label-check audit's recall is measured.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from auditor.data.base import Examples
from auditor.data.keys import example_keys


def _from_arrays(
    x: np.ndarray,
    y: np.ndarray,
    source: str,
    *,
    is_image: bool = False,
    feature_names: list[str] | None = None,
    class_names: list[str] | None = None,
) -> Examples:
    y = np.asarray(y, dtype=np.int64)
    return Examples(
        x=x,
        y=y,
        keys=example_keys(x, y),
        source=source,
        is_image=is_image,
        feature_names=feature_names,
        class_names=class_names,
    )


def digits() -> Examples:
    """sklearn's 1,797 handwritten digits as (N, 8, 8) uint8 images, 0..16 scaled to 0..255."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return _from_arrays(
        images,
        bunch.target,
        "sklearn:digits",
        is_image=True,
        class_names=[str(name) for name in bunch.target_names],
    )


def breast_cancer() -> Examples:
    """sklearn's Wisconsin breast cancer set: 569 x 30 float32 features, 2 classes."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    return _from_arrays(
        bunch.data.astype(np.float32),
        bunch.target,
        "sklearn:breast_cancer",
        feature_names=[str(name) for name in bunch.feature_names],
        class_names=[str(name) for name in bunch.target_names],
    )


def wine() -> Examples:
    """sklearn's wine set: 178 x 13 float32 features, 3 classes."""
    from sklearn.datasets import load_wine

    bunch = load_wine()
    return _from_arrays(
        bunch.data.astype(np.float32),
        bunch.target,
        "sklearn:wine",
        feature_names=[str(name) for name in bunch.feature_names],
        class_names=[str(name) for name in bunch.target_names],
    )


BUNDLED = {"digits": digits, "breast_cancer": breast_cancer, "wine": wine}


def flip_labels(examples: Examples, fraction: float, seed: int = 0) -> tuple[Examples, np.ndarray]:
    """A copy with round(fraction * N) labels changed to a different class, and their indices.

    Deterministic for a given seed. Each flipped label moves to a uniformly chosen other class.
    Keys are recomputed, since a key includes the label.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    n, num_classes = len(examples), examples.num_classes
    if num_classes < 2:
        raise ValueError("flipping labels needs at least two classes")
    rng = np.random.default_rng(seed)
    flipped = np.sort(rng.choice(n, size=round(fraction * n), replace=False))
    y = examples.y.copy()
    y[flipped] = (y[flipped] + rng.integers(1, num_classes, size=len(flipped))) % num_classes
    noisy = Examples(
        x=examples.x,
        y=y,
        keys=example_keys(examples.x, y),
        source=f"{examples.source}+flip({fraction},seed={seed})",
        is_image=examples.is_image,
        feature_names=examples.feature_names,
        groups=examples.groups,
        class_names=examples.class_names,
        extra=dict(examples.extra),
    )
    return noisy, flipped


def write_npz(examples: Examples, path: str | Path, compressed: bool = True) -> Path:
    """Save as an .npz that `load_npz` reads back to the same keys (x, y, class names, groups).
    Uncompressed, `x` can be read in place a batch at a time (`load_npz(..., lazy=True)`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {"x": np.asarray(examples.x), "y": examples.y}
    if examples.class_names is not None:
        arrays["class_names"] = np.array(examples.class_names, dtype=str)
    if examples.groups is not None:
        groups = np.asarray(examples.groups)
        # Object arrays would need pickle, which load_npz refuses.
        arrays["groups"] = groups.astype(str) if groups.dtype == object else groups
    with path.open("wb") as handle:
        (np.savez_compressed if compressed else np.savez)(handle, **arrays)
    return path
