"""`auditor worker` without services: which processes it plans, and how its supervisor treats
them (stand-in children that only sleep, so these run in a second or two)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from auditor.cli.main import app
from workers.supervisor import plan_workers, thread_env, visible_gpus

runner = CliRunner()

CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    def stop(*_):
        print(f"{os.getpid()} got SIGTERM", flush=True)
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    print(f"{os.getpid()} ready", flush=True)
    if os.environ.get("CRASH_ONCE") and not os.path.exists(os.environ["CRASH_ONCE"]):
        open(os.environ["CRASH_ONCE"], "w").close()
        sys.exit(3)
    if os.environ.get("ALWAYS_CRASH"):
        sys.exit(3)
    time.sleep(60)
    """
)


def test_one_solo_worker_per_gpu_on_the_right_device(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY"):
        monkeypatch.delenv(var, raising=False)
    specs = plan_workers("gpu,default", "info", gpus=2, concurrency=None)
    assert [s.name for s in specs] == ["auditor-gpu0", "auditor-gpu1"]
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in specs] == ["0", "1"]
    argv = specs[1].argv
    assert argv[argv.index("--pool") + 1] == "solo"
    assert argv[argv.index("--queues") + 1] == "gpu,default"
    assert argv[argv.index("--hostname") + 1] == "auditor-gpu1@%h"
    assert argv[0] == sys.executable and "-m" not in argv  # nothing imported from the cwd
    assert (argv[1] == "-P") == (sys.version_info >= (3, 11))
    code = argv[argv.index("-c") + 1]
    assert code.endswith("from workers.celery_app import run_worker; run_worker()")

    cpu = plan_workers("gpu", "debug", gpus=0, concurrency=None)
    assert len(cpu) == 1 and "auditor@%h" in cpu[0].argv
    assert "CUDA_VISIBLE_DEVICES" not in cpu[0].env
    assert len(plan_workers("gpu", "info", gpus=0, concurrency=3)) == 3
    spread = plan_workers("gpu", "info", gpus=2, concurrency=3)
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in spread] == ["0", "1", "0"]


def test_workers_share_the_cores_and_wait_passively_unless_the_user_says_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert thread_env(2, {}) == {"OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4", "OMP_WAIT_POLICY": "PASSIVE"}
    assert thread_env(16, {})["OMP_NUM_THREADS"] == "1"  # never zero threads
    assert thread_env(2, {"OMP_NUM_THREADS": "3"}) == {"MKL_NUM_THREADS": "4", "OMP_WAIT_POLICY": "PASSIVE"}
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    specs = plan_workers("gpu", "info", gpus=0, concurrency=4)
    assert {s.env["OMP_NUM_THREADS"] for s in specs} == {"2"}


def test_an_inherited_device_list_is_respected() -> None:
    assert visible_gpus(2, {"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert visible_gpus(2, {"CUDA_VISIBLE_DEVICES": "GPU-a1, GPU-b2"}) == ["GPU-a1", "GPU-b2"]
    assert visible_gpus(2, {}) == ["0", "1"]


def test_bad_options_and_a_missing_broker_are_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("the worker must not start"))
    for args, message in (
        (["worker"], "error: no broker configured: set AUDITOR_BROKER_URL"),
        (["worker", "--queues", " , "], "error: --queues needs at least one queue name"),
        (["worker", "--loglevel", "loud"], "error: --loglevel must be one of"),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code != 0 and result.stdout == ""
        assert result.stderr.startswith(message) and len(result.stderr.strip().splitlines()) == 1


def _supervisor(
    tmp_path: Path,
    children: int = 2,
    crash_once: bool = False,
    always_crash: bool = False,
    max_restarts: int = 5,
):
    """`Supervisor.run()` in its own process (and process group) over sleeping children.

    A child exits 0 on SIGTERM, as a real solo worker does (it stops at once and requeues)."""
    script = textwrap.dedent(
        f"""
        import sys
        from workers.supervisor import Supervisor, WorkerSpec
        specs = [WorkerSpec(f"c{{i}}", [sys.executable, "-c", {CHILD!r}]) for i in range({children})]
        sys.exit(Supervisor(specs, max_restarts={max_restarts}).run())
        """
    )
    log = tmp_path / "supervisor.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if crash_once:
        env["CRASH_ONCE"] = str(tmp_path / "crashed")
    if always_crash:
        env["ALWAYS_CRASH"] = "1"
    out = log.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=out, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    out.close()
    return proc, log


def _wait(predicate, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _ready_pids(log: Path) -> list[int]:
    return [
        int(line.split()[0]) for line in log.read_text().splitlines() if line.endswith(" ready")
    ]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


@pytest.fixture
def cleanup():
    procs: list[subprocess.Popen] = []
    yield procs.append
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def test_sigterm_reaches_every_child_and_the_supervisor_waits_for_them(tmp_path, cleanup) -> None:
    proc, log = _supervisor(tmp_path)
    cleanup(proc)
    _wait(lambda: len(_ready_pids(log)) == 2)
    children = _ready_pids(log)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    text = log.read_text()
    assert all(f"{pid} got SIGTERM" in text for pid in children)
    assert not any(_alive(pid) for pid in children)


def test_children_get_sigterm_when_the_supervisor_is_sigkilled(tmp_path, cleanup) -> None:
    proc, log = _supervisor(tmp_path)
    cleanup(proc)
    _wait(lambda: len(_ready_pids(log)) == 2)
    children = _ready_pids(log)
    proc.kill()  # the supervisor only: no chance to pass anything on
    proc.wait(timeout=10)
    _wait(lambda: all(f"{pid} got SIGTERM" in log.read_text() for pid in children))
    _wait(lambda: not any(_alive(pid) for pid in children))


def test_a_crashed_child_is_started_again(tmp_path, cleanup) -> None:
    proc, log = _supervisor(tmp_path, children=1, crash_once=True)
    cleanup(proc)
    _wait(lambda: len(_ready_pids(log)) == 2)  # the first one crashed, the second one runs
    assert "exited with code 3; starting it again in 1 s" in log.read_text()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0


def test_a_child_stopped_or_killed_from_outside_is_started_again_and_each_exit_is_logged(
    tmp_path, cleanup
) -> None:
    """Issue 27: a worker sent SIGTERM alone exits 0 like a clean shutdown, and was not started
    again (two workers became one, and nothing was logged)."""
    proc, log = _supervisor(tmp_path, children=2)
    cleanup(proc)
    _wait(lambda: len(_ready_pids(log)) == 2)
    first, second = _ready_pids(log)
    os.kill(first, signal.SIGTERM)
    _wait(lambda: len(_ready_pids(log)) == 3)
    replacement = _ready_pids(log)[2]
    assert replacement not in (first, second) and _alive(second)
    restarted = f"(pid {first}) exited with code 0; starting it again in 1 s (restart 1 of at most"
    assert restarted in log.read_text()

    os.kill(second, signal.SIGKILL)
    _wait(lambda: len(_ready_pids(log)) == 4)
    assert f"(pid {second}) was killed by SIGKILL; starting it again in 1 s" in log.read_text()

    running = _ready_pids(log)[2:]
    proc.send_signal(signal.SIGTERM)  # stopping the supervisor still stops every child
    assert proc.wait(timeout=20) == 0
    text = log.read_text()
    assert all(f"{pid} got SIGTERM" in text for pid in running)
    assert not any(_alive(pid) for pid in running)
    assert text.count("; stopping, ") == 2 and "still running" in text
    assert len(_ready_pids(log)) == 4  # nothing started once stopping


def test_a_child_that_keeps_exiting_stops_the_supervisor_after_its_restarts(
    tmp_path, cleanup
) -> None:
    proc, log = _supervisor(tmp_path, children=2, always_crash=True, max_restarts=1)
    cleanup(proc)
    assert proc.wait(timeout=30) == 3  # 1 s back-off, one restart, then it gives up
    text = log.read_text()
    assert "exited with code 3; starting it again in 1 s (restart 1 of at most 1 within 60" in text
    assert "exited 2 times within 60 s, so it is not started again: stopping all workers" in text


def test_visibility_timeout_and_the_restore_sweep_that_follows_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from auditor.errors import ServiceError
    from workers.celery_app import DEFAULT_VISIBILITY_TIMEOUT, restore_interval, visibility_timeout

    monkeypatch.delenv("AUDITOR_VISIBILITY_TIMEOUT", raising=False)
    assert visibility_timeout() == DEFAULT_VISIBILITY_TIMEOUT
    monkeypatch.setenv("AUDITOR_VISIBILITY_TIMEOUT", "3")
    assert visibility_timeout() == 3
    for bad in ("3s", "0", "-5"):
        monkeypatch.setenv("AUDITOR_VISIBILITY_TIMEOUT", bad)
        with pytest.raises(ServiceError, match="whole number of seconds"):
            visibility_timeout()
    # kombu's defaults sweep for dead workers' messages every 100 s; ours every 1-10 s
    assert restore_interval(3) == 1 and restore_interval(40) == 10
    assert restore_interval(DEFAULT_VISIBILITY_TIMEOUT) == 10


def test_the_app_sweeps_on_every_restore_interval() -> None:
    from workers.celery_app import app

    options = app.conf.broker_transport_options
    assert options["unacked_restore_throttle"] == 1
    assert options["visibility_timeout"] == app.conf.visibility_timeout
