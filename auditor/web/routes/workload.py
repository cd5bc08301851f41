"""Routes of an audit's review workload: progress and measured precision, as JSON and a picture.

The numbers come from `auditor.workload.review_progress`, the function the CLI calls too. Any
signed-in reader (`web.deps.Reader`: a session cookie or a bearer token) may read them.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from auditor.records import finite_json
from auditor.store import audits as audit_store
from auditor.web.deps import DB, AuditId, Reader
from auditor.workload import progress_png, review_progress

router = APIRouter(prefix="/api/audits", tags=["audits"])


@router.get("/{audit_id}/progress")
def progress(audit_id: AuditId, user: Reader, s: DB) -> dict[str, Any]:
    """Flagged / reviewed / left, precision so far (95% Wilson interval), per class pair, the
    decisions on ranked-only findings, the pace and the hours left."""
    audit_store.get_audit(s, audit_id)
    return finite_json(review_progress(s, audit_id))


@router.get(
    "/{audit_id}/progress.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def progress_picture(audit_id: AuditId, user: Reader, s: DB) -> Response:
    """Precision so far by decision count, and the share of the flagged set reviewed (PNG)."""
    audit_store.get_audit(s, audit_id)
    return Response(
        progress_png(s, audit_id), media_type="image/png", headers={"Cache-Control": "no-store"}
    )
