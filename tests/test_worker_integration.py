"""The service end to end: the CLI enqueues on real Redis, a real `auditor worker` subprocess runs
the audit, results land in a real PostgreSQL database (a fresh one per test).

Workers run with a visibility timeout of a few seconds, so a message whose worker was SIGKILLed
comes back quickly. Every worker is started in its own process group and killed with it when the
test ends, pass or fail.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from factories import make_records
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from auditor.cli.main import app
from auditor.data.base import Examples
from auditor.data.bundled import digits, write_npz
from auditor.store import audits as audit_store
from auditor.store import datasets as dataset_store
from auditor.store import findings as finding_store
from auditor.store import open_store
from auditor.store import reviews as review_store
from auditor.store.models import Finding
from tests.helpers import wait_for

pytestmark = [pytest.mark.services, pytest.mark.slow]

REDIS_URL = "redis://127.0.0.1:6379/11"  # this file's own Redis database, flushed around each test
VISIBILITY_TIMEOUT_S = 3
AUDITOR = str(Path(sys.executable).with_name("auditor"))
runner = CliRunner()


# ---------------------------------------------------------------------------------------------
# helpers


def cli(*args: str) -> Any:
    """Run `auditor ARGS` in process; return the parsed JSON (the command must succeed)."""
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, f"auditor {' '.join(args)}: {result.stderr or result.stdout}"
    return json.loads(result.stdout) if "--json" in args else result.stdout


_clock = [time.monotonic()]


def mark(what: str) -> None:
    """Print how far into the test we are (pytest shows it for failures, or with -s)."""
    print(f"{time.monotonic() - _clock[0]:6.1f} s  {what}")


def status(audit_id: int) -> dict[str, Any]:
    return cli("audit", "status", str(audit_id), "--json")


def wait_finished(audit_id: int, timeout: float = 120) -> dict[str, Any]:
    """Poll `auditor audit status ID --json` until the audit ends; return its document."""

    def finished() -> dict[str, Any] | None:
        doc = status(audit_id)
        return doc if doc["status"] in ("succeeded", "failed", "cancelled") else None

    doc = wait_for(finished, timeout, f"audit {audit_id} to finish")
    mark(f"audit {audit_id} {doc['status']}")
    return doc


def wait_running(audit_id: int, timeout: float = 60) -> dict[str, Any]:
    """Until a worker is inside the analysis: status running and some progress recorded."""

    def running() -> dict[str, Any] | None:
        doc = status(audit_id)
        assert doc["status"] in ("queued", "running"), doc
        return doc if doc["status"] == "running" and doc["progress"] > 0 else None

    doc = wait_for(running, timeout, f"audit {audit_id} to be running", interval=0.1)
    mark(f"audit {audit_id} running: {doc['progress']:.2f} {doc['message']}")
    return doc


def finding_counts(sessions: sessionmaker[Session], audit_id: int) -> tuple[int, int]:
    """(rows, distinct example keys) of an audit's findings, straight from the database."""
    with sessions() as s:
        rows, keys = s.execute(
            select(func.count(), func.count(func.distinct(Finding.example_key))).where(
                Finding.audit_id == audit_id
            )
        ).one()
    return int(rows), int(keys)


def enqueue(dataset: str, *options: str) -> int:
    doc = cli("audit", "enqueue", "label-check", dataset, "--json", *options)
    assert doc["status"] == "queued"
    return int(doc["id"])


def digits_npz(path: Path, n: int | None = None) -> Path:
    d = digits()
    rows = slice(0, n)
    return write_npz(Examples(x=d.x[rows], y=d.y[rows], keys=d.keys[rows], is_image=True), path)


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_ready(self, count: int = 1, timeout: float = 90) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"worker exited with {self.proc.returncode}:\n{self.text()[-3000:]}")
            return self.text().count(" ready.") >= count

        wait_for(ready, timeout, f"{count} worker(s) to be ready")
        mark("worker ready")

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def group_alive(self) -> bool:
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        return True


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(autouse=True)
def _start_clock() -> None:
    _clock[0] = time.monotonic()


@pytest.fixture
def broker(redis_db: redis.Redis) -> redis.Redis:
    """The broker's Redis database (flushed around each test by `redis_db`)."""
    return redis_db


@pytest.fixture
def service(
    pg_url: str, broker: redis.Redis, isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """The environment of a deployment, for the in-process CLI and the worker subprocesses."""
    env = {
        "AUDITOR_HOME": str(isolated_home),
        "AUDITOR_DATABASE_URL": pg_url,
        "AUDITOR_BROKER_URL": REDIS_URL,
        "AUDITOR_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT_S),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cli("db", "upgrade")
    yield env


@pytest.fixture
def sessions(service: dict[str, str]) -> sessionmaker[Session]:
    return open_store(service["AUDITOR_DATABASE_URL"])


@pytest.fixture
def start_worker(service: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Start `auditor worker` subprocesses (own process group each); all are killed at the end."""
    started: list[Worker] = []

    def start(*args: str, **extra_env: str) -> Worker:
        log = tmp_path / f"worker-{len(started)}.log"
        env = {
            **os.environ,
            **service,
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            **extra_env,
        }
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [AUDITOR, "worker", "--loglevel", "info", *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = Worker(proc, log)
        started.append(worker)
        mark(f"worker {len(started) - 1} started")
        return worker

    yield start
    for i, worker in enumerate(started):
        worker.signal_group(signal.SIGKILL)
        try:
            worker.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        print(f"--- worker {i} log (tail) ---\n{worker.text()[-4000:]}")  # shown on failure


@pytest.fixture
def small(service: dict[str, str], tmp_path: Path) -> str:
    """300 digits, registered as dataset `small` (a logreg label check takes seconds)."""
    cli("dataset", "add", "small", str(digits_npz(tmp_path / "small.npz", 300)))
    return "small"


@pytest.fixture
def full(service: dict[str, str], tmp_path: Path) -> str:
    """All 1,797 digits as dataset `full`: long enough to catch a worker mid-audit."""
    cli("dataset", "add", "full", str(digits_npz(tmp_path / "full.npz")))
    return "full"


# ---------------------------------------------------------------------------------------------
# tests


def test_an_enqueued_audit_runs_on_a_worker_and_a_redelivery_is_a_no_op(
    small: str, start_worker, sessions: sessionmaker[Session], broker: redis.Redis
) -> None:
    worker = start_worker()
    audit_id = enqueue(small)
    doc = wait_finished(audit_id)
    assert doc["status"] == "succeeded", doc
    assert doc["task_id"] and doc["progress"] == 1.0
    assert finding_counts(sessions, audit_id) == (300, 300)
    rows = cli("findings", "list", str(audit_id), "--top", "5", "--json")
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]

    # The same task delivered again (what a worker lost after the audit finished causes):
    # the runner sees the audit succeeded and returns without touching it.
    from workers.dispatch import dispatch

    again = dispatch(audit_id)
    done = re.compile(rf"Task auditor\.run_audit\[{again}\] succeeded in [0-9.]+s: '(\w+)'")
    returned = wait_for(lambda: done.search(worker.text()), 60, "the second delivery to be run")
    assert returned.group(1) == "succeeded"
    after = status(audit_id)
    assert after["status"] == "succeeded" and after["finished_at"] == doc["finished_at"]
    assert after["task_id"] == doc["task_id"]
    assert finding_counts(sessions, audit_id) == (300, 300)
    assert broker.llen("gpu") == 0 and broker.zcard("unacked_index") == 0


def test_a_sigkilled_worker_s_audit_is_finished_by_the_next_worker(
    full: str, start_worker, sessions: sessionmaker[Session], broker: redis.Redis
) -> None:
    first = start_worker()
    audit_id = enqueue(full)
    wait_running(audit_id)
    first.signal_group(signal.SIGKILL)
    first.proc.wait(timeout=10)
    killed = status(audit_id)
    assert killed["status"] == "running" and finding_counts(sessions, audit_id) == (0, 0)
    # The message is neither acked nor back in the queue: it waits in kombu's unacked set
    # until a live worker's sweep finds it older than the visibility timeout.
    assert broker.zcard("unacked_index") == 1 and broker.llen("gpu") == 0

    second = start_worker()
    doc = wait_finished(audit_id)
    assert doc["status"] == "succeeded", doc
    assert finding_counts(sessions, audit_id) == (1797, 1797)
    ranks = sorted(f.rank for f in _findings(sessions, audit_id))
    assert ranks == list(range(1, 1798))
    assert "auditor.run_audit" in second.text()
    assert broker.llen("gpu") == 0 and broker.zcard("unacked_index") == 0


def test_cancel_stops_a_running_audit_within_seconds(
    full: str, start_worker, sessions: sessionmaker[Session]
) -> None:
    start_worker()
    audit_id = enqueue(full)
    wait_running(audit_id)
    asked = time.monotonic()
    cancelled = cli("audit", "cancel", str(audit_id), "--json")
    assert cancelled["cancel_requested"]
    doc = wait_finished(audit_id, timeout=30)
    took = time.monotonic() - asked
    assert doc["status"] == "cancelled", doc
    assert took < 20, f"cancel took {took:.1f} s"
    # the runner stores findings only at the end, so a cancelled run leaves none half-written
    assert finding_counts(sessions, audit_id) == (0, 0)
    refused = runner.invoke(app, ["audit", "cancel", str(audit_id)])
    assert refused.exit_code == 0  # cancelling a cancelled audit is a no-op


def test_sigterm_requeues_the_running_audit_at_once(
    full: str, start_worker, sessions: sessionmaker[Session], broker: redis.Redis
) -> None:
    first = start_worker()
    audit_id = enqueue(full)
    wait_running(audit_id)
    asked = time.monotonic()
    first.proc.send_signal(signal.SIGTERM)
    first.proc.wait(timeout=20)
    assert time.monotonic() - asked < 15
    assert not first.group_alive()
    doc = status(audit_id)
    assert doc["status"] == "queued" and "back to the queue" in doc["message"], doc
    # Back in the queue itself, where the next worker gets it at once, not in the unacked set
    # waiting for a visibility-timeout sweep (12 hours in production). The runner's path from
    # queued to a fresh run is covered in test_runner.py.
    assert broker.llen("gpu") == 1 and broker.zcard("unacked_index") == 0
    assert finding_counts(sessions, audit_id) == (0, 0)


def test_ctrl_c_on_a_supervisor_stops_its_workers_and_requeues_their_audit(
    full: str, start_worker, broker: redis.Redis
) -> None:
    """Two workers under one `auditor worker`; Ctrl+C in its terminal signals the whole group,
    so each worker gets SIGINT twice (terminal, then supervisor): still a clean requeue."""
    supervisor = start_worker("--concurrency", "2")
    supervisor.wait_ready(count=2)
    assert "auditor-cpu0@" in supervisor.text() and "auditor-cpu1@" in supervisor.text()
    assert len(_child_pids(supervisor.proc.pid)) == 2
    audit_id = enqueue(full)
    wait_running(audit_id)
    supervisor.signal_group(signal.SIGINT)
    assert supervisor.proc.wait(timeout=20) == 0
    wait_for(lambda: not supervisor.group_alive(), 10, "the workers to exit")
    doc = status(audit_id)
    assert doc["status"] == "queued", doc
    assert broker.llen("gpu") == 1 and broker.zcard("unacked_index") == 0


def test_a_down_broker_or_database_is_one_line_and_writes_nothing(
    small: str, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    # `auditor worker` execs Celery once its checks pass: never let it replace pytest
    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail(f"worker would start: {a[1]}"))
    monkeypatch.setenv("AUDITOR_BROKER_URL", "redis://127.0.0.1:1/0")
    started = time.monotonic()
    result = runner.invoke(app, ["audit", "enqueue", "label-check", small, "--json"])
    assert result.exit_code != 0 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach the broker at "), lines
    assert time.monotonic() - started < 15
    with sessions() as s:
        assert audit_store.list_audits(s) == []
    worker = runner.invoke(app, ["worker"])
    assert worker.exit_code != 0 and "cannot reach the broker" in worker.stderr
    assert len(worker.stderr.strip().splitlines()) == 1

    monkeypatch.setenv("AUDITOR_BROKER_URL", REDIS_URL)
    monkeypatch.setenv("AUDITOR_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:1/x")
    result = runner.invoke(app, ["audit", "enqueue", "label-check", small, "--json"])
    assert result.exit_code != 0 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach database at "), lines


def test_a_failing_audit_records_why_and_leaves_earlier_results_alone(
    service: dict[str, str],
    start_worker,
    sessions: sessionmaker[Session],
    tmp_path: Path,
) -> None:
    path = digits_npz(tmp_path / "frail.npz", 120)
    cli("dataset", "add", "frail", str(path))
    # an earlier audit of the same dataset, with findings and a reviewer's decision
    with sessions() as s, s.begin():
        dataset = dataset_store.get_dataset(s, "frail")
        earlier = audit_store.create_audit(s, "label-check", dataset)
        audit_store.set_audit_status(s, earlier.id, "running")
        finding_store.upsert_findings(s, earlier.id, make_records(40))
        audit_store.set_audit_status(s, earlier.id, "succeeded")
        first = finding_store.list_findings(s, earlier.id, top=1)[0]
        review_store.decide(s, first.id, "relabelled", 3, reviewer="ann")
    before = _snapshot_of(sessions, earlier.id)

    corrupted = enqueue("frail")  # queued while no worker runs; then the file goes bad
    path.write_bytes(b"this is not an npz file")
    start_worker()
    doc = wait_finished(corrupted)
    assert doc["status"] == "failed", doc
    assert "not a readable .npz file" in doc["error"] and str(path) in doc["error"]
    assert "\n" not in doc["error"]

    digits_npz(path, 120)
    deleted = enqueue("frail")
    path.unlink()
    doc = wait_finished(deleted)
    assert doc["status"] == "failed" and "no such file" in doc["error"], doc

    assert _snapshot_of(sessions, earlier.id) == before
    assert finding_counts(sessions, corrupted) == (0, 0)
    listed = {d["id"]: d["status"] for d in cli("audit", "list", "--json")}
    assert listed == {earlier.id: "succeeded", corrupted: "failed", deleted: "failed"}


# ---------------------------------------------------------------------------------------------


def _findings(sessions: sessionmaker[Session], audit_id: int) -> list[Finding]:
    with sessions() as s:
        return finding_store.list_findings(s, audit_id)


def _snapshot_of(sessions: sessionmaker[Session], audit_id: int) -> tuple[Any, ...]:
    """Everything a failing later audit must not change: the audit, its findings, the reviews."""
    with sessions() as s:
        audit = audit_store.get_audit(s, audit_id)
        findings = [
            (f.id, f.example_key, f.score, f.rank, f.label) for f in finding_store.list_findings(s, audit_id)
        ]
        reviews = [
            (r.id, r.example_key, r.decision, r.new_label, r.version)
            for r in review_store.list_reviews(s, audit.dataset_id)
        ]
        return audit.status, audit.finished_at, findings, reviews


def _child_pids(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_two_workers_score_shards_against_one_stored_fit(
    service: dict[str, str], start_worker, sessions: sessionmaker[Session], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sharded label check on two real worker processes: the fan-out task trains and fits once
    and stores both; each shard, on either worker, loads them; the result equals one in-process
    run that fits everything itself. 28x28 images.

    This file's 3 s visibility timeout would redeliver a shard that runs longer (a busy CI
    machine), and a redelivered shard loads the artifacts once more; the count of loads below is
    exact only with one delivery per shard, so this test's broker waits a minute instead."""
    monkeypatch.setenv("AUDITOR_VISIBILITY_TIMEOUT", "60")
    import numpy as np
    import torch

    d = digits()
    x = torch.nn.functional.interpolate(torch.tensor(d.x[:240], dtype=torch.float32)[:, None], size=(28, 28), mode="bilinear")[:, 0]
    x = x.round().clamp(0, 255).to(torch.uint8).numpy()
    from auditor.data.keys import example_keys

    write_npz(Examples(x, d.y[:240], example_keys(x, d.y[:240]), is_image=True), tmp_path / "d28.npz")
    cli("dataset", "add", "d28", str(tmp_path / "d28.npz"))
    supervisor = start_worker("--concurrency", "2", AUDITOR_VISIBILITY_TIMEOUT="60")
    supervisor.wait_ready(count=2)
    audit_id = int(cli("audit", "enqueue", "label-check", "d28", "--model", "logreg", "--solver", "ekfac",
                       "--shards", "2", "--why-top", "0", "--json")["id"])  # fmt: skip
    doc = wait_finished(audit_id, timeout=240)
    assert doc["status"] == "succeeded", doc
    assert doc["summary"]["shards"] == 2 and doc["summary"]["curvature"]["reused"] is True
    stored = {a["kind"]: a["uses"] for a in cli("artifacts", "list", "--json")}
    assert stored == {"curvature": 2, "weights": 2}  # fitted once; each of the two shards loaded both
    text = supervisor.text()
    assert "auditor.run_shard" in text and "succeeded" in text
    single = cli("audit", "run", "label-check", "d28", "--model", "logreg", "--solver", "ekfac",
                 "--why-top", "0", "--no-reuse", "--json")  # fmt: skip
    with sessions() as s:
        a = sorted(finding_store.list_findings(s, audit_id), key=lambda f: f.rank)
        b = sorted(finding_store.list_findings(s, single["id"]), key=lambda f: f.rank)
    assert [f.example_key for f in a] == [f.example_key for f in b]
    np.testing.assert_allclose([f.score for f in a], [f.score for f in b], rtol=1e-9)
