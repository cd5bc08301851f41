"""When a recurring audit is due: intervals ("6h", "1h30m") and cron expressions (UTC).

Pure parsing and date arithmetic, no SQL: the store stamps `next_run_at` with it, and the CLI
reads `--every` with it before anything is stored.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from croniter import croniter

from auditor.errors import AuditorError

_INTERVAL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_INTERVAL_PART = re.compile(r"(\d+)([smhdw])")


def parse_interval(text: str) -> int:
    """Seconds in an interval like "90s", "15m", "6h", "1d", "1h30m"."""
    compact = text.strip().lower().replace(" ", "")
    parts = _INTERVAL_PART.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise AuditorError(f"cannot read interval {text!r}: use e.g. 30m, 6h, 1d or 1h30m")
    seconds = sum(int(n) * _INTERVAL_UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise AuditorError(f"interval {text!r} must be longer than zero")
    return seconds


def check_recurrence(interval_seconds: int | None, cron: str | None) -> None:
    """Exactly one of a positive interval or a valid 5-field cron expression."""
    if (interval_seconds is None) == (cron is None):
        raise AuditorError("give exactly one of an interval (--every) or a cron expression")
    if cron is not None and not croniter.is_valid(cron):
        raise AuditorError(f"invalid cron expression {cron!r}: use 5 fields, e.g. '0 3 * * *'")
    if interval_seconds is not None and interval_seconds <= 0:
        raise AuditorError("the interval must be longer than zero")


def next_run(interval_seconds: int | None, cron: str | None, after: datetime) -> datetime:
    """When a recurrence is due next after `after` (cron expressions are read in UTC)."""
    if cron is not None:
        return croniter(cron, after).get_next(datetime)
    assert interval_seconds is not None
    return after + timedelta(seconds=interval_seconds)
