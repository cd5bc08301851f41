"""Keep a long pass's memory from creeping up batch after batch.

A scoring pass allocates and frees tensors of a few to a few tens of MiB for every batch. glibc's
malloc serves such blocks from its heap once blocks of that size have been freed (its mmap
threshold rises with each, up to 32 MiB), and the freed space in the middle of the heap stays
resident: the process grew from 1.1 GB to 1.9 GB over a pass of 20,000 28x28 images with a team's
CNN, and its peak doubled from 10k to 100k images (bench/scale.py). `malloc_trim(0)` hands the
free pages back; `Rows` calls `trim_now_and_then` once per batch read, which trims every 16th
call. Fixing the mmap threshold instead (every block above 4 MiB mapped on its own) kept the pass
flat too, but made it 1.8x slower from the page faults of fresh mappings.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Callable

EVERY = 16  # calls of trim_now_and_then between trims: about 1% of a pass's time

_trim: Callable[[int], int] | None = None
_calls = 0


def _load() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # musl and others have no malloc_trim
        return None


def trim() -> bool:
    """Return the heap's free pages to the system now (glibc only); True if it did."""
    global _trim
    if _trim is None:
        _trim = _load() or (lambda pad: 0)
    return bool(_trim(0))


def trim_now_and_then() -> None:
    """`trim` on every EVERY-th call: cheap enough to call once per batch."""
    global _calls
    _calls += 1
    if _calls % EVERY == 0:
        trim()
