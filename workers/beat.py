"""`auditor beat`: Celery beat driven by the schedules table, and the lock that keeps it single.

The schedules table is the only copy of a schedule. `DatabaseScheduler` has no entries of its
own: it ignores `beat_schedule` and Celery's default entries and keeps no schedule file. Every
AUDITOR_BEAT_INTERVAL seconds (default 5) it asks the database which schedules are due; when any
are, it sends one `auditor.tick_schedules` task (queue `default`). The worker that runs it claims
the due schedules, re-reads their datasets and enqueues audits (`auditor.schedules`). So adding,
pausing, resuming or removing a schedule takes effect at the next tick, without restarting beat,
and beat itself never reads a dataset (that can take minutes and would stall the beat loop and
its lock renewal). A tick task is sent once per due run; if the run is still due `resend_after`
seconds later (no worker took the task, which then expires) it is sent again. Duplicate tick
tasks are harmless: claiming a schedule locks its row, so each due run is taken once.

Only one beat runs: it holds the Redis lock `auditor:beat:lock` (on the broker's Redis) with a
time-to-live of max(30 s, 6 intervals), renewed every tick. A second `auditor beat` exits at once
with a one-line error naming the holder, or with `--standby` waits until the lock is free and
then takes over (e.g. after the first one stopped or its lock expired). A beat that cannot renew
its lock because another process owns it now stops, so two beats never both send ticks for long.

Beat runs in the `auditor` process itself, not re-executed: the console script's `sys.path`
starts with its own `bin/` directory, never the current one, and the app's loader imports the
task modules without putting the current directory back (`workers.celery_app.CwdFreeLoader`).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from datetime import datetime
from typing import Any

import redis
from celery.beat import Scheduler
from redis.exceptions import LockError, LockNotOwnedError, RedisError

from auditor.config import get_settings
from auditor.errors import AuditorError, ServiceError
from auditor.store.db import redact

log = logging.getLogger("auditor.beat")

LOCK_KEY = "auditor:beat:lock"
MIN_LOCK_TTL = 30.0
TICK_TASK = "auditor.tick_schedules"


def beat_interval() -> float:
    """Seconds between beat ticks, from AUDITOR_BEAT_INTERVAL (default 5)."""
    return get_settings().beat_interval


def lock_ttl(interval: float) -> float:
    """How long the lock outlives a beat that stopped renewing it."""
    return max(MIN_LOCK_TTL, 6 * interval)


class LockLost(AuditorError):
    """Another process owns the beat lock now."""


class BeatLock:
    """The Redis lock that lets one beat run (redis-py `Lock` with a TTL, renewed each tick).

    The token names the holder (host:pid:random), so a refused beat can say who holds the lock.
    """

    def __init__(self, url: str, ttl: float, key: str = LOCK_KEY) -> None:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ServiceError(
                f"auditor beat locks through Redis; the broker {redact(url)} is not Redis"
            )
        self.url, self.key, self.ttl = url, key, ttl
        self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.lock = self.client.lock(key, timeout=ttl, thread_local=False)
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def holder(self) -> str | None:
        value = self.client.get(self.key)
        return value.decode(errors="replace") if isinstance(value, bytes) else value

    def acquire(self, *, standby: bool = False) -> None:
        """Take the lock; `ServiceError` when another beat has it (unless `standby`: then wait)."""
        try:
            if self.lock.acquire(blocking=False, token=self.token):
                return
            if not standby:
                holder = self.holder() or "unknown"
                raise ServiceError(
                    f"another auditor beat is running (lock {self.key} held by {holder}); "
                    "only one may run: stop it, or pass --standby to wait and take over"
                )
            log.warning("beat lock %s is held by %s; waiting as a standby", self.key, self.holder())
            self.lock.acquire(blocking=True, sleep=1.0, token=self.token)
        except RedisError as exc:
            raise ServiceError(
                f"cannot reach Redis at {redact(self.url)} for the beat lock: {exc}"
            ) from None

    def renew(self) -> None:
        """Reset the TTL; `LockLost` when another process owns the lock now."""
        try:
            self.lock.reacquire()
        except (LockNotOwnedError, LockError):
            raise LockLost(
                f"lost the beat lock {self.key} (now held by {self.holder() or 'nobody'}); "
                "this beat stops so that only one runs"
            ) from None

    def release(self) -> None:
        """Give the lock up if still held; idempotent, never raises."""
        try:
            if self.lock.local.token is not None:
                self.lock.release()
        except (LockError, RedisError):
            pass


# What `run_beat` hands to the scheduler Celery creates: the lock it took and the interval.
_preacquired: BeatLock | None = None
_interval: float | None = None
_lost_lock: list[str] = []


class DatabaseScheduler(Scheduler):
    """A beat scheduler whose only source of truth is the schedules table (module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.interval = _interval or beat_interval()
        self.resend_after = max(60.0, 10 * self.interval)
        self.lock: BeatLock | None = None
        self.sessions: Any = None
        self._sent: dict[tuple[int, datetime | None], float] = {}
        kwargs["max_interval"] = self.interval
        super().__init__(*args, **kwargs)

    def setup_schedule(self) -> None:
        # No entries at all: beat_schedule and Celery's default entries are ignored on purpose.
        global _preacquired
        from auditor.store import open_store

        self.sessions = open_store()
        if _preacquired is not None:
            self.lock, _preacquired = _preacquired, None
        else:  # started as `celery beat -S workers.beat:DatabaseScheduler`
            self.lock = BeatLock(self.app.conf.broker_url, lock_ttl(self.interval))
            self.lock.acquire()

    def tick(self, *args: Any, **kwargs: Any) -> float:
        assert self.lock is not None
        try:
            self.lock.renew()
        except LockLost as exc:
            log.error("%s", exc)
            _lost_lock.append(str(exc))
            raise SystemExit(1) from None
        except RedisError as exc:
            # Unsure whether we still hold the lock: send nothing until a renewal succeeds.
            log.warning("cannot renew the beat lock (%s); skipping this tick", exc)
            return self.interval
        try:
            self.send_if_due()
            self.reconcile_if_due()
        except Exception as exc:  # a database or broker outage must not stop beat
            log.error(
                "beat tick failed (%s: %s); trying again in %gs",
                type(exc).__name__,
                str(exc).strip().splitlines()[0] if str(exc).strip() else "",
                self.interval,
            )
            log.debug("beat tick failure", exc_info=True)
        return self.interval

    def reconcile_if_due(self) -> None:
        """Every lease / 2 seconds: lost running audits and queued audits with no message
        (auditor.reconcile), so a deployment with beat and no idle worker still heals."""
        from workers.dispatch import reconcile_now

        now = time.monotonic()
        if now - getattr(self, "_reconciled", -1e18) < get_settings().lease_seconds / 2:
            return
        self._reconciled = now
        done = reconcile_now(self.sessions)
        if done:
            log.warning("reconciled audits: %s", done)

    def send_if_due(self) -> bool:
        """Send one tick task when a schedule is due that was not sent for recently."""
        from auditor.store import schedules as schedule_store

        with self.sessions() as s:
            due = [(sch.id, sch.next_run_at) for sch in schedule_store.due_schedules(s)]
        now, still_due = time.monotonic(), set(due)
        self._sent = {k: t for k, t in self._sent.items() if k in still_due}
        fresh = [k for k in due if now - self._sent.get(k, -1e18) >= self.resend_after]
        if not fresh:
            return False
        self.app.send_task(TICK_TASK, expires=self.resend_after)
        for k in due:
            self._sent[k] = now
        log.info("schedules due: %s; sent %s", ", ".join(str(i) for i, _ in fresh), TICK_TASK)
        return True

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()
        super().close()

    @property
    def info(self) -> str:
        url = redact(get_settings().database_url)
        return (
            f"    . schedules -> table schedules in {url}, read every {self.interval:g}s\n"
            f"    . lock -> {LOCK_KEY} (redis)"
        )


def run_beat(
    *, interval: float | None = None, standby: bool = False, loglevel: str = "info"
) -> None:
    """Check the database and broker, take the lock, then run Celery beat until stopped."""
    global _preacquired, _interval
    settings = get_settings()
    broker_url = settings.require_broker(instead="run `auditor schedule tick` from cron")
    if interval is not None and not interval > 0:
        raise AuditorError("--interval must be more than 0 seconds")
    interval = interval or beat_interval()
    from auditor.store import open_store

    open_store()  # fail now, in one line, when the database is down or behind
    lock = BeatLock(broker_url, lock_ttl(interval))
    lock.acquire(standby=standby)
    _preacquired, _interval = lock, interval
    _lost_lock.clear()
    try:
        from workers.celery_app import app

        app.Beat(
            scheduler=DatabaseScheduler, loglevel=loglevel.upper(), max_interval=interval
        ).run()
    finally:
        lock.release()
        _preacquired = _interval = None
    if _lost_lock:
        raise ServiceError(_lost_lock[-1])
