"""Progress reporting: the one callback type every long step takes, from the engine up.

It lives at the bottom of the package (it imports nothing of auditor) so that the engine, the
models, the analyses and the runner can all take the same callback without importing each other.
"""

from __future__ import annotations

import re
import time
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


_COUNT = re.compile(r"\((\d[\d,]*)/(\d[\d,]*) examples\)")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Rates:
    """Throughput and time left for progress messages, so a person watching a long audit (or a
    script reading `audit status --json`) knows how fast it goes and when it ends.

    Throughput comes from steps that count examples in their message ("... (4,096/10,000
    examples)"), measured over the current step; the time left is the whole run's elapsed time
    scaled by the fraction still to do (a rough guide: phases run at different speeds).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.start = clock()
        self.step: str | None = None
        self.step_start = self.start
        self.step_done = 0
        self.examples_per_s: float | None = None
        self.eta_s: float | None = None

    def update(self, fraction: float, message: str) -> str:
        """`message` with ", N examples/s, about T left" added where they are known."""
        now = self.clock()
        found = _COUNT.search(message)
        self.examples_per_s = None
        if found:
            done, step = int(found.group(1).replace(",", "")), message[: found.start()]
            if step != self.step:
                self.step, self.step_start, self.step_done = step, now, done
            elif now - self.step_start > 0.2 and done > self.step_done:
                self.examples_per_s = (done - self.step_done) / (now - self.step_start)
        elapsed = now - self.start
        self.eta_s = elapsed * (1 - fraction) / fraction if 0.01 < fraction < 1 and elapsed > 1 else None
        parts = []
        if self.examples_per_s is not None:
            parts.append(f"{self.examples_per_s:,.0f} examples/s")
        if self.eta_s is not None:
            parts.append(f"about {_duration(self.eta_s)} left")
        return f"{message}, {', '.join(parts)}" if parts else message
