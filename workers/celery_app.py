"""The Celery app, tuned for long, heavy, idempotent tasks (Celery's own guidance):

- `task_acks_late` + `task_reject_on_worker_lost`: a task is acknowledged only when it finishes,
  so a worker that dies mid-audit leaves the message to be delivered again;
- `worker_prefetch_multiplier = 1`: a worker reserves one audit at a time, so a long audit does
  not hold others hostage;
- Redis `visibility_timeout` longer than the longest audit, set in all three places Celery reads
  it (broker transport options, result backend transport options, and `visibility_timeout`);
  otherwise Redis hands a still-running task to a second worker. AUDITOR_VISIBILITY_TIMEOUT
  overrides it (tests use a few seconds to see redelivery after a SIGKILL quickly);
- kombu returns a dead worker's messages to the queue only when a live worker sweeps the
  `unacked` set, by default every 10th sweep of every 10 s: a message could wait 100 s past its
  visibility timeout. `unacked_restore_throttle = 1` scans on every sweep, and the sweep interval
  follows the visibility timeout (at most 10 s);
- a solo worker (one audit in its main thread, see `auditor worker`) stops at once on SIGTERM or
  SIGINT and puts its running audit back on the queue, instead of Celery's warm shutdown that
  would wait hours for the audit (and be SIGKILLed by `docker stop` after 10 s anyway, leaving the
  message invisible for the whole visibility timeout);
- heavy work goes to queue `gpu`, light work (schedule ticks) to `default`;
- nothing is imported from the current directory (issue 27): Celery imports the app named by
  `-A` and the task modules in `include` with the current directory put first on `sys.path`
  (`celery.utils.imports.import_from_cwd`), so `run_worker` hands Celery the app object rather
  than its name, and `CwdFreeLoader` imports task modules as any other import. The worker
  process itself starts with a safe path (`auditor.safepath`, `workers.supervisor`).
Tasks are idempotent (findings are upserted on (audit, example_key, kind)), so redelivery is safe.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from celery import Celery
from celery.loaders.app import AppLoader
from celery.signals import worker_process_init, worker_ready

from auditor.config import DEFAULT_VISIBILITY_TIMEOUT, get_settings

__all__ = [
    "DEFAULT_VISIBILITY_TIMEOUT", "CwdFreeLoader", "app", "make_app", "restore_interval",
    "run_worker", "visibility_timeout",
]  # fmt: skip
MAX_RESTORE_INTERVAL = 10  # seconds between sweeps for messages of dead workers
SIGNAL_REPEAT_S = 3.0  # a second SIGTERM/SIGINT this soon after the first is the same request


def restore_interval(visibility: int) -> int:
    """Seconds between a worker's sweeps of the unacked set: a quarter of the visibility timeout,
    1 to MAX_RESTORE_INTERVAL, so a short timeout (tests) also means a quick redelivery."""
    return max(1, min(MAX_RESTORE_INTERVAL, visibility // 4))


def visibility_timeout() -> int:
    """Seconds before Redis hands an unacknowledged message to another worker."""
    return get_settings().visibility_timeout


class CwdFreeLoader(AppLoader):
    """Celery's app loader, except that task modules (`include`, and those a worker reloads) are
    imported as any import is, instead of with the current directory first on `sys.path`."""

    def import_from_cwd(self, module: str, imp: Any = None, package: str | None = None) -> Any:
        return (self.import_module if imp is None else imp)(module, package=package)


def make_app() -> Celery:
    settings = get_settings()
    broker = settings.broker_url or "redis://127.0.0.1:6379/0"
    visibility = visibility_timeout()
    app = Celery(
        "auditor",
        broker=broker,
        backend=settings.result_backend,
        include=["workers.tasks", "workers.reconciler"],
        loader=CwdFreeLoader,  # a class, not a name: a name is looked up from the cwd too
        # The one built-in fixup is Django's: with DJANGO_SETTINGS_MODULE set it puts the cwd on
        # sys.path (and expects the loader as a name). There is no Django here.
        fixups=[],
    )
    transport = {"visibility_timeout": visibility}
    broker_transport = {
        **transport,
        "unacked_restore_interval": restore_interval(visibility),
        "unacked_restore_throttle": 1,
    }
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=broker_transport,
        result_backend_transport_options=transport,
        visibility_timeout=visibility,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=3,
        task_default_queue="default",
        task_routes={
            "auditor.run_audit": {"queue": "gpu"},
            "auditor.run_shard": {"queue": "gpu"},
            "auditor.run_sharded": {"queue": "default"},
            "auditor.tick_schedules": {"queue": "default"},
            "auditor.lds_retrain": {"queue": "gpu"},
        },
        task_track_started=True,
        worker_hijack_root_logger=False,
        result_expires=7 * 24 * 3600,
        timezone="UTC",
    )
    return app


app = make_app()


def run_worker(argv: Sequence[str] | None = None) -> NoReturn:
    """`celery worker ARGV...` on this app, in this process, then exit with the worker's code.

    What `auditor worker` runs in each worker process (`workers.supervisor.celery_argv`), in place
    of `python -m celery -A workers.celery_app:app worker`, which imports the app by name with the
    current directory first on `sys.path`. Celery takes `-A` from $APP when it is not given, and
    would import that name the same way, so $APP is dropped."""
    os.environ.pop("APP", None)
    code = app.start(["worker", *(sys.argv[1:] if argv is None else argv)])
    sys.exit(code or 0)


@worker_process_init.connect
def _fresh_connections(**_: object) -> None:
    """A forked pool process must not reuse the parent's database connections."""
    from auditor.store import dispose_engines

    dispose_engines()


@worker_ready.connect
def _stop_solo_worker_at_once(sender: object, **_: object) -> None:
    """On a solo worker, make SIGTERM/SIGINT end the running audit now and requeue its message.

    The audit runs in the worker's main thread, so raising `WorkerTerminate` from the signal
    handler unwinds it (the runner marks the audit queued again) and Celery's cold shutdown then
    restores the unacknowledged message to the queue for the next worker. The audit is idempotent,
    so starting it over is safe.

    Ctrl+C on `auditor worker` with several GPUs reaches a worker twice (from the terminal and
    from the supervisor), so a repeat within SIGNAL_REPEAT_S is ignored; a later one (a user who
    insists, the shutdown is stuck) exits at once, leaving the message to the visibility timeout.
    """
    if type(getattr(sender, "pool", None)).__module__ != "celery.concurrency.solo":
        return
    from celery import platforms
    from celery.exceptions import WorkerTerminate

    first: list[float] = []

    def stop_now(signum: int, _frame: object) -> None:
        if not first:
            first.append(time.monotonic())
            raise WorkerTerminate(1)
        if time.monotonic() - first[0] > SIGNAL_REPEAT_S:
            os._exit(1)

    platforms.signals["SIGTERM"] = stop_now
    platforms.signals["SIGINT"] = stop_now
