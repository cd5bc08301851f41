"""The lease reconciler inside every worker (auditor.reconcile): a daemon thread started when
the worker is ready. Loaded by the Celery app's `include`."""

from __future__ import annotations

import logging
import threading
import time

from celery.signals import worker_ready

from auditor.config import get_settings
from auditor.store import open_store
from workers.dispatch import reconcile_now

log = logging.getLogger("auditor.reconcile")

RECONCILE_MIN_S = 1.0


@worker_ready.connect
def _start_reconciler(sender: object, **_: object) -> None:
    """Every worker checks, every lease / 2 seconds, for audits nobody runs any more and queued
    audits whose message was lost (auditor.reconcile); many workers doing so at once is safe."""
    def loop() -> None:
        while True:
            time.sleep(max(get_settings().lease_seconds / 2, RECONCILE_MIN_S))
            try:
                done = reconcile_now(open_store())
                if done:
                    log.warning("reconciled audits: %s", done)
            except Exception as exc:  # noqa: BLE001 - the database or broker is down: next round
                log.warning("reconcile skipped: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    threading.Thread(target=loop, name="auditor-reconcile", daemon=True).start()


