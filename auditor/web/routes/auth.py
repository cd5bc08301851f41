"""Signing in and out: bearer tokens for scripts (`/api/token`), a session cookie for browsers
(`/login`, `/logout`), and who you are (`/api/me`).

Both sign-ins go through `auth.sign_in`, which counts failures per user name and per client
address (429 with Retry-After once either reaches the limit) and hashes the password with no
transaction open, so they take the store's session factory rather than the request's `DB`
transaction (on SQLite that transaction would hold the write lock while the password hashes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import Field
from sqlalchemy.orm import Session

from auditor import auth
from auditor.store.models import User
from auditor.web.deps import DB, Reader, Strict, wants_html
from auditor.web.fields import UserName
from auditor.web.security import SESSION_KEY, check_csrf, check_same_origin, csrf_token
from auditor.web.templating import render

router = APIRouter()


class TokenRequest(Strict):
    username: UserName = Field(min_length=1, max_length=auth.MAX_NAME_LENGTH)
    password: str = Field(min_length=1, max_length=auth.MAX_PASSWORD_LENGTH)


def client_address(request: Request) -> str:
    """The address failures are counted against: the peer, or behind a proxy that uvicorn
    trusts (`--forwarded-allow-ips`, 127.0.0.1 by default) the client it forwards for."""
    return request.client.host if request.client else "unknown"


def _sign_in(
    request: Request, name: str, password: str, issue: Callable[[Session, User], str]
) -> tuple[auth.Principal, str] | None:
    state = request.app.state
    return auth.sign_in(state.sessions, name, password, client_address(request), state.login_limits, issue)


def _locked(exc: auth.SignInLocked) -> HTTPException:
    return HTTPException(429, str(exc), headers={"Retry-After": str(exc.retry_after)})


@router.post("/api/token", tags=["auth"])
def token(request: Request, body: TokenRequest) -> dict[str, Any]:
    """A bearer token for scripts: `Authorization: Bearer <access_token>`."""
    try:
        signed = _sign_in(request, body.username, body.password, auth.issue_token)
    except auth.SignInLocked as exc:
        raise _locked(exc) from None
    if signed is None:
        raise HTTPException(401, "wrong user name or password")
    return {
        "access_token": signed[1],
        "token_type": "bearer",
        "expires_in": int(auth.TOKEN_TTL.total_seconds()),
    }


@router.get("/api/me", tags=["auth"])
def me(user: Reader) -> dict[str, Any]:
    return {"name": user.name, "role": user.role, "can_decide": user.can_decide}


@router.get("/login", response_class=HTMLResponse, include_in_schema=False)
def login_page(request: Request, next: str = "/") -> HTMLResponse:
    return render(request, "login.html", None, next=safe_next(next), failed=False)


@router.post("/login", include_in_schema=False)
def login(
    request: Request,
    username: Annotated[UserName, Form(max_length=auth.MAX_NAME_LENGTH)],
    password: Annotated[str, Form(max_length=auth.MAX_PASSWORD_LENGTH)],
    next: Annotated[str, Form(max_length=500)] = "/",
) -> Response:
    check_same_origin(request)
    try:
        signed = _sign_in(request, username, password, auth.open_web_session)
    except auth.SignInLocked as exc:
        if not wants_html(request):
            raise _locked(exc) from None
        r = render(request, "login.html", None, next=safe_next(next), failed=False, locked=exc.retry_after)
        r.status_code, r.headers["Retry-After"] = 429, str(exc.retry_after)
        return r
    if signed is None:
        if wants_html(request):
            r = render(request, "login.html", None, next=safe_next(next), failed=True)
            r.status_code = 401
            return r
        raise HTTPException(401, "wrong user name or password")
    user, key = signed
    request.session.clear()  # a new session on sign-in: no fixation
    request.session[SESSION_KEY] = key
    csrf_token(request)
    if wants_html(request):
        return RedirectResponse(safe_next(next), 303)
    return JSONResponse({"name": user.name, "role": user.role})


@router.post("/logout", include_in_schema=False)
def logout(
    request: Request, s: DB, csrf_token_field: Annotated[str, Form(alias="csrf_token")] = ""
) -> Response:
    """End this browser's session on the server (a copy of the cookie stops working too)."""
    check_csrf(request, False, csrf_token_field)
    key = request.session.get(SESSION_KEY)
    if isinstance(key, str):
        auth.end_web_session(s, key)
    request.session.clear()
    return RedirectResponse("/login", 303)


def safe_next(target: str) -> str:
    """Only local paths after sign-in: never an open redirect to another site."""
    return (
        target
        if target.startswith("/") and not target.startswith("//") and "\\" not in target
        else "/"
    )
