"""Examples kept as stored (uint8 pixels, or still on disk) and converted to the model's dtype a
batch at a time.

A million 28x28 images are 0.8 GB as bytes but 3 GB as float32 (6 GB as float64). Every step of
scoring a trained model (curvature fit, self-influence, gradients) reads its data in batches by
slicing, so `Rows` can stand in for the float tensor: a slice or an index converts only the rows
it names. What stays in memory is the stored bytes, not a float copy of them; with a lazy source
(anything with numpy-style indexing and a `batches(start, stop, size)` method, e.g. images read
from their files) not even those: consecutive slices are served from one sequential pass over
the source, which may read ahead in other processes (a DataLoader).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from auditor.memory import trim_now_and_then


class _Pass:
    """A sequential pass over a lazy source that serves consecutive slices, whatever their sizes."""

    def __init__(self, source: Any, start: int, size: int) -> None:
        # at least 256 rows a batch: a pass that starts with a 2-row peek still reads in batches
        self.it: Iterator[np.ndarray] = source.batches(start, len(source), max(size, 256))
        self.pos, self.buffer = start, np.zeros((0, *source.shape[1:]), dtype=source.dtype)

    def read(self, start: int, stop: int) -> np.ndarray:
        parts, want = [], stop - start
        while want > 0:
            if not len(self.buffer):
                self.buffer = next(self.it)
            part, self.buffer = self.buffer[:want], self.buffer[want:]
            parts.append(part)
            want -= len(part)
        self.pos = stop
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def close(self) -> None:
        close = getattr(self.it, "close", None)
        if close is not None:
            close()


class Rows:
    """A tensor-like view of `stored` (a CPU tensor or a lazy array, its own dtype) that yields
    `dtype` on `device`."""

    def __init__(self, stored: Any, dtype: torch.dtype, device: torch.device | str = "cpu") -> None:
        self.stored, self.dtype, self.device = stored, dtype, torch.device(device)
        self.largest_read = 0  # most rows converted at once (tests bound the bytes held with it)
        self.passes = 0  # sequential passes started over a lazy source
        self._pass: _Pass | None = None

    @property
    def lazy(self) -> bool:
        return not isinstance(self.stored, Tensor)

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.stored.shape)

    def __len__(self) -> int:
        return int(self.stored.shape[0])

    def dim(self) -> int:
        return len(self.stored.shape)

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point

    def _raw(self, index: Any) -> Tensor:
        trim_now_and_then()  # once per batch: the pass's freed tensors leave the heap (auditor.memory)
        if not self.lazy:
            return self.stored[index]
        if isinstance(index, slice) and index.step in (None, 1):
            start, stop, _ = index.indices(len(self))
            if stop <= start:
                return torch.from_numpy(np.asarray(self.stored[start:start]))
            if self._pass is None or self._pass.pos != start:
                if self._pass is not None:
                    self._pass.close()
                self._pass = _Pass(self.stored, start, stop - start)
                self.passes += 1
            block = self._pass.read(start, stop)
            if stop >= len(self):
                self._pass.close()
                self._pass = None
            return torch.from_numpy(block)
        return torch.from_numpy(np.ascontiguousarray(self.stored[index]))

    def __getitem__(self, index: Any) -> Tensor:
        if isinstance(index, Tensor):
            index = index.cpu()
            if self.lazy:
                index = index.numpy()
        out = self._raw(index)
        self.largest_read = max(self.largest_read, int(out.shape[0]) if out.dim() == self.dim() else 1)
        return out.to(device=self.device, dtype=self.dtype)

    def to(self, dtype: torch.dtype) -> Rows:
        """The same rows converted to another dtype (the stored bytes are shared)."""
        return Rows(self.stored, dtype, self.device)

    def take(self, index: Any) -> Rows:
        """The rows at `index`, still stored (a shard's rows; a lazy source reads nothing yet)."""
        if self.lazy:
            return Rows(self.stored.take(np.asarray(index)), self.dtype, self.device)
        return Rows(self.stored[index], self.dtype, self.device)

    def nonfinite_row(self) -> int | None:
        """The first row with NaN or infinity (only float stored data can have one), in chunks."""
        if not (self.stored.is_floating_point() if not self.lazy else np.dtype(self.stored.dtype).kind == "f"):
            return None
        for start in range(0, len(self), 65536):
            chunk = self._raw(slice(start, start + 65536))
            bad = ~torch.isfinite(chunk.reshape(chunk.shape[0], -1)).all(1)
            if bad.any():
                return start + int(bad.nonzero()[0])
        return None
