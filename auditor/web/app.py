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
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
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
from auditor.web.security import SecurityHeaders, inline_handler_hashes, secret_key
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
        # The body is read here, before the app sees any of it: FastAPI answers any error raised
        # while it reads a body with 400 "error parsing the body", so a body that outgrows the
        # limit on the way (chunked, no Content-Length) must be stopped before the app reads.
        # At most `limit` bytes are held, and only until the app has taken them.
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before its body ended
                return
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.limit:
                return await too_large(scope, receive, send)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body: Message | None = {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        async def replay() -> Message:
            nonlocal body
            if body is not None:
                message, body = body, None
                return message
            return await receive()  # after the body: the disconnect, when it comes

        await self.app(scope, replay, send)


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


# ---- API documentation, offline -------------------------------------------------------------
SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "A token from POST /api/token: `Authorization: Bearer <access_token>`.",
    },
    "cookie": {
        "type": "apiKey",
        "in": "cookie",
        "name": "auditor_session",
        "description": "The browser session from POST /login; requests that change something "
        "also send its CSRF token as X-CSRF-Token.",
    },
}
PUBLIC_PATHS = {"/api/token"}  # the way in needs no credentials


def openapi_with_security(app: FastAPI) -> dict:
    """The app's OpenAPI schema, saying how to authenticate: a bearer token or the session
    cookie on every operation except getting a token."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
    schema["security"] = [{"bearer": []}, {"cookie": []}]
    for path in PUBLIC_PATHS:
        for operation in schema.get("paths", {}).get(path, {}).values():
            operation["security"] = []
    app.openapi_schema = schema
    return schema


def swagger_assets() -> FsPath | None:
    """Swagger UI's files as the `swagger-ui-bundle` package ships them (None where it is not
    installed: /docs is then absent, /openapi.json still there)."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    return FsPath(swagger_ui_path)


def api_docs() -> HTMLResponse:
    """Swagger UI over /openapi.json, its script and style served from the package: it works
    without internet (FastAPI's default loads them from a CDN)."""
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="auditor review API",
        swagger_js_url="/static/swagger/swagger-ui-bundle.js",
        swagger_css_url="/static/swagger/swagger-ui.css",
        swagger_favicon_url="/static/favicon.svg",
    )


# ---- app --------------------------------------------------------------------------------------
def create_app(
    sessions: sessionmaker[Session] | None = None,
    home: FsPath | None = None,
    *,
    settings: Settings | None = None,
    secure_cookies: bool = False,
) -> FastAPI:
    """The app over `sessions` (default: the configured store, created or checked now), with
    `settings` read once here (default: from the environment) and kept in `app.state.settings`.
    `secure_cookies` marks the session cookie Secure (sent over HTTPS only; `auditor serve`
    turns it on unless it listens on loopback)."""
    from auditor.auth import LoginLimits
    from auditor.config import get_settings
    from auditor.data.options import DataOptions
    from auditor.store import open_store

    settings = settings or get_settings()
    sessions = sessions or open_store(settings.database_url)
    app = FastAPI(
        title="auditor review",
        description="Triage influence-function findings: queues, examples, decisions, history.",
        version="1",
        docs_url=None,  # served below from the package's own copy of Swagger UI, not a CDN
        redoc_url=None,
    )
    app.openapi = lambda: openapi_with_security(app)  # type: ignore[method-assign]
    app.state.sessions, app.state.settings = sessions, settings
    app.state.login_limits = LoginLimits.from_settings(settings)
    app.state.examples = ExampleStore(DataOptions.from_settings(settings))
    app.add_middleware(
        SessionMiddleware,
        secret_key=secret_key(home or settings.home, settings.secret_key),
        session_cookie="auditor_session",
        same_site="strict",
        https_only=secure_cookies,
        max_age=12 * 3600,  # the server-side session (auth.SESSION_TTL) ends it then too
    )
    app.add_middleware(BodyLimit)
    swagger = swagger_assets()
    if swagger is not None:
        app.mount("/static/swagger", StaticFiles(directory=swagger), name="swagger")
        app.add_api_route("/docs", api_docs, include_in_schema=False, response_class=HTMLResponse)
    # outermost: the headers go on every response, a 413 of BodyLimit's included
    app.add_middleware(SecurityHeaders, handler_hashes=inline_handler_hashes(HERE / "templates"))
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
