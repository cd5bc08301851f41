"""The supervisor behind `auditor worker`: Celery workers for audits, one single-process worker
per GPU.

Each worker is `celery worker --pool solo` on the app object (`workers.celery_app.run_worker`):
the audit runs in the worker's main process, because torch and fork do not mix well (CUDA cannot
be used in a forked child, and forked BLAS thread pools hang) and an audit is one long,
single-process job anyway.

No code from the current directory runs (issue 27): every Python this module starts, the
workers and the GPU probe, is `python -P -c ...` with PYTHONSAFEPATH=1, or on Python 3.10 a `-c`
that removes the directory from `sys.path` first (`auditor.safepath` says why not `-m` or `-I`),
and the worker never names its app for Celery to import (`workers.celery_app`).

- With GPUs (torch.cuda.device_count() > 0) this process supervises one worker per GPU, named
  auditor-gpu<i>@host and started with CUDA_VISIBLE_DEVICES=<i> (with one GPU, or one worker in
  all, it becomes that worker instead, as below). SIGTERM, SIGINT, SIGQUIT and SIGHUP
  are passed on to the workers (as SIGTERM) and it waits for them to exit; a worker that exits
  for any other reason (a crash, a SIGTERM sent to it alone) is started again after a back-off,
  each exit is logged, and every worker gets SIGTERM from the kernel if this process dies.
- Without a GPU it becomes the one solo worker itself (exec), so signals reach Celery directly;
  `--concurrency N` runs N supervised CPU workers instead.

A solo worker stops at once on SIGTERM and its running audit goes back to the queue (see
`workers/celery_app.py`).
"""

from __future__ import annotations

import ctypes
import glob
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from auditor.config import get_settings
from auditor.errors import AuditorError
from auditor.safepath import python_argv, python_env

RUN_WORKER = "from workers.celery_app import run_worker; run_worker()"
TORCH_GPU_COUNT = "import torch; print(torch.cuda.device_count())"
LOGLEVELS = ("debug", "info", "warning", "error", "critical")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP)
STOP_TIMEOUT_S = 60.0  # then SIGKILL: a worker that ignores SIGTERM this long is stuck
RESTART_WINDOW_S = 60.0
MAX_RESTARTS = 5  # restarts of one worker within RESTART_WINDOW_S before giving up
PR_SET_PDEATHSIG = 1


@dataclass
class WorkerSpec:
    """One Celery worker process to run: its command line and extra environment."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


def celery_argv(queues: str, nodename: str, loglevel: str) -> list[str]:
    """The command of one solo worker: this Python, with a safe path, running `run_worker`."""
    # No mingle/gossip: they sync revokes and clocks between workers, which we do not use
    # (cancels go through the database), and mingle adds a second to every start.
    return python_argv(
        RUN_WORKER,
        "--pool", "solo", "--concurrency", "1", "--queues", queues, "--hostname", nodename,
        "--loglevel", loglevel, "--without-mingle", "--without-gossip",
    )  # fmt: skip


def visible_gpus(count: int, env: dict[str, str] | os._Environ[str] = os.environ) -> list[str]:
    """Device ids to hand out, one per worker: the entries of an inherited CUDA_VISIBLE_DEVICES
    (so `CUDA_VISIBLE_DEVICES=2,3 auditor worker` uses GPUs 2 and 3), else 0..count-1."""
    inherited = [d.strip() for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if inherited and len(inherited) >= count:
        return inherited[:count]
    return [str(i) for i in range(count)]


def thread_env(count: int, env: dict[str, str] | os._Environ[str] = os.environ) -> dict[str, str]:
    """Thread settings for `count` worker processes sharing this machine's cores.

    torch's OpenMP pool defaults to one thread per core in every process, and libgomp threads
    spin while they wait: two workers on two cores each running two spinning threads made one
    650 x 650 eigh take 19 s instead of 0.2 s. So each worker gets its share of the cores and
    passive waiting. Settings the user exported win."""
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )
    share = str(max(1, cores // max(count, 1)))
    wanted = {"OMP_NUM_THREADS": share, "MKL_NUM_THREADS": share, "OMP_WAIT_POLICY": "PASSIVE"}
    return {k: v for k, v in wanted.items() if k not in env}


def plan_workers(
    queues: str, loglevel: str, gpus: int, concurrency: int | None
) -> list[WorkerSpec]:
    """The worker processes to run: one per GPU (or `concurrency` of them, spread over the GPUs
    round-robin); on a machine without GPUs, `concurrency` (default 1) CPU workers. Each gets its
    share of the CPU cores (`thread_env`)."""
    count = concurrency if concurrency is not None else max(gpus, 1)
    threads = thread_env(count)
    if gpus > 0:
        devices = visible_gpus(gpus)
        return [
            WorkerSpec(
                f"auditor-gpu{i}",
                celery_argv(queues, f"auditor-gpu{i}@%h", loglevel),
                {"CUDA_VISIBLE_DEVICES": devices[i % gpus], **threads},
            )
            for i in range(count)
        ]
    if count == 1:
        return [WorkerSpec("auditor", celery_argv(queues, "auditor@%h", loglevel), threads)]
    return [
        WorkerSpec(f"auditor-cpu{i}", celery_argv(queues, f"auditor-cpu{i}@%h", loglevel), threads)
        for i in range(count)
    ]


def gpu_count() -> int:
    """GPUs torch can see; AUDITOR_WORKER_GPUS overrides (0 forces CPU workers)."""
    override = get_settings().worker_gpus
    if override is not None:
        return override
    if not _gpu_device_nodes():
        return 0  # skip importing torch (seconds) just to learn there is no GPU
    # In a child process: the supervisor should hold no CUDA driver state or threads (it forks
    # the workers) and not the memory of an imported torch for as long as it runs.
    probe = subprocess.run(
        python_argv(TORCH_GPU_COUNT),
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    try:
        return int(probe.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        reason = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        raise AuditorError(f"cannot count GPUs with torch: {reason}") from None


def _gpu_device_nodes() -> bool:
    """Whether the kernel exposes an NVIDIA (or ROCm) device to this process at all."""
    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/dev/kfd")


def _die_with_parent(parent: int) -> None:
    """In the child before exec: get SIGTERM when the supervisor dies, even by SIGKILL."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: children outlive a SIGKILLed supervisor
        return
    if os.getppid() != parent:  # the supervisor died before prctl took effect
        os._exit(0)


def _stderr_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def describe_exit(returncode: int) -> str:
    """`exited with code 3` or `was killed by SIGTERM` (Popen's negative return codes)."""
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


class Supervisor:
    """Run several worker processes; pass stop signals on, start again any that exits.

    A worker that exits while the supervisor is not stopping is started again, whatever ended
    it: a crash, an out-of-memory kill, or a SIGTERM from outside (a solo worker stops at once on
    SIGTERM and exits like a clean shutdown, so the exit code cannot tell "asked to stop" apart;
    only the supervisor's own stop signals mean "stop", and they stop every worker). The restart
    waits 1, 2, 4, 8 s (`backoff_s`) after that worker's recent exits; a worker that exits more
    than `max_restarts` times within RESTART_WINDOW_S is not started again: the supervisor stops
    all workers and exits non-zero, so whatever runs it (systemd, Docker) sees the failure.
    Every exit is told to `say` (default: stderr) with the worker's name, pid, exit code or
    signal, and what happens next."""

    def __init__(
        self,
        specs: Sequence[WorkerSpec],
        say: Callable[[str], None] = _stderr_line,
        max_restarts: int = MAX_RESTARTS,
    ) -> None:
        self.specs = list(specs)
        self.say = say
        self.max_restarts = max_restarts
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.exits: dict[str, list[float]] = {s.name: [] for s in self.specs}
        self.restart_at: dict[str, float] = {}  # name -> monotonic time it is due to start
        self.stopping_since: float | None = None

    def start(self, spec: WorkerSpec) -> None:
        parent = os.getpid()
        self.procs[spec.name] = subprocess.Popen(
            spec.argv,
            env=python_env(spec.env),
            preexec_fn=lambda: _die_with_parent(parent),
        )
        self.say(f"started {spec.name} (pid {self.procs[spec.name].pid}) {spec.env or ''}")
        if self.stopping_since is not None:  # a stop signal came while it was being started
            self.procs[spec.name].send_signal(signal.SIGTERM)

    def stop(self, signum: int = signal.SIGTERM, _frame: object = None) -> None:
        if self.stopping_since is None:
            self.stopping_since = time.monotonic()
        self.restart_at.clear()
        for proc in list(self.procs.values()):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def run(self) -> int:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self.stop)
        for spec in self.specs:
            self.start(spec)
        failure = 0
        while True:
            for spec in self.specs:
                proc = self.procs.get(spec.name)
                if proc is not None and proc.poll() is not None:
                    del self.procs[spec.name]
                    failure = self._exited(spec, proc) or failure
                due = self.restart_at.get(spec.name)
                if due is not None and time.monotonic() >= due and self.stopping_since is None:
                    self.restart_at.pop(spec.name, None)  # `stop` may have cleared it just now
                    self.start(spec)
            if not self.procs and not self.restart_at:
                return failure
            if (
                self.stopping_since is not None
                and time.monotonic() - self.stopping_since > STOP_TIMEOUT_S
            ):
                for proc in list(self.procs.values()):
                    proc.kill()
            time.sleep(0.2)

    def _exited(self, spec: WorkerSpec, proc: subprocess.Popen[bytes]) -> int:
        """Say what ended `proc` and what happens next; schedule its restart. Returns the exit
        status the supervisor should end with because of it (0: none)."""
        what = f"{spec.name} (pid {proc.pid}) {describe_exit(proc.returncode)}"
        if self.stopping_since is not None:
            self.say(f"{what}; stopping, {len(self.procs)} worker(s) still running")
            return 0
        now = time.monotonic()
        recent = [t for t in self.exits[spec.name] if now - t < RESTART_WINDOW_S] + [now]
        self.exits[spec.name] = recent
        if len(recent) > self.max_restarts:
            self.say(
                f"{what}; it exited {len(recent)} times within {RESTART_WINDOW_S:g} s, so it is "
                "not started again: stopping all workers"
            )
            self.stop()
            return proc.returncode if proc.returncode > 0 else 1
        delay = backoff_s(len(recent))
        self.restart_at[spec.name] = now + delay
        self.say(
            f"{what}; starting it again in {delay:g} s "
            f"(restart {len(recent)} of at most {self.max_restarts} within {RESTART_WINDOW_S:g} s)"
        )
        return 0


def backoff_s(exits: int) -> float:
    """Seconds before starting a worker again after its `exits`-th exit within the window."""
    return min(2.0 ** (exits - 1), 10.0)


def preflight() -> None:
    """Fail in one line before starting anything: broker configured and reachable, database
    reachable and at the current schema (a stale schema would fail every audit)."""
    from auditor.store import dispose_engines, open_store
    from workers.dispatch import check_broker

    check_broker()
    open_store()
    dispose_engines()  # the supervisor itself never uses the database


def run_workers(
    queues: str,
    loglevel: str,
    concurrency: int | None = None,
    say: Callable[[str], None] = _stderr_line,
) -> int:
    """Check the broker and database, then run the planned workers until they stop; returns the
    exit code. One worker in all: this process becomes it (exec, so signals, exit code and logs
    are Celery's own, no extra process) and never returns."""
    if loglevel.lower() not in LOGLEVELS:
        raise AuditorError(f"--loglevel must be one of {', '.join(LOGLEVELS)}, not {loglevel!r}")
    preflight()
    specs = plan_workers(queues, loglevel.lower(), gpu_count(), concurrency)
    sys.stdout.flush()
    sys.stderr.flush()
    if len(specs) == 1:
        os.execve(sys.executable, specs[0].argv, python_env(specs[0].env))
    return Supervisor(specs, say).run()
