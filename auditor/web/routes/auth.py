"""Signing in and out: bearer tokens for scripts (`/api/token`), a session cookie for browsers
(`/login`, `/logout`), and who you are (`/api/me`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import Field

from auditor import auth
from auditor.web.deps import DB, Reader, Strict, wants_html
from auditor.web.fields import UserName
from auditor.web.security import check_csrf, csrf_token
from auditor.web.templating import render

router = APIRouter()


class TokenRequest(Strict):
    username: UserName = Field(min_length=1, max_length=200)
    password: str = Field(min_length=1, max_length=auth.MAX_PASSWORD_LENGTH)


@router.post("/api/token", tags=["auth"])
def token(body: TokenRequest, s: DB) -> dict[str, Any]:
    """A bearer token for scripts: `Authorization: Bearer <access_token>`."""
    user = auth.authenticate(s, body.username, body.password)
    if user is None:
        raise HTTPException(401, "wrong user name or password")
    raw = auth.issue_token(s, user)
    return {
        "access_token": raw,
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
    s: DB,
    username: Annotated[UserName, Form(max_length=200)],
    password: Annotated[str, Form(max_length=auth.MAX_PASSWORD_LENGTH)],
    next: Annotated[str, Form(max_length=500)] = "/",
) -> Response:
    user = auth.authenticate(s, username, password)
    if user is None:
        if wants_html(request):
            r = render(request, "login.html", None, next=safe_next(next), failed=True)
            r.status_code = 401
            return r
        raise HTTPException(401, "wrong user name or password")
    request.session.clear()  # a new session id on sign-in: no fixation
    request.session["user_id"] = user.id
    csrf_token(request)
    if wants_html(request):
        return RedirectResponse(safe_next(next), 303)
    return JSONResponse({"name": user.name, "role": user.role})


@router.post("/logout", include_in_schema=False)
def logout(
    request: Request, csrf_token_field: Annotated[str, Form(alias="csrf_token")] = ""
) -> Response:
    check_csrf(request, False, csrf_token_field)
    request.session.clear()
    return RedirectResponse("/login", 303)


def safe_next(target: str) -> str:
    """Only local paths after sign-in: never an open redirect to another site."""
    return (
        target
        if target.startswith("/") and not target.startswith("//") and "\\" not in target
        else "/"
    )
