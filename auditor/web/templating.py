"""The pages' Jinja2 templates, and `render`, which gives every page its user and CSRF token."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from auditor.auth import Principal
from auditor.findings_view import label_text
from auditor.progress import duration
from auditor.web.security import csrf_token

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.filters["label"] = lambda label, ctx: label_text(label, ctx)
templates.env.filters["duration"] = lambda seconds: duration(float(seconds))


def render(request: Request, name: str, user: Principal | None, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(
        request, name, {"user": user, "csrf": csrf_token(request), **context}
    )
