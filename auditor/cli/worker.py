"""`auditor worker`: Celery workers for queued audits, one single-process worker per GPU.

The options are read here; what runs (preflight, the plan of worker processes, the supervisor
that restarts them and passes signals on) is `workers.supervisor`'s.
"""

from __future__ import annotations

from typing import Annotated

import typer

from auditor.cli.common import err_console, user_errors
from auditor.errors import AuditorError


def parse_queues(queues: str) -> str:
    names = [q.strip() for q in queues.split(",") if q.strip()]
    if not names:
        raise AuditorError("--queues needs at least one queue name, e.g. gpu,default")
    return ",".join(names)


@user_errors
def worker_command(
    queues: Annotated[str, typer.Option(help="Comma-separated queues to consume")] = "gpu,default",
    concurrency: Annotated[
        int | None,
        typer.Option(min=1, help="Worker processes (default: one per GPU, or 1 without a GPU)"),
    ] = None,
    loglevel: Annotated[
        str, typer.Option(help="debug | info | warning | error | critical")
    ] = "info",
) -> None:
    """Run Celery workers for queued audits: one single-process worker per GPU."""
    from workers.supervisor import run_workers

    queues = parse_queues(queues)
    raise typer.Exit(run_workers(queues, loglevel, concurrency, say=log_line))


def log_line(line: str) -> None:
    """One supervisor line on stderr, never wrapped at the terminal's width: a log reader greps
    for a whole "auditor-cpu1 (pid 123) exited with code 0; starting it again ..." line."""
    err_console.print(line, soft_wrap=True)
