"""One `APIRouter` per resource; `auditor.web.app.create_app` includes them in this order."""

from auditor.web.routes import audits, auth, decisions, examples, findings, pages, verify, workload

routers = [
    auth.router,
    audits.router,
    workload.router,
    verify.router,
    findings.router,
    decisions.router,
    examples.router,
    pages.router,
]
