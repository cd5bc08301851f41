"""How the data loaders read: a small frozen options object, passed in by whoever loads.

The loaders never read the environment themselves: an entry point turns its `Settings` into
`DataOptions.from_settings(settings)` and passes that down, so two configurations can load data
in one process (and one test). `DataOptions()` has the documented defaults, for library use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from auditor.config import DEFAULT_STREAM_BYTES, Settings


@dataclass(frozen=True)
class DataOptions:
    """`stream_bytes`: image folders and .npz files larger than this (as stored) are read from
    disk a batch at a time instead of loaded whole; 0 streams every one (AUDITOR_STREAM_BYTES).
    `data_workers`: processes that decode streamed images ahead of the model; None is up to 4,
    leaving a core to the model, 0 decodes in the calling process (AUDITOR_DATA_WORKERS)."""

    stream_bytes: int = DEFAULT_STREAM_BYTES
    data_workers: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> DataOptions:
        return cls(stream_bytes=settings.stream_bytes, data_workers=settings.data_workers)

    def decode_workers(self) -> int:
        """DataLoader worker processes for decoding images (`data_workers` resolved)."""
        if self.data_workers is not None:
            return self.data_workers
        return max(0, min(4, (os.cpu_count() or 1) - 1))


DEFAULT_OPTIONS = DataOptions()
