"""Who is asking, and may they: session cookies for the pages, bearer tokens for scripts, CSRF,
and the headers that keep the pages from being framed, sniffed or scripted by anyone else.

A browser signs in with `POST /login` and gets a signed session cookie (Starlette's
SessionMiddleware, SameSite=strict, HttpOnly, Secure when served over TLS) holding a random
session key and a CSRF token. The key names a row of `web_sessions`, looked up on every request,
so signing out, a new password, a new role or removing the user ends the session at once, even
for a copy of the cookie. `/login` itself refuses a POST another site's page sent (login CSRF:
signing a victim in as the attacker). Every request that changes something with the cookie
must echo the CSRF token (header `X-CSRF-Token` or form field `csrf_token`), so another site
cannot make a reviewer's browser decide. A script sends `Authorization: Bearer <token>` from
`POST /api/token` instead; a bearer token is not sent by browsers on their own, so it needs no
CSRF token. Nobody anonymous reads or writes anything.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import ipaddress
import os
import re
import secrets
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import HTTPException, Request
from sqlalchemy.orm import Session
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from auditor.auth import Principal, principal, user_for_session, user_for_token

SESSION_KEY = "sid"  # the session cookie's field holding the server-side session key


def secret_key(home: Path, configured: str | None = None) -> str:
    """The key that signs session cookies: AUDITOR_SECRET_KEY (`configured`; several servers
    behind one address must share it), else one generated once and kept in
    AUDITOR_HOME/secret_key (0600)."""
    if configured:
        return configured
    path = home / "secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        home.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(48)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key)
        return key


def csrf_token(request: Request) -> str:
    """This browser session's CSRF token (made on first use)."""
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return token


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def identify(request: Request, session: Session) -> tuple[Principal | None, bool]:
    """(the user, whether by bearer token). A bearer header that is wrong is not silently
    ignored in favour of a cookie: it answers 401."""
    token = _bearer(request)
    if token is not None or "authorization" in request.headers:
        user = user_for_token(session, token or "")
        if user is None:
            raise HTTPException(401, "invalid or expired token", headers={"WWW-Authenticate": "Bearer"})
        return principal(user), True
    key = request.session.get(SESSION_KEY)
    if isinstance(key, str):
        user = user_for_session(session, key)
        if user is not None:
            return principal(user), False
        request.session.clear()  # signed out, expired, or ended by a new password, role or removal
    return None, False


def check_csrf(request: Request, by_token: bool, form_token: str | None = None) -> None:
    """A cookie-authenticated change must carry the session's CSRF token."""
    if by_token or request.method in ("GET", "HEAD", "OPTIONS"):
        return
    expected = request.session.get("csrf") or ""
    given = form_token or request.headers.get("x-csrf-token") or ""
    if not expected or not hmac.compare_digest(str(given), str(expected)):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")


# ---- login CSRF ---------------------------------------------------------------------------------
def _netloc(value: str) -> str:
    host = value.strip().lower()
    for default in (":80", ":443"):
        if host.endswith(default):
            return host[: -len(default)]
    return host


def check_same_origin(request: Request) -> None:
    """Refuse a sign-in that another site's page sent (403): otherwise that page could sign
    the visitor in as the attacker, and the visitor's decisions would be recorded under the
    attacker's account. Browsers say where a POST comes from (`Sec-Fetch-Site`, `Origin`, else
    `Referer`); it must be this app's own host (`Host`, or `X-Forwarded-Host` from a proxy,
    which no page can set on a cross-site form). A request that says nothing is not a
    browser's (curl, scripts) and goes on: it cannot carry anyone else's cookies."""
    refused = HTTPException(403, "sign-in from another site's page refused: use this app's sign-in page")
    if request.headers.get("sec-fetch-site", "").lower() in ("cross-site", "same-site"):
        raise refused
    source = request.headers.get("origin") or request.headers.get("referer")
    if source is None:
        return
    hosts = {request.headers.get("host", "")}
    hosts |= {h for h in request.headers.get("x-forwarded-host", "").split(",")}
    allowed = {_netloc(h) for h in hosts if h.strip()}
    where = urlsplit(source).netloc if source.strip().lower() != "null" else ""
    if not where or _netloc(where) not in allowed:
        raise refused


def secure_cookies_default(host: str) -> bool:
    """Whether `auditor serve --host HOST` marks the session cookie Secure by default: yes unless
    it listens on a loopback address only (then plain http://127.0.0.1 must keep working)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return False
    try:
        return not ipaddress.ip_address(name).is_loopback
    except ValueError:
        return True  # a host name or a wildcard: reachable from elsewhere


# ---- response headers ---------------------------------------------------------------------------
_HANDLER = re.compile(r'\son[a-z]+="([^"]*)"')
# Swagger UI's page (served from the swagger-ui-bundle package's files under /static/swagger)
# starts itself with an inline script FastAPI writes; nothing loads from another origin.
DOCS_PATHS = ("/docs",)


def inline_handler_hashes(template_dir: Path) -> tuple[str, ...]:
    """CSP hashes of the templates' inline event handlers (`onerror="..."`), so those, and only
    those, may run under `'unsafe-hashes'`. Read from the template sources, never from a
    rendered page: markup injected into a page cannot give itself a hash that is allowed."""
    values = {
        html.unescape(m.group(1))
        for path in sorted(template_dir.glob("*.html"))
        for m in _HANDLER.finditer(path.read_text())
        if "{{" not in m.group(1) and "{%" not in m.group(1)
    }
    return tuple(
        "'sha256-" + base64.b64encode(hashlib.sha256(v.encode()).digest()).decode() + "'"
        for v in sorted(values)
    )


def content_security_policy(nonce: str, handler_hashes: Iterable[str]) -> str:
    """The pages' policy: scripts only from this app's /static, the inline `<script>` blocks
    that carry this response's nonce and the templates' own event handlers; nothing from other
    sites, no framing, forms post only here."""
    handlers = list(handler_hashes)
    script = ["'self'", f"'nonce-{nonce}'", *(["'unsafe-hashes'", *handlers] if handlers else [])]
    return "; ".join((
        "default-src 'none'",
        f"script-src {' '.join(script)}",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ))  # fmt: skip


DOCS_POLICY = (
    "default-src 'none'; script-src 'self' 'unsafe-inline'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class SecurityHeaders:
    """Strict headers on every response of the app: a Content-Security-Policy with a fresh
    nonce (templates read it as `request.state.csp_nonce`), X-Frame-Options: DENY,
    X-Content-Type-Options: nosniff and Referrer-Policy: same-origin."""

    def __init__(self, app: ASGIApp, handler_hashes: Iterable[str] = ()) -> None:
        self.app, self.handler_hashes = app, tuple(handler_hashes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        nonce = secrets.token_urlsafe(16)
        scope.setdefault("state", {})["csp_nonce"] = nonce
        docs = scope.get("path", "").startswith(DOCS_PATHS)
        policy = DOCS_POLICY if docs else content_security_policy(nonce, self.handler_hashes)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["Content-Security-Policy"] = policy
                headers["X-Frame-Options"] = "DENY"
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Referrer-Policy"] = "same-origin"
            await send(message)

        await self.app(scope, receive, with_headers)
