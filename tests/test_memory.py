"""`auditor.memory`: the heap is trimmed once every EVERY batch reads, and trimming is safe to call
anywhere (a no-op where the C library has no malloc_trim)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from auditor import memory
from auditor.influence.rows import Rows


def test_trim_returns_whether_it_released_anything_and_never_fails() -> None:
    assert memory.trim() in (True, False)
    if sys.platform.startswith("linux"):  # glibc here: the real malloc_trim ran
        assert memory._trim is not None and memory._trim.__name__ == "malloc_trim"


def test_a_pass_over_rows_trims_the_heap_every_few_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    trims: list[int] = []
    monkeypatch.setattr(memory, "trim", lambda: trims.append(1) or True)
    monkeypatch.setattr(memory, "_calls", 0)
    rows = Rows(torch.from_numpy(np.zeros((64 * memory.EVERY, 3), dtype=np.uint8)), torch.float32)
    for start in range(0, len(rows), 8):  # 8 * EVERY batch reads
        rows[start : start + 8]
    assert len(trims) == 8
