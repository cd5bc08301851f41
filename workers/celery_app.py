"""The Celery app, tuned for long, heavy, idempotent tasks (Celery's own guidance):

- `task_acks_late` + `task_reject_on_worker_lost`: a task is acknowledged only when it finishes,
  so a worker that dies mid-audit leaves the message to be delivered again;
- `worker_prefetch_multiplier = 1`: a worker reserves one audit at a time, so a long audit does
  not hold others hostage;
- Redis `visibility_timeout` longer than the longest audit, set in all three places Celery reads
  it (broker transport options, result backend transport options, and `visibility_timeout`);
  otherwise Redis hands a still-running task to a second worker. AUDITOR_VISIBILITY_TIMEOUT
  overrides it (tests use a few seconds to see redelivery after a SIGKILL quickly);
- heavy work goes to queue `gpu`, light work (schedule ticks) to `default`.
Tasks are idempotent (findings are upserted on (audit, example_key, kind)), so redelivery is safe.
"""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import worker_process_init

from auditor.config import get_settings

DEFAULT_VISIBILITY_TIMEOUT = 12 * 3600  # seconds; the longest audit we expect is a few hours


def make_app() -> Celery:
    settings = get_settings()
    broker = settings.broker_url or "redis://127.0.0.1:6379/0"
    visibility = int(os.environ.get("AUDITOR_VISIBILITY_TIMEOUT", DEFAULT_VISIBILITY_TIMEOUT))
    app = Celery("auditor", broker=broker, backend=settings.result_backend, include=["workers.tasks"])
    transport = {"visibility_timeout": visibility}
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        visibility_timeout=visibility,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=3,
        task_default_queue="default",
        task_routes={
            "auditor.run_audit": {"queue": "gpu"},
            "auditor.run_shard": {"queue": "gpu"},
            "auditor.tick_schedules": {"queue": "default"},
        },
        task_track_started=True,
        worker_hijack_root_logger=False,
        result_expires=7 * 24 * 3600,
        timezone="UTC",
    )
    return app


app = make_app()


@worker_process_init.connect
def _fresh_connections(**_: object) -> None:
    """A forked pool process must not reuse the parent's database connections."""
    from auditor.store import dispose_engines

    dispose_engines()
