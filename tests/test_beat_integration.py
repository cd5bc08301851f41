"""`auditor beat` end to end: real PostgreSQL, real Redis (database 12, flushed), a real beat and
a real Celery worker as subprocesses.

One beat process serves the whole test: a schedule added after beat started is picked up and
its audits run on the worker; pausing it in the database stops new runs without restarting
beat; a second beat is refused by the lock; stopping beat releases the lock.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select
from typer.testing import CliRunner

from auditor.cli.main import app
from auditor.data.base import Examples
from auditor.data.bundled import digits, write_npz
from auditor.data.keys import example_keys
from auditor.store import open_store
from auditor.store import schedules as schedule_store
from auditor.store.migrate import upgrade
from auditor.store.models import Audit
from workers.beat import LOCK_KEY

pytestmark = pytest.mark.services

REDIS_URL = "redis://127.0.0.1:6379/14"  # this file's own database (test_bad_input has 12)
ROOT = Path(__file__).resolve().parents[1]
AUDITOR = str(Path(sys.executable).with_name("auditor"))
runner = CliRunner()


def cli(*args: str) -> dict:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.stderr or result.output
    return json.loads(result.stdout)


def wait_for(condition: Callable[[], bool], timeout: float, what: str, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    tails = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs if p.exists())
    pytest.fail(f"timed out after {timeout}s waiting for {what}\n{tails}")


@pytest.fixture
def service_env(
    pg_url: str, redis_db: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """Environment for this process (CLI via CliRunner) and the subprocesses alike."""
    upgrade(pg_url)
    values = {
        "AUDITOR_DATABASE_URL": pg_url,
        "AUDITOR_BROKER_URL": REDIS_URL,
        "AUDITOR_HOME": str(tmp_path / "home"),
        "AUDITOR_BEAT_INTERVAL": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return {**os.environ, **values}


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start subprocesses with their output in log files; all are stopped in the finalizer."""
    started: list[subprocess.Popen] = []

    def start(name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = (tmp_path / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_beat_runs_schedules_from_the_table_and_is_alone(
    service_env: dict[str, str],
    spawn: Callable[..., subprocess.Popen],
    tmp_path: Path,
    redis_db: redis.Redis,
) -> None:
    d = digits()
    x, y = d.x[:200], d.y[:200]
    npz = write_npz(Examples(x=x, y=y, keys=example_keys(x, y)), tmp_path / "digits.npz")
    cli("dataset", "add", "dg", str(npz))
    logs = [tmp_path / "worker.log", tmp_path / "beat.log"]

    spawn(
        "worker",
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers.celery_app:app",
            "worker",
            "-P",
            "solo",
            "-Q",
            "gpu,default",
            "--loglevel",
            "info",
            "-n",
            "beat-test@%h",
        ],
        service_env,
    )
    beat = spawn("beat", [AUDITOR, "beat", "--loglevel", "info"], service_env)
    wait_for(lambda: redis_db.get(LOCK_KEY) is not None, 60, "beat to take its lock", logs)

    # added after beat started: beat reads the table every tick, no restart needed
    sid = cli(
        "schedule",
        "add",
        "dg",
        "label-check",
        "--every",
        "2s",
        "--due-now",
        "--no-skip-unchanged",
    )["schedule"]["id"]
    sessions = open_store()

    def audits(status: str | None = None) -> int:
        with sessions() as s:
            query = select(func.count()).select_from(Audit).where(Audit.schedule_id == sid)
            if status is not None:
                query = query.where(Audit.status == status)
            return int(s.scalar(query) or 0)

    wait_for(lambda: audits("succeeded") >= 1, 150, "a scheduled audit to succeed", logs)
    wait_for(lambda: audits() >= 2, 30, "a second run two seconds later", logs)

    # a second beat is refused by the lock, in one line, while the first keeps running
    second = subprocess.run(
        [AUDITOR, "beat"], cwd=ROOT, env=service_env, capture_output=True, text=True, timeout=120
    )
    assert second.returncode != 0
    assert "another auditor beat is running" in second.stderr
    assert second.stderr.strip().splitlines()[-1].startswith("error: ")
    assert beat.poll() is None

    # pausing in the database stops new runs, without restarting beat
    cli("schedule", "pause", str(sid))
    time.sleep(4)  # a tick that claimed the schedule just before the pause may still finish
    with sessions() as s:
        last_run: datetime | None = schedule_store.get_schedule(s, sid).last_run_at
    count = audits()
    time.sleep(6)
    with sessions() as s:
        assert schedule_store.get_schedule(s, sid).last_run_at == last_run
    assert audits() == count
    assert beat.poll() is None

    # resuming is picked up too
    cli("schedule", "resume", str(sid))
    wait_for(lambda: audits() > count, 60, "runs to start again after resume", logs)

    stop(beat)
    assert beat.returncode == 0, (tmp_path / "beat.log").read_text()[-3000:]
    assert redis_db.get(LOCK_KEY) is None  # released on a clean stop


def test_the_beat_lock_refuses_a_second_holder_and_notices_a_takeover(
    redis_db: redis.Redis,
) -> None:
    from auditor.errors import ServiceError
    from workers.beat import BeatLock, LockLost

    first, second = BeatLock(REDIS_URL, ttl=30), BeatLock(REDIS_URL, ttl=30)
    first.acquire()
    assert redis_db.get(LOCK_KEY).decode() == first.token
    with pytest.raises(ServiceError, match=f"held by {first.token}"):
        second.acquire()
    first.renew()
    assert 25 < redis_db.pttl(LOCK_KEY) / 1000 <= 30
    redis_db.set(LOCK_KEY, "intruder")  # e.g. the TTL ran out and a standby took over
    with pytest.raises(LockLost, match="now held by intruder"):
        first.renew()
    first.release()  # idempotent, never raises, and leaves the new holder's lock alone
    first.release()
    assert redis_db.get(LOCK_KEY) == b"intruder"
