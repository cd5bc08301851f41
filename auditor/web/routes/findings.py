"""Findings: an audit's queue (filtered, sorted, paged) and one finding with its history."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from sqlalchemy.orm import Session

from auditor import reviewing
from auditor.findings_view import context_for, finding_doc, resolve_class
from auditor.records import finite_json
from auditor.store import audits as audit_store
from auditor.store import datasets as dataset_store
from auditor.store import findings as finding_store
from auditor.store.models import DECISIONS
from auditor.web.deps import DB, AuditId, FindingId, Reader

router = APIRouter(prefix="/api", tags=["findings"])
DecisionFilter = Literal["undecided", "confirmed", "relabelled", "dismissed"]
Order = Literal["rank", "-score", "score", "label"]


@router.get("/audits/{audit_id}/findings")
def findings(
    audit_id: AuditId,
    user: Reader,
    s: DB,
    kind: Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")] = None,
    label: Annotated[str | None, Query(max_length=200, description="class index or name")] = None,
    decision: DecisionFilter | None = None,
    order: Order = "rank",
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 48,
) -> dict[str, Any]:
    a = audit_store.get_audit(s, audit_id)
    names = dataset_store.get_dataset_by_id(s, a.dataset_id).class_names
    wanted = resolve_class(label, names) if label not in (None, "") else None
    page = finding_store.query_findings(
        s,
        audit_id,
        kind=kind,
        label=wanted,
        decision=decision,
        order=order,
        offset=offset,
        limit=limit,
    )
    ctx = context_for(s, audit_id, [f for f, _ in page.rows])
    return finite_json(
        {
            "total": page.total,
            "offset": offset,
            "items": [finding_doc(f, ctx, r) for f, r in page.rows],
        }
    )


@router.get("/findings/{finding_id}")
def finding(finding_id: FindingId, user: Reader, s: DB) -> dict[str, Any]:
    return finite_json(finding_page_doc(s, finding_id).doc)


def finding_page_doc(s: Session, finding_id: int) -> reviewing.FindingDetail:
    """`reviewing.finding_detail` with the decisions a reviewer can take (for the page's keys)."""
    detail = reviewing.finding_detail(s, finding_id)
    detail.doc["decisions"] = list(DECISIONS)
    return detail
