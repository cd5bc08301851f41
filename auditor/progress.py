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


def duration(seconds: float) -> str:
    """"12 s", "4 min", "1.5 h": a time left as a person reads it."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


_NUMBER = re.compile(r"\d[\d,.]*")


def phase_of(message: str) -> str:
    """The step a progress message reports, without its counts: "self-influence (#/# examples)"
    for "self-influence (4,096/10,000 examples)", so one step's messages are one phase."""
    return _NUMBER.sub("#", message)


def eta_from_phase(
    fraction: float, phase_fraction: float, phase_seconds: float, min_seconds: float = 1.0
) -> float | None:
    """Seconds left at the current phase's own rate: the fraction it has done per second since it
    began, applied to what is left of the whole. None until the phase has run `min_seconds` and
    moved. The whole run's average (elapsed x left / done) said "about 6 min left" at 31% of an
    audit that ended 6 s later: a slow first phase (training) is no guide to the fast ones after."""
    if not 0 < fraction < 1 or phase_seconds < min_seconds or fraction <= phase_fraction:
        return None
    return (1 - fraction) * phase_seconds / (fraction - phase_fraction)


class Rates:
    """Throughput and time left for progress messages, so a person watching a long audit (or a
    script reading `audit status --json`) knows how fast it goes and when it ends.

    Throughput comes from steps that count examples in their message ("... (4,096/10,000
    examples)"), measured over the current step; the time left from the current phase's rate
    (`eta_from_phase`). `phase_fraction` and `phase_started_at` (wall clock, seconds since the
    epoch) say where the current phase began, for a reader in another process (the audit row).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.clock, self.wall = clock, wall
        self.start = clock()
        self.step: str | None = None
        self.step_start = self.start
        self.step_done = 0
        self.examples_per_s: float | None = None
        self.eta_s: float | None = None
        # the first phase began when the run did, at 0
        self.phase: str | None = None
        self.phase_start = self.start
        self.phase_fraction = 0.0
        self.phase_started_at = wall()

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
        phase = phase_of(message)
        if phase != self.phase:
            if self.phase is not None:
                self.phase_start, self.phase_fraction = now, fraction
                self.phase_started_at = self.wall()
            self.phase = phase
        self.eta_s = eta_from_phase(fraction, self.phase_fraction, now - self.phase_start)
        parts = []
        if self.examples_per_s is not None:
            parts.append(f"{self.examples_per_s:,.0f} examples/s")
        if self.eta_s is not None:
            parts.append(f"about {duration(self.eta_s)} left")
        return f"{message}, {', '.join(parts)}" if parts else message

    def phase_doc(self) -> dict[str, float]:
        """Where the current phase began, as the audit row keeps it (`summary["phase"]`)."""
        return {"fraction": round(self.phase_fraction, 6), "started_at": round(self.phase_started_at, 3)}
