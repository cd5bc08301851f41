"""Audits: the list with live status, and one audit with its summary."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from auditor.store import audits as audit_store
from auditor.web.deps import DB, AuditId, Reader
from auditor.web.documents import audit_listing

router = APIRouter(prefix="/api/audits", tags=["audits"])


@router.get("")
def audits(
    user: Reader, s: DB, limit: Annotated[int, Query(ge=1, le=500)] = 100
) -> list[dict[str, Any]]:
    return [audit_listing(s, a) for a in audit_store.list_audits(s)[:limit]]


@router.get("/{audit_id}")
def audit(audit_id: AuditId, user: Reader, s: DB) -> dict[str, Any]:
    return audit_listing(s, audit_store.get_audit(s, audit_id), full=True)
