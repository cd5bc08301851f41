"""Examples kept as stored (uint8 pixels) and converted to the model's dtype a batch at a time.

A million 28x28 images are 0.8 GB as bytes but 3 GB as float32 (6 GB as float64). Every step of
scoring a trained model (curvature fit, self-influence, gradients) reads its data in batches by
slicing, so `Rows` can stand in for the float tensor: a slice or an index converts only the rows
it names. What stays in memory is the stored bytes, not a float copy of them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class Rows:
    """A tensor-like view of `stored` (CPU, its own dtype) that yields `dtype` on `device`."""

    def __init__(self, stored: Tensor, dtype: torch.dtype, device: torch.device | str = "cpu") -> None:
        self.stored, self.dtype, self.device = stored, dtype, torch.device(device)
        self.largest_read = 0  # most rows converted at once (tests bound the bytes held with it)

    @property
    def shape(self) -> torch.Size:
        return self.stored.shape

    def __len__(self) -> int:
        return int(self.stored.shape[0])

    def dim(self) -> int:
        return self.stored.dim()

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point

    def __getitem__(self, index: Any) -> Tensor:
        if isinstance(index, Tensor):
            index = index.cpu()
        out = self.stored[index]
        self.largest_read = max(self.largest_read, int(out.shape[0]) if out.dim() == self.stored.dim() else 1)
        return out.to(device=self.device, dtype=self.dtype)

    def to(self, dtype: torch.dtype) -> Rows:
        """The same rows converted to another dtype (the stored bytes are shared)."""
        return Rows(self.stored, dtype, self.device)

    def take(self, index: Any) -> Rows:
        """The rows at `index`, still stored (a shard's rows)."""
        return Rows(self.stored[index], self.dtype, self.device)

    def nonfinite_row(self) -> int | None:
        """The first row with NaN or infinity (only float stored data can have one), in chunks."""
        if not self.stored.is_floating_point():
            return None
        for start in range(0, len(self), 65536):
            chunk = self.stored[start : start + 65536]
            bad = ~torch.isfinite(chunk.reshape(chunk.shape[0], -1)).all(1)
            if bad.any():
                return start + int(bad.nonzero()[0])
        return None
