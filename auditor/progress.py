"""Progress reporting: the one callback type every long step takes, from the engine up.

It lives at the bottom of the package (it imports nothing of auditor) so that the engine, the
models, the analyses and the runner can all take the same callback without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable

# progress(fraction_done in [0, 1], message). It may raise `auditor.errors.Cancelled`, which is
# how a cancel request reaches a running computation without it knowing about the store.
Progress = Callable[[float, str], None]


def no_progress(fraction: float, message: str) -> None:
    """Default progress callback: ignore."""


def scaled(progress: Progress, lo: float, hi: float) -> Progress:
    """A progress callback that maps a sub-step's [0, 1] onto [lo, hi] of the whole."""

    def report(fraction: float, message: str) -> None:
        progress(lo + (hi - lo) * min(max(fraction, 0.0), 1.0), message)

    return report
