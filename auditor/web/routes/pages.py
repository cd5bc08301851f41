"""The server-rendered pages: the audits, an audit's review queue, one finding, and the jump
from an example to its finding. They read what the API reads (the pages' script then decides
through the API's decision routes)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from auditor.findings_view import SCORE_HELP, context_for, finding_doc, resolve_class
from auditor.records import finite_json
from auditor.store import audits as audit_store
from auditor.store import datasets as dataset_store
from auditor.store import findings as finding_store
from auditor.web.deps import DB, AuditId, ExampleIndex, FindingId, page_user
from auditor.web.documents import audit_listing, class_options
from auditor.web.routes.findings import finding_page_doc
from auditor.web.templating import HERE, render

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
def home_page(request: Request, s: DB) -> HTMLResponse:
    user = page_user(request, s)
    docs = [audit_listing(s, a) for a in audit_store.list_audits(s)[:200]]
    return render(request, "audits.html", user, audits=docs)


@router.get("/audits/{audit_id}", response_class=HTMLResponse)
def queue_page(
    request: Request,
    audit_id: AuditId,
    s: DB,
    label: Annotated[str, Query(max_length=200)] = "",
    decision: Annotated[str, Query(max_length=20)] = "",
    order: Annotated[str, Query(max_length=10)] = "rank",
    page: Annotated[int, Query(ge=1, le=10**6)] = 1,
    size: Annotated[int, Query(ge=1, le=500)] = 48,
    kind: Annotated[str, Query(max_length=64, pattern=r"^[A-Za-z0-9_.-]*$")] = "",
) -> Response:
    user = page_user(request, s)
    a = audit_store.get_audit(s, audit_id)
    wanted = (
        resolve_class(label, dataset_store.get_dataset_by_id(s, a.dataset_id).class_names) if label else None
    )
    kinds = finding_store.finding_kinds(s, audit_id)
    chosen_kind = kind or ("label" if "label" in kinds else None)
    result = finding_store.query_findings(
        s, audit_id, kind=chosen_kind, label=wanted, decision=decision or None, order=order,
        offset=(page - 1) * size, limit=size,
    )  # fmt: skip
    pages = max(1, -(-result.total // size))
    if page > pages:  # past the end (the queue shrank, or a typed URL): the last page
        return RedirectResponse(str(request.url.include_query_params(page=pages)), 303)
    ctx = context_for(s, audit_id, [f for f, _ in result.rows])
    docs = [finding_doc(f, ctx, r) for f, r in result.rows]
    return render(
        request, "queue.html", user, audit=audit_listing(s, a, full=True), items=docs, total=result.total, ctx=ctx,
        classes=class_options(s, a, ctx),
        filters={"label": label, "decision": decision, "order": order, "kind": chosen_kind or ""},
        kinds=kinds, page=page, size=size, pages=pages,
        items_data=finite_json(docs),
        prev_url=str(request.url.include_query_params(page=page - 1)) if page > 1 else None,
        next_url=str(request.url.include_query_params(page=page + 1)) if page * size < result.total else None,
    )  # fmt: skip


@router.get("/findings/{finding_id}", response_class=HTMLResponse)
def finding_page(request: Request, finding_id: FindingId, s: DB) -> HTMLResponse:
    user = page_user(request, s)
    detail = finding_page_doc(s, finding_id)
    doc, ctx, a = detail.doc, detail.ctx, detail.audit
    neighbours = finding_store.neighbour_findings(s, a.id, doc["kind"], doc["rank"])
    payload = doc["payload"] or {}
    # "Relabel to" starts at what the finding suggests, else what the model predicts
    default = payload.get("suggested_label")
    if default is None:
        default = payload.get("predicted")
    return render(
        request, "finding.html", user, f=doc, ctx=ctx, audit=audit_listing(s, a),
        classes=class_options(s, a, ctx), doc_data=finite_json(doc),
        prev_id=neighbours[0], next_id=neighbours[1], relabel_default=default, score_help=SCORE_HELP,
    )  # fmt: skip


@router.get("/favicon.ico")
def favicon() -> Response:
    """Browsers ask for /favicon.ico before they read the page's icon link."""
    return FileResponse(HERE / "static" / "favicon.svg", media_type="image/svg+xml")


@router.get("/audits/{audit_id}/examples/{index}")
def example_page(request: Request, audit_id: AuditId, index: ExampleIndex, s: DB) -> Response:
    page_user(request, s)
    rows = finding_store.findings_for_example(s, audit_id, index)
    if not rows:
        raise HTTPException(404, f"audit {audit_id} has no finding about example {index}")
    return RedirectResponse(f"/findings/{rows[0].id}", 303)
