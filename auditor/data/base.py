"""The in-memory form every analysis works on."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Labels are class indices 0..K-1. A model has one output per class, so a label of 10**12 would
# ask for a 10**12-wide output layer; anything at or above this is refused as not a class index.
MAX_CLASSES = 100_000

@dataclass
class Examples:
    """A labelled dataset as arrays plus a stable identity per example.

    `keys[i]` is a content hash of example i's bytes and label, so findings and review decisions
    follow the example across re-scans even when rows move. `x` keeps the stored dtype: uint8 for
    images (so the attack can respect the 8-bit representation), float32 for features. For large
    data sets `x` is a `auditor.data.lazy.LazyArray` (rows read from disk when indexed).
    """

    x: np.ndarray
    y: np.ndarray
    keys: list[str]
    source: str = ""
    is_image: bool = False
    feature_names: list[str] | None = None
    groups: np.ndarray | None = None
    class_names: list[str] | None = None
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, rows: np.ndarray | slice | list[int]) -> Examples:
        """The examples at `rows` (indices, a boolean mask or a slice), with everything that
        belongs to each example (key, group, per-example lists in `extra` such as ImageFolder's
        file paths) taken along and the data set's own facts (source, feature and class names)
        kept, so a subset is described like its parent."""
        n = len(self)
        idx = np.arange(n)[rows]
        per_example = lambda v: isinstance(v, (list, np.ndarray)) and len(v) == n  # noqa: E731
        from auditor.data.lazy import LazyArray

        return Examples(
            x=self.x.take(idx) if isinstance(self.x, LazyArray) else self.x[idx],
            y=self.y[idx],
            keys=[self.keys[i] for i in idx],
            source=self.source,
            is_image=self.is_image,
            feature_names=self.feature_names,
            groups=None if self.groups is None else self.groups[idx],
            class_names=self.class_names,
            extra={k: [v[i] for i in idx] if per_example(v) else v for k, v in self.extra.items()},
        )

    @property
    def num_classes(self) -> int:
        if self.class_names is not None:
            return len(self.class_names)
        return int(self.y.max()) + 1 if len(self.y) else 0


def check_test_set(train: Examples, test: Examples, *, labels: bool = True) -> None:
    """One-line errors for a test set that does not fit the training set: examples of another
    shape, or (with `labels`) labels the model built from `train` cannot output. Audit creation,
    the analyses and `validate` all check with this, so they refuse the same things alike."""
    from auditor.errors import DataError

    if tuple(test.x.shape[1:]) != tuple(train.x.shape[1:]):
        raise DataError(
            f"test examples have shape {tuple(test.x.shape[1:])} but training examples have "
            f"shape {tuple(train.x.shape[1:])}; use a test set from the same source"
        )
    if labels and len(test.y):
        k = train.num_classes
        if test.y.min() < 0 or test.y.max() >= k:
            bad = int(test.y.min()) if test.y.min() < 0 else int(test.y.max())
            raise DataError(f"test label {bad} is outside the training set's classes 0..{k - 1}")
