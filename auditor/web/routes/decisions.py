"""Decisions: decide, undo, and bulk-accept the suggested labels. Each route is one call of the
review service (`auditor.reviewing`), the same functions `auditor review` calls."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body
from pydantic import Field
from sqlalchemy.orm import Session

from auditor import reviewing
from auditor.findings_view import audit_context, decision_doc
from auditor.store import findings as finding_store
from auditor.web.deps import DB, MAX_ID, AuditId, Decider, FindingId, Strict
from auditor.web.fields import ClassRef, Note, Whole

router = APIRouter(prefix="/api", tags=["decisions"])


class DecisionRequest(Strict):
    decision: Literal["confirmed", "relabelled", "dismissed"]
    # a class index or, where the data set names its classes, a class name; never true/false
    new_label: ClassRef | None = Field(None, description="relabelled only: class index or name")
    note: Note | None = None
    expected_version: Whole | None = Field(
        None, ge=1, le=2**31 - 1, description="version of the decision you saw; null: none yet"
    )


class UndoRequest(Strict):
    expected_version: Whole | None = Field(None, ge=1, le=2**31 - 1)


class BulkAcceptRequest(Strict):
    """Confirm (accept the suggested label of) these findings, or the top K undecided ones."""

    finding_ids: list[Annotated[Whole, Field(ge=1, le=MAX_ID)]] | None = Field(None, max_length=1000)
    top_k: Whole | None = Field(None, ge=1, le=10_000)
    label: ClassRef | None = Field(None, description="with top_k: only examples given this class")


@router.post("/findings/{finding_id}/decision")
def decide(finding_id: FindingId, body: DecisionRequest, user: Decider, s: DB) -> dict[str, Any]:
    review = reviewing.decide(
        s, finding_id, body.decision, body.new_label, reviewer=user.name, user_id=user.id,
        note=body.note, expected_version=body.expected_version,
    )  # fmt: skip
    return {
        "finding_id": finding_id,
        "decision": decision_doc(review, audit_context(s, review_audit(s, finding_id))),
    }


@router.post("/findings/{finding_id}/undo")
def undo(
    finding_id: FindingId, user: Decider, s: DB, body: Annotated[UndoRequest | None, Body()] = None
) -> dict[str, Any]:
    review = reviewing.undo(
        s, finding_id, reviewer=user.name, user_id=user.id,
        expected_version=body.expected_version if body else None,
    )  # fmt: skip
    return {
        "finding_id": finding_id,
        "decision": decision_doc(review, audit_context(s, review_audit(s, finding_id))),
    }


@router.post("/audits/{audit_id}/accept-suggested")
def accept_suggested(
    audit_id: AuditId, body: BulkAcceptRequest, user: Decider, s: DB
) -> dict[str, Any]:
    """Bulk: confirm the suggested label of the given findings, or of the top K undecided."""
    done = reviewing.accept_suggested(
        s, audit_id, reviewer=user.name, user_id=user.id,
        finding_ids=body.finding_ids, top_k=body.top_k, label=body.label,
    )  # fmt: skip
    ctx = audit_context(s, audit_id)
    decisions = {str(fid): decision_doc(review, ctx) for fid, review in done.decisions.items()}
    return {"confirmed": done.confirmed, "skipped": done.skipped, "decisions": decisions}


def review_audit(s: Session, finding_id: int) -> int:
    """The audit of the finding (whose data set names the classes in a decision's document)."""
    return finding_store.get_finding(s, finding_id).audit_id
