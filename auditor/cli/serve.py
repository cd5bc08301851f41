"""`auditor serve`: the review web app (see `auditor.web`)."""

from __future__ import annotations

from typing import Annotated

import typer

from auditor.cli.common import err_console, styled, user_errors

# The pool and the request threads, sized together. Requests take one of DB_CONNECTIONS slots
# before their transaction (auditor.web.deps), so a request thread never waits for a connection;
# the overflow is for the few routes that open sessions of their own, and a wait for it is a
# one-line 503 after POOL_TIMEOUT_S. Sync routes run on anyio's threads (40 by default, raised
# to the slots plus headroom if ever fewer).
DB_CONNECTIONS = 10
DB_OVERFLOW = 5
POOL_TIMEOUT_S = 5
# A writing request on SQLite waits this long for another process's write (a worker's, the
# CLI's); requests of this server queue for the write lock among themselves without polling.
SQLITE_BUSY_TIMEOUT_MS = 10_000


@user_errors
def serve_command(
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 exposes it to the network")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port")] = 8000,
) -> None:
    """Serve the review app: audits with live progress, review queues, examples, decisions."""
    import uvicorn

    from auditor.auth import has_users
    from auditor.config import get_settings
    from auditor.store import open_store
    from auditor.web.app import create_app

    settings = get_settings()
    sessions = open_store(  # a database that is down or behind is one line here, not a traceback
        settings.database_url, pool_size=DB_CONNECTIONS, max_overflow=DB_OVERFLOW,
        pool_timeout=POOL_TIMEOUT_S, sqlite_busy_timeout_ms=SQLITE_BUSY_TIMEOUT_MS,
    )  # fmt: skip
    with sessions() as s:
        if not has_users(s):
            err_console.print(styled((
                "no users yet: nobody can sign in until you add one, e.g. "
                "auditor user add alice --role admin", "yellow",
            )))  # fmt: skip
    err_console.print(f"review app on http://{host}:{port}/ (Ctrl+C stops it)")
    uvicorn.run(create_app(sessions, settings=settings), host=host, port=port, log_level="warning")
