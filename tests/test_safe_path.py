"""No code from the current directory runs in `auditor worker`, `auditor beat`, `auditor serve` or
the GPU probe (issue 27, item 1).

Each test plants, in an otherwise empty directory, modules named like the ones these processes
import (`celery.py`, a `workers/` and an `auditor/` package, `torch.py`, `uvicorn.py`, ...), each
writing a marker file when imported, then runs the real command from there with a real store
(SQLite) and broker (Redis database 9) until it is ready, stops it, and checks that no marker
was written. The environment is set explicitly (PYTHONPATH is this checkout, nothing else), so
only the command's own choices can put the directory on `sys.path`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from auditor.store.migrate import upgrade

pytestmark = pytest.mark.services

REDIS_URL = "redis://127.0.0.1:6379/9"
ROOT = Path(__file__).resolve().parents[1]
AUDITOR = str(Path(sys.executable).with_name("auditor"))
# Top-level names the worker, beat, app server and probe import (packages get an __init__.py).
PLANTED_MODULES = (
    "celery", "kombu", "redis", "torch", "numpy", "sqlalchemy", "typer", "click",
    "uvicorn", "fastapi", "starlette", "uvloop", "httptools", "h11",
    "proj",  # Celery's example app name, given as $APP below
)  # fmt: skip
PLANTED_PACKAGES = ("workers", "auditor")
READY_TIMEOUT_S = 90.0  # two cores shared with other test runs: a worker can take a while
STOP_TIMEOUT_S = 20.0


def plant(cwd: Path, markers: Path) -> None:
    """Modules in `cwd` that each write `markers/<name>` when imported."""
    cwd.mkdir(parents=True)
    markers.mkdir(parents=True)
    for name in (*PLANTED_MODULES, *PLANTED_PACKAGES):
        code = f"import pathlib\npathlib.Path({str(markers)!r}, {name!r}).write_text(__file__)\n"
        if name in PLANTED_PACKAGES:
            (cwd / name).mkdir()
            (cwd / name / "__init__.py").write_text(code)
        else:
            (cwd / f"{name}.py").write_text(code)


def planted_imports(markers: Path) -> list[str]:
    return sorted(p.name for p in markers.iterdir())


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, Path]:
    cwd, markers = tmp_path / "cwd", tmp_path / "markers"
    plant(cwd, markers)
    return cwd, markers


@pytest.fixture
def service_env(tmp_path: Path, redis_db: object) -> dict[str, str]:
    """A migrated SQLite store, Redis database 9, and nothing inherited that touches sys.path."""
    db = tmp_path / "db" / "auditor.db"
    db.parent.mkdir()
    url = f"sqlite:///{db}"
    upgrade(url)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path / "user-home"),
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "AUDITOR_HOME": str(tmp_path / "home"),
        "AUDITOR_DATABASE_URL": url,
        "AUDITOR_BROKER_URL": REDIS_URL,
        "AUDITOR_WORKER_GPUS": "0",  # the probe has its own test below
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


class Started:
    """A command in its own process group, its output in a log file."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, ready: Callable[[], bool], timeout: float = READY_TIMEOUT_S) -> bool:
        """Until `ready()`, the process exits, or `timeout`; whether it became ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return True
            if self.proc.poll() is not None:
                return ready()
            time.sleep(0.2)
        return False

    def stop(self) -> None:
        """SIGTERM, then SIGKILL to the whole group: nothing outlives the test."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass


@pytest.fixture
def start(
    planted: tuple[Path, Path], service_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., Started]]:
    cwd, _ = planted
    started: list[Started] = []

    def run(*args: str, **extra_env: str) -> Started:
        log = tmp_path / f"{args[0]}-{len(started)}.log"
        process = Started([AUDITOR, *args], cwd, {**service_env, **extra_env}, log)
        started.append(process)
        return process

    yield run
    for process in started:
        process.stop()
        print(f"--- {process.log.name} (tail)\n{process.text()[-3000:]}")  # shown on failure


@pytest.mark.parametrize("workers", [1, 2], ids=["one-worker-exec", "two-supervised"])
def test_auditor_worker_imports_nothing_from_its_current_directory(
    start: Callable[..., Started], planted: tuple[Path, Path], workers: int
) -> None:
    _, markers = planted
    # Celery's -A falls back to $APP, and imports what it names from the current directory.
    worker = start("worker", "--queues", "gpu,default", "--concurrency", str(workers), APP="proj")
    ready = worker.wait_for(lambda: worker.text().count(" ready.") >= workers)
    worker.stop()
    assert planted_imports(markers) == [], worker.text()[-3000:]
    assert ready, f"the worker did not become ready:\n{worker.text()[-3000:]}"


def test_auditor_beat_imports_nothing_from_its_current_directory(
    start: Callable[..., Started], planted: tuple[Path, Path]
) -> None:
    _, markers = planted
    beat = start("beat", "--interval", "1")
    ready = beat.wait_for(lambda: "beat: Starting..." in beat.text())
    time.sleep(2)  # a tick or two: the scheduler reads the store and renews its lock
    alive = beat.proc.poll() is None
    beat.stop()
    assert planted_imports(markers) == [], beat.text()[-3000:]
    assert ready and alive, f"beat did not run:\n{beat.text()[-3000:]}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status)
    except urllib.error.HTTPError:
        return True  # any answer from the app counts: it is up
    except OSError:
        return False


def test_auditor_serve_imports_nothing_from_its_current_directory(
    start: Callable[..., Started], planted: tuple[Path, Path]
) -> None:
    _, markers = planted
    port = _free_port()
    server = start("serve", "--port", str(port))
    ready = server.wait_for(lambda: _answers(f"http://127.0.0.1:{port}/login"))
    server.stop()
    assert planted_imports(markers) == [], server.text()[-3000:]
    assert ready, f"the app did not answer:\n{server.text()[-3000:]}"


def test_the_gpu_probe_imports_torch_from_the_installation_not_the_current_directory(
    planted: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`gpu_count()` asks torch in a child process (module doc of workers.supervisor); here it is
    made to probe even without a GPU, from the planted directory."""
    from workers import supervisor

    cwd, markers = planted
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(supervisor, "_gpu_device_nodes", lambda: True)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    count = supervisor.gpu_count()
    assert planted_imports(markers) == []
    assert count >= 0


IMPORTS = "import celery, kombu, redis, sqlalchemy, typer, click, uvicorn, fastapi, h11, numpy\n"


def _run_python(argv: list[str], cwd: Path, env: dict[str, str]) -> None:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


def test_without_the_safe_path_flag_the_command_still_drops_the_current_directory(
    planted: tuple[Path, Path],
) -> None:
    """What runs on Python 3.10 (no -P, no PYTHONSAFEPATH), checked here on any version; and
    the same code as a plain `python -c` does import the planted modules, so the plant works."""
    from auditor.safepath import python_argv, python_env

    cwd, markers = planted
    base = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT)}
    env = python_env(base=base, safe_path_flag=False)
    assert "PYTHONSAFEPATH" not in env
    _run_python(python_argv(IMPORTS + "import workers.celery_app", safe_path_flag=False), cwd, env)
    assert planted_imports(markers) == []

    subprocess.run([sys.executable, "-c", IMPORTS], cwd=cwd, env=env, capture_output=True)
    assert "celery" in planted_imports(markers)


def test_an_empty_pythonpath_entry_does_not_reach_a_child(planted: tuple[Path, Path]) -> None:
    """`PYTHONPATH=:/x` means "the current directory, then /x" to Python, even with -P."""
    from auditor.safepath import python_argv, python_env

    cwd, markers = planted
    env = python_env(base={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": f":{ROOT}:"})
    assert env["PYTHONPATH"] == str(ROOT)
    assert "PYTHONPATH" not in python_env(base={"PYTHONPATH": "::"})
    _run_python(python_argv(IMPORTS), cwd, env)
    assert planted_imports(markers) == []
