"""The review app: JSON API under /api, pages at /, /audits/{id}, /findings/{id}, /login.

Every handler is thin: it identifies the user (`security`), then calls the same repository and
view functions as the CLI (`auditor.store`, `auditor.findings_view`), inside one
transaction per request. Errors are one line: `{"detail": "..."}` with the HTTP status that says
what kind (400 bad value, 401 who are you, 403 not allowed, 404 no such thing, 409 someone else
decided first, 413 body too large, 422 malformed request).
"""


from collections.abc import Iterator
from pathlib import Path as FsPath
from typing import Annotated, Any, Literal

from fastapi import Body, Depends, FastAPI, Form, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from starlette.middleware.sessions import SessionMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from auditor import auth
from auditor.audits import audit_doc
from auditor.auth import Principal
from auditor.errors import AuditorError, Conflict, DataError, NotFound
from auditor.findings_view import (
    AuditContext,
    audit_context,
    context_for,
    decision_doc,
    event_doc,
    finding_doc,
    label_text,
    resolve_class,
)
from auditor.records import finite_json
from auditor.store import audits as audit_store
from auditor.store import datasets as dataset_store
from auditor.store import findings as finding_store
from auditor.store import reviews as review_store
from auditor.store.models import DECISIONS, Audit
from auditor.web.examples import ExampleStore
from auditor.web.security import check_csrf, csrf_token, identify, secret_key

HERE = FsPath(__file__).parent
MAX_BODY_BYTES = 64 * 1024
MAX_ID = 2**63 - 1
PAGE_SIZES = (24, 48, 96)
DecisionFilter = Literal["undecided", "confirmed", "relabelled", "dismissed"]
Order = Literal["rank", "-score", "score", "label"]


# ---- request bodies ---------------------------------------------------------------------
class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TokenRequest(Strict):
    username: str = Field(min_length=1, max_length=200)
    password: str = Field(min_length=1, max_length=auth.MAX_PASSWORD_LENGTH)


class DecisionRequest(Strict):
    decision: Literal["confirmed", "relabelled", "dismissed"]
    # a class index or, where the data set names its classes, a class name
    new_label: int | str | None = Field(None, description="relabelled only: class index or name")
    note: str | None = Field(None, max_length=2000)
    expected_version: int | None = Field(
        None, ge=1, le=2**31 - 1, description="version of the decision you saw; null: none yet"
    )


class UndoRequest(Strict):
    expected_version: int | None = Field(None, ge=1, le=2**31 - 1)


class BulkAcceptRequest(Strict):
    """Confirm (accept the suggested label of) these findings, or the top K undecided ones."""

    finding_ids: list[Annotated[int, Field(ge=1, le=MAX_ID)]] | None = Field(None, max_length=1000)
    top_k: int | None = Field(None, ge=1, le=10_000)
    label: int | str | None = Field(None, description="with top_k: only examples given this class")


# ---- body size limit ------------------------------------------------------------------------
class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413, whether or not they say their length."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        too_large = JSONResponse({"detail": f"request body is larger than {self.limit} bytes"}, 413)
        try:
            if declared is not None and int(declared) > self.limit:
                return await too_large(scope, receive, send)
        except ValueError:
            return await JSONResponse({"detail": "malformed Content-Length"}, 400)(scope, receive, send)
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await too_large(scope, receive, send)


class _TooLarge(Exception):
    pass


# ---- app --------------------------------------------------------------------------------------
def create_app(sessions: sessionmaker[Session] | None = None, home: FsPath | None = None) -> FastAPI:
    """The app over `sessions` (default: the configured store, created or checked now)."""
    from auditor.config import get_settings
    from auditor.store import open_store

    settings = get_settings()
    sessions = sessions or open_store()
    app = FastAPI(
        title="auditor review",
        description="Triage influence-function findings: queues, examples, decisions, history.",
        version="1",
    )
    app.state.sessions = sessions
    app.state.examples = ExampleStore()
    app.add_middleware(
        SessionMiddleware,
        secret_key=secret_key(home or settings.home, settings.secret_key),
        session_cookie="auditor_session",
        same_site="strict",
        https_only=False,
        max_age=12 * 3600,
    )
    app.add_middleware(BodyLimit)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["label"] = lambda label, ctx: label_text(label, ctx)

    # ---- errors: one line each -------------------------------------------------------------
    def _error(request: Request, status: int, message: str, headers: dict | None = None) -> Response:
        if _wants_html(request):
            if status == 401:
                return RedirectResponse(f"/login?next={request.url.path}", 303)
            return templates.TemplateResponse(
                request, "error.html", {"status": status, "message": message, "user": None}, status_code=status
            )
        return JSONResponse({"detail": message}, status, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        return _error(request, exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return _error(request, 422, f"{where or 'request'}: {first.get('msg', 'invalid')}")

    @app.exception_handler(DBAPIError)
    async def database_down(request: Request, exc: DBAPIError) -> Response:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        return _error(request, 503, f"database error, nothing was stored: {reason[0] if reason else type(exc).__name__}")

    @app.exception_handler(AuditorError)
    async def domain_error(request: Request, exc: AuditorError) -> Response:
        status = 404 if isinstance(exc, NotFound) else 409 if isinstance(exc, Conflict) else 400
        return _error(request, status, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    # ---- dependencies -----------------------------------------------------------------------
    def db(request: Request) -> Iterator[Session]:
        with request.app.state.sessions() as s, s.begin():
            yield s

    # scope="function", said explicitly: the transaction commits before the response is sent,
    # so a 200 means stored (a "request" scope would commit after a 200 was already sent)
    DB = Annotated[Session, Depends(db, scope="function")]

    def who(request: Request, s: DB) -> tuple[Principal, bool]:
        user, by_token = identify(request, s)
        if user is None:
            raise HTTPException(401, "sign in first: POST /login, or send Authorization: Bearer <token>")
        return user, by_token

    def reader(request: Request, s: DB) -> Principal:
        return who(request, s)[0]

    def decider(request: Request, s: DB) -> Principal:
        user, by_token = who(request, s)
        check_csrf(request, by_token)
        if not user.can_decide:
            raise HTTPException(403, f"user {user.name!r} is a {user.role} and cannot decide")
        return user

    Reader = Annotated[Principal, Depends(reader)]
    Decider = Annotated[Principal, Depends(decider)]
    AuditId = Annotated[int, Path(ge=1, le=MAX_ID)]
    FindingId = Annotated[int, Path(ge=1, le=MAX_ID)]

    # ---- JSON API -----------------------------------------------------------------------------
    @app.post("/api/token", tags=["auth"])
    def token(body: TokenRequest, s: DB) -> dict[str, Any]:
        """A bearer token for scripts: `Authorization: Bearer <access_token>`."""
        user = auth.authenticate(s, body.username, body.password)
        if user is None:
            raise HTTPException(401, "wrong user name or password")
        raw = auth.issue_token(s, user)
        return {"access_token": raw, "token_type": "bearer", "expires_in": int(auth.TOKEN_TTL.total_seconds())}

    @app.get("/api/me", tags=["auth"])
    def me(user: Reader) -> dict[str, Any]:
        return {"name": user.name, "role": user.role, "can_decide": user.can_decide}

    @app.get("/api/audits", tags=["audits"])
    def audits(user: Reader, s: DB, limit: Annotated[int, Query(ge=1, le=500)] = 100) -> list[dict[str, Any]]:
        return [_audit_doc(s, a) for a in audit_store.list_audits(s)[:limit]]

    @app.get("/api/audits/{audit_id}", tags=["audits"])
    def audit(audit_id: AuditId, user: Reader, s: DB) -> dict[str, Any]:
        return _audit_doc(s, audit_store.get_audit(s, audit_id), full=True)

    @app.get("/api/audits/{audit_id}/findings", tags=["findings"])
    def findings(
        audit_id: AuditId,
        user: Reader,
        s: DB,
        kind: Annotated[str | None, Query(max_length=64)] = None,
        label: Annotated[str | None, Query(max_length=200, description="class index or name")] = None,
        decision: DecisionFilter | None = None,
        order: Order = "rank",
        offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
        limit: Annotated[int, Query(ge=1, le=500)] = 48,
    ) -> dict[str, Any]:
        a = audit_store.get_audit(s, audit_id)
        wanted = resolve_class(label, a.dataset.class_names) if label not in (None, "") else None
        page = finding_store.query_findings(
            s, audit_id, kind=kind, label=wanted, decision=decision, order=order, offset=offset, limit=limit
        )
        ctx = context_for(s, audit_id, [f for f, _ in page.rows])
        return finite_json({"total": page.total, "offset": offset, "items": [finding_doc(f, ctx, r) for f, r in page.rows]})

    @app.get("/api/findings/{finding_id}", tags=["findings"])
    def finding(finding_id: FindingId, user: Reader, s: DB) -> dict[str, Any]:
        return finite_json(_finding_full(s, finding_id)[0])

    @app.post("/api/findings/{finding_id}/decision", tags=["decisions"])
    def decide(finding_id: FindingId, body: DecisionRequest, user: Decider, s: DB) -> dict[str, Any]:
        f = finding_store.get_finding(s, finding_id)
        a = audit_store.get_audit(s, f.audit_id)
        new_label = None
        if body.decision == "relabelled":
            if body.new_label is None:
                raise AuditorError("a relabel decision needs new_label (a class index or name)")
            new_label = resolve_class(body.new_label, a.dataset.class_names, _known_classes(s, a))
        elif body.new_label is not None:
            raise AuditorError(f"a {body.decision} decision takes no new_label")
        if body.decision == "confirmed" and (f.payload or {}).get("suggested_label") is None:
            raise AuditorError(f"finding {finding_id} suggests no label to confirm; relabel or dismiss it")
        review = review_store.decide(
            s, finding_id, body.decision, new_label, user.name, body.note,
            expected_version=body.expected_version, user_id=user.id,
        )  # fmt: skip
        s.flush()
        return {"finding_id": finding_id, "decision": decision_doc(review, audit_context(s, a.id))}

    @app.post("/api/findings/{finding_id}/undo", tags=["decisions"])
    def undo(
        finding_id: FindingId, user: Decider, s: DB, body: Annotated[UndoRequest | None, Body()] = None
    ) -> dict[str, Any]:
        f = finding_store.get_finding(s, finding_id)
        review = review_store.undo(s, finding_id, user.name, expected_version=body.expected_version if body else None, user_id=user.id)
        s.flush()
        return {"finding_id": finding_id, "decision": decision_doc(review, audit_context(s, f.audit_id))}

    @app.post("/api/audits/{audit_id}/accept-suggested", tags=["decisions"])
    def accept_suggested(audit_id: AuditId, body: BulkAcceptRequest, user: Decider, s: DB) -> dict[str, Any]:
        """Bulk: confirm the suggested label of the given findings, or of the top K undecided."""
        a = audit_store.get_audit(s, audit_id)
        if (body.finding_ids is None) == (body.top_k is None):
            raise AuditorError("give exactly one of finding_ids or top_k")
        if body.finding_ids is not None:
            targets = [finding_store.get_finding(s, i) for i in dict.fromkeys(body.finding_ids)]
            wrong = [f.id for f in targets if f.audit_id != audit_id]
            if wrong:
                raise NotFound(f"finding {wrong[0]} is not part of audit {audit_id}")
        else:
            wanted = resolve_class(body.label, a.dataset.class_names) if body.label not in (None, "") else None
            targets = [f for f, _ in finding_store.query_findings(s, audit_id, label=wanted, decision="undecided", limit=body.top_k).rows]
        done, skipped, decisions = [], [], {}
        ctx = audit_context(s, audit_id)
        for f in targets:
            if (f.payload or {}).get("suggested_label") is None:
                skipped.append({"finding_id": f.id, "reason": "suggests no label"})
                continue
            try:
                review = review_store.decide(s, f.id, "confirmed", None, user.name, None, user_id=user.id)
                s.flush()
                done.append(f.id)
                decisions[str(f.id)] = decision_doc(review, ctx)
            except Conflict as exc:
                skipped.append({"finding_id": f.id, "reason": str(exc)})
        return {"confirmed": done, "skipped": skipped, "decisions": decisions}

    @app.get("/api/audits/{audit_id}/examples/{index}/image", tags=["findings"], response_class=Response,
             responses={200: {"content": {"image/png": {}}}})  # fmt: skip
    def image(
        request: Request, audit_id: AuditId, index: Annotated[int, Path(ge=0, le=MAX_ID)], user: Reader, s: DB,
        key: Annotated[str | None, Query(max_length=64)] = None,
    ) -> Response:  # fmt: skip
        """The training example at `index` of the audit's data set, as a PNG."""
        a = audit_store.get_audit(s, audit_id)
        locator = dataset_store.locators(s, a.snapshot_id, [index]).get(index)
        try:
            data = request.app.state.examples.png(a.dataset, index, key, locator)
        except DataError as exc:
            raise HTTPException(404, str(exc)) from None
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})

    @app.get("/api/audits/{audit_id}/examples/{index}", tags=["findings"])
    def example_findings(
        audit_id: AuditId, index: Annotated[int, Path(ge=0, le=MAX_ID)], user: Reader, s: DB
    ) -> list[dict[str, Any]]:
        """The audit's findings about the example at `index` (to follow a link from a list)."""
        audit_store.get_audit(s, audit_id)
        rows = finding_store.findings_for_example(s, audit_id, index)
        ctx = context_for(s, audit_id, rows)
        return finite_json([finding_doc(f, ctx) for f in rows])

    # ---- pages ----------------------------------------------------------------------------------
    def page_user(request: Request, s: Session) -> Principal:
        user, _ = identify(request, s)
        if user is None:
            raise HTTPException(401, "sign in first")
        return user

    def render(request: Request, name: str, user: Principal | None, **context: Any) -> HTMLResponse:
        return templates.TemplateResponse(
            request, name, {"user": user, "csrf": csrf_token(request), **context}
        )

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_page(request: Request, next: str = "/") -> HTMLResponse:
        return render(request, "login.html", None, next=_safe_next(next), failed=False)

    @app.post("/login", include_in_schema=False)
    def login(
        request: Request,
        s: DB,
        username: Annotated[str, Form(max_length=200)],
        password: Annotated[str, Form(max_length=auth.MAX_PASSWORD_LENGTH)],
        next: Annotated[str, Form(max_length=500)] = "/",
    ) -> Response:
        user = auth.authenticate(s, username, password)
        if user is None:
            if _wants_html(request):
                r = render(request, "login.html", None, next=_safe_next(next), failed=True)
                r.status_code = 401
                return r
            raise HTTPException(401, "wrong user name or password")
        request.session.clear()  # a new session id on sign-in: no fixation
        request.session["user_id"] = user.id
        csrf_token(request)
        if _wants_html(request):
            return RedirectResponse(_safe_next(next), 303)
        return JSONResponse({"name": user.name, "role": user.role})

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request, csrf_token_field: Annotated[str, Form(alias="csrf_token")] = "") -> Response:
        check_csrf(request, False, csrf_token_field)
        request.session.clear()
        return RedirectResponse("/login", 303)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def home_page(request: Request, s: DB) -> HTMLResponse:
        user = page_user(request, s)
        docs = [_audit_doc(s, a) for a in audit_store.list_audits(s)[:200]]
        return render(request, "audits.html", user, audits=docs)

    @app.get("/audits/{audit_id}", response_class=HTMLResponse, include_in_schema=False)
    def queue_page(
        request: Request,
        audit_id: AuditId,
        s: DB,
        label: Annotated[str, Query(max_length=200)] = "",
        decision: Annotated[str, Query(max_length=20)] = "",
        order: Annotated[str, Query(max_length=10)] = "rank",
        page: Annotated[int, Query(ge=1, le=10**6)] = 1,
        size: Annotated[int, Query(ge=1, le=500)] = 48,
        kind: Annotated[str, Query(max_length=64)] = "",
    ) -> HTMLResponse:
        user = page_user(request, s)
        a = audit_store.get_audit(s, audit_id)
        wanted = resolve_class(label, a.dataset.class_names) if label else None
        kinds = finding_store.finding_kinds(s, audit_id)
        chosen_kind = kind or ("label" if "label" in kinds else None)
        result = finding_store.query_findings(
            s, audit_id, kind=chosen_kind, label=wanted, decision=decision or None, order=order,
            offset=(page - 1) * size, limit=size,
        )  # fmt: skip
        ctx = context_for(s, audit_id, [f for f, _ in result.rows])
        docs = [finding_doc(f, ctx, r) for f, r in result.rows]
        classes = _class_options(s, a, ctx)
        return render(
            request, "queue.html", user, audit=_audit_doc(s, a), items=docs, total=result.total, ctx=ctx,
            classes=classes, filters={"label": label, "decision": decision, "order": order, "kind": chosen_kind or ""},
            kinds=kinds, page=page, size=size, pages=max(1, -(-result.total // size)),
            items_data=finite_json(docs),
            prev_url=str(request.url.include_query_params(page=page - 1)) if page > 1 else None,
            next_url=str(request.url.include_query_params(page=page + 1)) if page * size < result.total else None,
        )  # fmt: skip

    @app.get("/findings/{finding_id}", response_class=HTMLResponse, include_in_schema=False)
    def finding_page(request: Request, finding_id: FindingId, s: DB) -> HTMLResponse:
        user = page_user(request, s)
        doc, ctx, a = _finding_full(s, finding_id)
        neighbours = finding_store.neighbour_findings(s, a.id, doc["kind"], doc["rank"])
        return render(
            request, "finding.html", user, f=doc, ctx=ctx, audit=_audit_doc(s, a),
            classes=_class_options(s, a, ctx), doc_data=finite_json(doc),
            prev_id=neighbours[0], next_id=neighbours[1],
        )  # fmt: skip

    @app.get("/audits/{audit_id}/examples/{index}", include_in_schema=False)
    def example_page(request: Request, audit_id: AuditId, index: Annotated[int, Path(ge=0, le=MAX_ID)], s: DB) -> Response:
        page_user(request, s)
        rows = finding_store.findings_for_example(s, audit_id, index)
        if not rows:
            raise HTTPException(404, f"audit {audit_id} has no finding about example {index}")
        return RedirectResponse(f"/findings/{rows[0].id}", 303)

    from auditor.web.routes import verify as verify_routes

    app.include_router(verify_routes.router)
    return app


# ---- helpers ------------------------------------------------------------------------------------
def _wants_html(request: Request) -> bool:
    return not request.url.path.startswith("/api/") and "text/html" in request.headers.get("accept", "")


def _safe_next(target: str) -> str:
    """Only local paths after sign-in: never an open redirect to another site."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


def _known_classes(s: Session, a: Audit) -> int:
    """How many classes the audit's data set has: its names, else the largest label seen + 1."""
    if a.dataset.class_names:
        return len(a.dataset.class_names)
    counts = dataset_store.label_counts(s, a.snapshot_id)
    return max(counts, default=-1) + 1


def _class_options(s: Session, a: Audit, ctx: AuditContext) -> list[dict[str, Any]]:
    return [{"index": i, "name": ctx.class_name(i)} for i in range(_known_classes(s, a))]


def _audit_doc(s: Session, a: Audit, full: bool = False) -> dict[str, Any]:
    """The CLI's audit document (`auditor.audits.audit_doc`) with its findings count; `full`
    adds the summary, params and class names."""
    doc = {**audit_doc(a, summary=full), "findings": finding_store.count_findings(s, a.id)}
    if full:
        doc["class_names"] = a.dataset.class_names
    return doc


def _finding_full(s: Session, finding_id: int) -> tuple[dict[str, Any], AuditContext, Audit]:
    f = finding_store.get_finding(s, finding_id)
    a = audit_store.get_audit(s, f.audit_id)
    ctx = context_for(s, a.id, [f])
    doc = finding_doc(f, ctx, review_store.get_review(s, a.dataset_id, f.example_key))
    doc["history"] = [event_doc(e, ctx) for e in review_store.review_history(s, a.dataset_id, f.example_key)]
    doc["decisions"] = list(DECISIONS)
    return doc, ctx, a
