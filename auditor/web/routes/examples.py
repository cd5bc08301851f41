"""Examples: the picture of a training example, and the findings about it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import Response

from auditor.errors import DataError
from auditor.findings_view import context_for, finding_doc
from auditor.records import finite_json
from auditor.store import audits as audit_store
from auditor.store import datasets as dataset_store
from auditor.store import findings as finding_store
from auditor.web.deps import DB, AuditId, ExampleIndex, Pictures, Reader

router = APIRouter(prefix="/api/audits/{audit_id}/examples", tags=["findings"])


@router.get(
    "/{index}/image", response_class=Response, responses={200: {"content": {"image/png": {}}}}
)
def image(
    audit_id: AuditId, index: ExampleIndex, user: Reader, s: DB, pictures: Pictures,
    key: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:  # fmt: skip
    """The training example at `index` of the audit's data set, as a PNG."""
    a = audit_store.get_audit(s, audit_id)
    locator = dataset_store.locators(s, a.snapshot_id, [index]).get(index)
    try:
        data = pictures.png(dataset_store.get_dataset_by_id(s, a.dataset_id), index, key, locator)
    except DataError as exc:
        raise HTTPException(404, str(exc)) from None
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})


@router.get("/{index}")
def example_findings(
    audit_id: AuditId, index: ExampleIndex, user: Reader, s: DB
) -> list[dict[str, Any]]:
    """The audit's findings about the example at `index` (to follow a link from a list)."""
    audit_store.get_audit(s, audit_id)
    rows = finding_store.findings_for_example(s, audit_id, index)
    ctx = context_for(s, audit_id, rows)
    return finite_json([finding_doc(f, ctx) for f in rows])
