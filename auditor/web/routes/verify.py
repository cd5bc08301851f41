"""Verification of a label check's decisions over the API: ask for one (admins), read the latest.

`POST /api/audits/{id}/verify` creates a verify audit through `auditor.verification` (the rules
live there, as for `auditor audit verify`) and starts it: on the workers when a broker is
configured, else in this process after the response (FastAPI's background tasks), so the request
returns at once with the new audit's id and `GET /api/audits/{new id}` follows its progress.
`GET /api/audits/{id}/verification` answers the newest succeeded verification's report, or 404.

Who may: the same identification as every API route (session cookie with CSRF token, or bearer
token; `auditor.web.security`); retraining costs a worker's time, so only admins may ask.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, HTTPException, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from auditor.auth import Principal
from auditor.web.security import check_csrf, identify

router = APIRouter(tags=["audits"])
MAX_ID = 2**63 - 1
AuditId = Annotated[int, Path(ge=1, le=MAX_ID)]


class VerifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    train_fn: str | None = Field(
        None, max_length=300, description="a registered MODULE:FUNCTION that retrains the model"
    )


def _signed_in(request: Request) -> tuple[Principal, bool]:
    """(the user, by bearer token), in a transaction of its own that ends before any work: the
    verification reads the data set's files and must not hold a write lock meanwhile."""
    with request.app.state.sessions() as s, s.begin():
        user, by_token = identify(request, s)
    if user is None:
        raise HTTPException(
            401, "sign in first: POST /login, or send Authorization: Bearer <token>"
        )
    return user, by_token


@router.post("/api/audits/{audit_id}/verify", status_code=202)
def verify(
    audit_id: AuditId,
    request: Request,
    background: BackgroundTasks,
    body: VerifyRequest | None = None,
) -> dict[str, Any]:
    """Retrain with the audit's standing decisions applied; returns the verify audit's id."""
    from auditor.verification import request_verification

    user, by_token = _signed_in(request)
    check_csrf(request, by_token)
    if not user.is_admin:
        raise HTTPException(
            403, f"user {user.name!r} is a {user.role}; only admins may start a verification"
        )
    sessions = request.app.state.sessions
    train_fn = body.train_fn if body is not None else None
    settings = request.app.state.settings
    embedded = settings.embedded
    if not embedded:
        from workers.dispatch import check_broker

        check_broker()
    verify_id = request_verification(sessions, audit_id, settings=settings, train_fn=train_fn, local=False)
    if embedded:
        from auditor.runner import execute_audit

        background.add_task(execute_audit, sessions, verify_id, settings=settings)
    else:
        from workers.dispatch import enqueue

        enqueue(sessions, verify_id)
    return {"id": verify_id, "audit": audit_id, "status": "queued"}


@router.get("/api/audits/{audit_id}/verification")
def verification(audit_id: AuditId, request: Request) -> dict[str, Any]:
    """The newest succeeded verification of the audit: before, after, change, predicted change."""
    from auditor.verification import latest_verification

    _signed_in(request)
    with request.app.state.sessions() as s:
        doc = latest_verification(s, audit_id)
    if doc is None:
        raise HTTPException(
            404,
            f"audit {audit_id} has no succeeded verification: POST /api/audits/{audit_id}/verify",
        )
    return doc
