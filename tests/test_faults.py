"""Outages and hostile audits with real processes: no audit is lost, none stays `running` or
`queued` forever, a poison audit is failed after its bounded deliveries, and a worker calls no
factory that nobody registered.

- PostgreSQL is cut off from a running worker by a TCP proxy the test owns (the shared server is
  never stopped): the worker talks to the database through it, and the test closes it for 8 s.
- Redis without persistence is a `redis-server` of the test's own on a free port, killed and
  started again empty, as a restart would leave it.
- An embedded `auditor audit run` is SIGKILLed mid-audit.
Every worker runs in its own process group and is killed with it when the test ends.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from auditor.cli.main import app
from auditor.data.base import Examples
from auditor.data.bundled import digits, write_npz
from tests.helpers import cli, wait_for

pytestmark = [pytest.mark.services, pytest.mark.slow]

AUDITOR = str(Path(sys.executable).with_name("auditor"))
REDIS_URL = "redis://127.0.0.1:6379/13"  # this file's own database on the shared Redis
runner = CliRunner()
FINAL = ("succeeded", "failed", "cancelled")


def status(audit_id: int) -> dict[str, Any]:
    return cli("audit", "status", str(audit_id), "--json")


def wait_final(audit_id: int, timeout: float = 180) -> dict[str, Any]:
    return wait_for(lambda: (d := status(audit_id))["status"] in FINAL and d, timeout, f"audit {audit_id} to end")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def digits_npz(path: Path, n: int | None = None) -> str:
    d = digits()
    return str(write_npz(Examples(d.x[:n], d.y[:n], d.keys[:n], is_image=True), path))


class Proxy:
    """A TCP proxy to PostgreSQL that the test can cut (every connection dropped, new ones
    refused) and restore: a database outage for the processes behind it only."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target, self.port = target, free_port()
        self.conns: list[socket.socket] = []
        self.server: socket.socket | None = None
        self.lock = threading.Lock()
        self.restore()

    def restore(self) -> None:
        self.server = socket.create_server(("127.0.0.1", self.port), reuse_port=True)
        threading.Thread(target=self._accept, args=(self.server,), daemon=True).start()

    def cut(self) -> None:
        assert self.server is not None
        try:  # wakes the thread blocked in accept(); close() alone leaves the socket listening
            self.server.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.server.close()
        with self.lock:
            for c in self.conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()
            self.conns.clear()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass


class Workers:
    """`auditor worker` subprocesses in their own process groups, logs kept for failures."""

    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self.env, self.tmp, self.procs = env, tmp, []

    def start(self, **extra: str) -> subprocess.Popen[bytes]:
        log = self.tmp / f"worker-{len(self.procs)}.log"
        env = {**os.environ, **self.env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}
        with log.open("wb") as out:
            proc = subprocess.Popen([AUDITOR, "worker", "--loglevel", "info"], env=env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        self.procs.append((proc, log))
        return proc

    def stop_all(self) -> None:
        for proc, log in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
            print(f"--- {log.name} ---\n{log.read_text(errors='replace')[-3000:]}")


@pytest.fixture
def deployment(pg_url: str, isolated_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, str]]:
    """PostgreSQL (a fresh database) and the shared Redis (this module's database), set up for
    the in-process CLI; the workers get the same environment."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    env = {
        "AUDITOR_HOME": str(isolated_home),
        "AUDITOR_DATABASE_URL": pg_url,
        "AUDITOR_BROKER_URL": REDIS_URL,
        "AUDITOR_VISIBILITY_TIMEOUT": "3",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cli("db", "upgrade")
    cli("dataset", "add", "full", digits_npz(tmp_path / "full.npz"))
    cli("dataset", "add", "small", digits_npz(tmp_path / "small.npz", 300))
    yield env
    client.flushdb()
    client.close()


@pytest.fixture
def workers(deployment: dict[str, str], tmp_path: Path) -> Iterator[Workers]:
    w = Workers(deployment, tmp_path)
    yield w
    w.stop_all()


def enqueue(dataset: str, *options: str) -> int:
    return int(cli("audit", "enqueue", "label-check", dataset, "--json", *options)["id"])


def test_a_database_outage_under_a_running_worker_loses_no_audit(
    deployment: dict[str, str], workers: Workers, pg_url: str
) -> None:
    proxy = Proxy(("127.0.0.1", 5432))
    through_proxy = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    workers.start(AUDITOR_DATABASE_URL=through_proxy, AUDITOR_LEASE_SECONDS="8")
    log = workers.procs[-1][1]
    warm = enqueue("small")
    assert wait_final(warm)["status"] == "succeeded"
    # 1. the database goes away while the worker is idle, and audits are queued meanwhile: the
    #    worker receives them, cannot reach the database, and retries instead of acking them
    proxy.cut()
    queued = [enqueue("small"), enqueue("small")]
    wait_for(lambda: "Retry in" in log.read_text(errors="replace"), 30, "the worker to retry a delivery")
    time.sleep(2)
    proxy.restore()
    # 2. the database goes away for 8 s while the worker computes an audit
    busy = enqueue("full", "--model", "mlp")
    wait_for(lambda: (d := status(busy))["status"] == "running" and d["progress"] > 0, 120, "the audit to run")
    proxy.cut()
    time.sleep(8)
    proxy.restore()
    docs = [wait_final(i, timeout=240) for i in [*queued, busy]]
    assert [d["status"] for d in docs] == ["succeeded"] * 3, docs
    text = log.read_text(errors="replace")
    assert "heartbeat not recorded" in text or "could not record progress" in text or "trying again" in text


def test_queued_audits_survive_a_redis_restart_that_lost_every_message(
    pg_url: str, isolated_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    port = free_port()

    def redis_server() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)  # fmt: skip
        wait_for(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, 10, "redis-server")
        return proc

    server = redis_server()
    env = {
        "AUDITOR_HOME": str(isolated_home),
        "AUDITOR_DATABASE_URL": pg_url,
        "AUDITOR_BROKER_URL": f"redis://127.0.0.1:{port}/0",
        "AUDITOR_VISIBILITY_TIMEOUT": "3",
        "AUDITOR_LEASE_SECONDS": "4",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cli("db", "upgrade")
    cli("dataset", "add", "small", digits_npz(tmp_path / "small.npz", 300))
    workers = Workers(env, tmp_path)
    try:
        ids = [enqueue("small"), enqueue("small")]  # no worker yet: both wait in Redis
        server.kill()
        server.wait()
        server = redis_server()  # back, and empty
        workers.start()
        docs = [wait_final(i, timeout=120) for i in ids]
        assert [d["status"] for d in docs] == ["succeeded"] * 2, docs
    finally:
        workers.stop_all()
        server.kill()
        server.wait()


def test_an_embedded_audit_whose_process_was_killed_ends_failed_with_the_reason(
    isolated_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AUDITOR_LEASE_SECONDS", "3")
    cli("dataset", "add", "full", digits_npz(tmp_path / "full.npz"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([AUDITOR, "audit", "run", "label-check", "full", "--model", "mlp"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        wait_for(lambda: runner.invoke(app, ["audit", "status", "1", "--json"]).exit_code == 0
                 and status(1)["status"] == "running", 60, "the audit to run")  # fmt: skip
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    doc = wait_for(lambda: (d := status(1))["status"] != "running" and d, 20, "the lease to expire")
    assert doc["status"] == "failed" and "no heartbeat" in doc["error"], doc
    # a cancel of a lost audit works too (nothing to do now: it is final) and says so
    assert runner.invoke(app, ["audit", "cancel", "1"]).exit_code != 0


POISON = """
import os, pathlib
def abort_factory(num_classes=2):
    os.abort()
def marker_factory(num_classes=2):
    pathlib.Path(os.environ["MARKER"]).write_text("called")
    raise SystemExit(0)
"""


def test_a_poison_audit_is_failed_after_its_bounded_deliveries(
    deployment: dict[str, str], workers: Workers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "team_poison.py").write_text(POISON)
    extra = {"PYTHONPATH": str(tmp_path), "AUDITOR_MODEL_FACTORIES": "team_poison:abort_factory",
             "AUDITOR_MAX_DELIVERIES": "2"}  # fmt: skip
    monkeypatch.setenv("AUDITOR_MODEL_FACTORIES", "team_poison:abort_factory")
    audit_id = enqueue("small", "--model", "team_poison:abort_factory")
    deadline, starts = time.monotonic() + 150, 0
    while status(audit_id)["status"] not in FINAL:  # a process manager restarting a dead worker
        assert time.monotonic() < deadline, status(audit_id)
        proc = workers.procs[-1][0] if workers.procs else None
        if proc is None or proc.poll() is not None:
            workers.start(**extra)
            starts += 1
        time.sleep(0.5)
    doc = status(audit_id)
    assert doc["status"] == "failed" and "gave up after 2 starts" in doc["error"], doc
    assert starts <= 4


def test_a_worker_does_not_call_a_factory_nobody_registered(
    deployment: dict[str, str], workers: Workers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even an audit row that names an unregistered factory (written past the front door, or
    registered on the machine that enqueued it but not on this worker) is failed, not run."""
    (tmp_path / "team_poison.py").write_text(POISON)
    marker = tmp_path / "called"
    monkeypatch.setenv("AUDITOR_MODEL_FACTORIES", "team_poison:marker_factory")  # here, not there
    audit_id = enqueue("small", "--model", "team_poison:marker_factory")
    workers.start(PYTHONPATH=str(tmp_path), MARKER=str(marker), AUDITOR_MODEL_FACTORIES="")
    doc = wait_final(audit_id, timeout=90)
    assert doc["status"] == "failed" and "not a registered factory" in doc["error"], doc
    assert not marker.exists()


def test_lds_retrains_on_workers_give_the_in_process_result(
    deployment: dict[str, str], workers: Workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`validate --metric lds` with a broker sends one task per subset to the workers (two here)
    and gets the same score as the run that retrains in its own process."""
    import json

    args = ["validate", "small", "--metric", "lds", "--subsets", "6", "--test-points", "5", "--json"]
    workers.start()
    workers.start()
    on_workers = cli(*args)
    monkeypatch.delenv("AUDITOR_BROKER_URL")
    here = cli(*args)
    assert on_workers["lds"] == pytest.approx(here["lds"], abs=1e-9)
    assert on_workers["per_test"] == pytest.approx(here["per_test"], abs=1e-9)
    log = "".join(p[1].read_text(errors="replace") for p in workers.procs)
    assert log.count("auditor.lds_retrain") >= 6, log[-2000:]
    json.dumps(on_workers)


def test_a_sigkilled_worker_s_audit_runs_again_after_a_lease_not_the_visibility_timeout(
    deployment: dict[str, str], workers: Workers, tmp_path: Path
) -> None:
    """With the visibility timeout at an hour, Redis alone would hand the dead worker's message
    back an hour later; the lease brings the audit back within seconds."""
    long_visibility = {"AUDITOR_VISIBILITY_TIMEOUT": "3600", "AUDITOR_LEASE_SECONDS": "4"}
    first = workers.start(**long_visibility)
    audit_id = enqueue("full", "--model", "mlp")
    wait_for(lambda: (d := status(audit_id))["status"] == "running" and d["progress"] > 0, 120, "the audit to run")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    workers.start(**long_visibility)
    doc = wait_final(audit_id, timeout=120)
    assert doc["status"] == "succeeded", doc
