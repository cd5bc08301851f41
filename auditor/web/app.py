"""The review app: JSON API under /api, pages at /, /audits/{id}, /findings/{id}, /login.

`create_app` only wires: middleware (signed session cookie, body size limit), the one-line error
handlers, the static files and the routers of `auditor.web.routes` (one per resource, over the
dependencies of `auditor.web.deps`). Every route is thin: it identifies the user, then calls the
same service and store functions as the CLI (`auditor.reviewing`, `auditor.store.repo`,
`auditor.findings_view`), inside one transaction per request. Errors are one line:
`{"detail": "..."}` with the HTTP status that says what kind (400 bad value, 401 who are you,
403 not allowed, 404 no such thing, 409 someone else decided first or is deciding now, 413 body
too large, 422 malformed request, 503 the database is down or busy). Anything unexpected is a
one-line 500 too (the error page for pages), with its traceback in the server's log: a
plain-text 500 never escapes.
"""

import logging
from pathlib import Path as FsPath

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker
from starlette.middleware.sessions import SessionMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from auditor.config import Settings
from auditor.errors import AuditorError, Conflict, NotFound
from auditor.store.db import lock_race
from auditor.web.deps import wants_html
from auditor.web.examples import ExampleStore
from auditor.web.routes import routers
from auditor.web.security import secret_key
from auditor.web.templating import HERE, templates

MAX_BODY_BYTES = 64 * 1024
log = logging.getLogger("auditor.web")


# ---- body size limit ------------------------------------------------------------------------
class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413, whether or not they say their length."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        too_large = JSONResponse({"detail": f"request body is larger than {self.limit} bytes"}, 413)
        try:
            if declared is not None and int(declared) > self.limit:
                return await too_large(scope, receive, send)
        except ValueError:
            return await JSONResponse({"detail": "malformed Content-Length"}, 400)(
                scope, receive, send
            )
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await too_large(scope, receive, send)


class _TooLarge(Exception):
    pass


# ---- errors: one line each ----------------------------------------------------------------------
def _error(request: Request, status: int, message: str, headers: dict | None = None) -> Response:
    if wants_html(request):
        if status == 401:
            return RedirectResponse(f"/login?next={request.url.path}", 303)
        return templates.TemplateResponse(
            request,
            "error.html",
            {"status": status, "message": message, "user": None},
            status_code=status,
        )
    return JSONResponse({"detail": message}, status, headers=headers)


async def http_error(request: Request, exc: HTTPException) -> Response:
    return _error(request, exc.status_code, str(exc.detail), getattr(exc, "headers", None))


async def invalid(request: Request, exc: RequestValidationError) -> Response:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    return _error(request, 422, f"{where or 'request'}: {first.get('msg', 'invalid')}")


async def database_down(request: Request, exc: DBAPIError) -> Response:
    if lock_race(exc):  # a lock wait past lock_timeout, or a broken deadlock: the other side won
        return _error(
            request, 409, "someone else is changing this right now; nothing was stored, try again"
        )
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return _error(
        request,
        503,
        f"database error, nothing was stored: {reason[0] if reason else type(exc).__name__}",
    )


async def pool_exhausted(request: Request, exc: PoolTimeout) -> Response:
    # the last resort: requests are gated to the pool's size (auditor.web.deps), so only routes
    # that open sessions of their own can find every connection taken
    return _error(
        request, 503, "the database is busy: no connection came free; nothing was stored, try again"
    )


async def unexpected(request: Request, exc: Exception) -> Response:
    if lock_race(exc):  # the driver's own error, from a raw-cursor path (COPY)
        return await database_down(request, exc)  # type: ignore[arg-type]
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return _error(
        request, 500, f"internal error ({type(exc).__name__}); the server's log has the details"
    )


async def domain_error(request: Request, exc: AuditorError) -> Response:
    status = 404 if isinstance(exc, NotFound) else 409 if isinstance(exc, Conflict) else 400
    return _error(request, status, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


# ---- app --------------------------------------------------------------------------------------
def create_app(
    sessions: sessionmaker[Session] | None = None, home: FsPath | None = None, *, settings: Settings | None = None
) -> FastAPI:
    """The app over `sessions` (default: the configured store, created or checked now), with
    `settings` read once here (default: from the environment) and kept in `app.state.settings`."""
    from auditor.config import get_settings
    from auditor.data.options import DataOptions
    from auditor.store import open_store

    settings = settings or get_settings()
    sessions = sessions or open_store(settings.database_url)
    app = FastAPI(
        title="auditor review",
        description="Triage influence-function findings: queues, examples, decisions, history.",
        version="1",
    )
    app.state.sessions, app.state.settings = sessions, settings
    app.state.examples = ExampleStore(DataOptions.from_settings(settings))
    app.add_middleware(
        SessionMiddleware,
        secret_key=secret_key(home or settings.home, settings.secret_key),
        session_cookie="auditor_session",
        same_site="strict",
        https_only=False,
        max_age=12 * 3600,
    )
    app.add_middleware(BodyLimit)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(DBAPIError, database_down)
    app.add_exception_handler(PoolTimeout, pool_exhausted)
    app.add_exception_handler(Exception, unexpected)
    app.add_exception_handler(AuditorError, domain_error)
    for router in routers:
        app.include_router(router)
    return app
