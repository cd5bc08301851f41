"""Who is asking, and may they: session cookies for the pages, bearer tokens for scripts, CSRF.

A browser signs in with `POST /login` and gets a signed session cookie (Starlette's
SessionMiddleware, SameSite=strict, HttpOnly) holding its user id and a CSRF token. Every
request that changes something with that cookie must echo the token (header `X-CSRF-Token` or
form field `csrf_token`), so another site cannot make a reviewer's browser decide. A script
sends `Authorization: Bearer <token>` from `POST /api/token` instead; a bearer token is not sent
by browsers on their own, so it needs no CSRF token. Nobody anonymous reads or writes anything.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from fastapi import HTTPException, Request
from sqlalchemy.orm import Session

from auditor.auth import Principal, principal, user_for_session, user_for_token


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
    user_id = request.session.get("user_id")
    if isinstance(user_id, int):
        user = user_for_session(session, user_id)
        if user is not None:
            return principal(user), False
        request.session.clear()  # the user was removed
    return None, False


def check_csrf(request: Request, by_token: bool, form_token: str | None = None) -> None:
    """A cookie-authenticated change must carry the session's CSRF token."""
    if by_token or request.method in ("GET", "HEAD", "OPTIONS"):
        return
    expected = request.session.get("csrf") or ""
    given = form_token or request.headers.get("x-csrf-token") or ""
    if not expected or not hmac.compare_digest(str(given), str(expected)):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")
