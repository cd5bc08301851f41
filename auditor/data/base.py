"""The in-memory form every analysis works on."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Examples:
    """A labelled dataset as arrays plus a stable identity per example.

    `keys[i]` is a content hash of example i's bytes and label, so findings and review decisions
    follow the example across re-scans even when rows move. `x` keeps the stored dtype: uint8 for
    images (so the attack can respect the 8-bit representation), float32 for features.
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

    @property
    def num_classes(self) -> int:
        if self.class_names is not None:
            return len(self.class_names)
        return int(self.y.max()) + 1 if len(self.y) else 0
