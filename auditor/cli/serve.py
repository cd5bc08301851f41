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
    secure_cookies: Annotated[
        bool | None,
        typer.Option(
            "--secure-cookies/--no-secure-cookies",
            help="Mark the session cookie Secure (HTTPS only). Default: on unless --host is a loopback "
            "address; --no-secure-cookies for plain HTTP on a trusted network.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve the review app: audits with live progress, review queues, examples, decisions."""
    import uvicorn

    from auditor.auth import has_users
    from auditor.config import get_settings
    from auditor.store import open_store
    from auditor.web.app import create_app
    from auditor.web.security import secure_cookies_default

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
    secure = secure_cookies_default(host) if secure_cookies is None else secure_cookies
    if secure:
        err_console.print("session cookies are Secure: serve it behind HTTPS (a TLS proxy), or pass --no-secure-cookies")
    err_console.print(f"review app on http://{host}:{port}/ (Ctrl+C stops it)")
    # The app goes to uvicorn as an object, in this process: given a "module:app" name, uvicorn
    # would import it with --app-dir (the current directory by default) first on sys.path. One
    # access-log line per request (method, path, status), as an operator expects to see.
    app = create_app(sessions, settings=settings, secure_cookies=secure)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=True)
