"""Documents the API and the pages both show: an audit with its findings count, class options."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from auditor import reviewing
from auditor.audit_view import audit_label, estimate_line, model_name, solver_name, summary_facts
from auditor.audits import audit_doc
from auditor.findings_view import AuditContext
from auditor.records import finite_json
from auditor.store import datasets as dataset_store
from auditor.store import findings as finding_store
from auditor.store.models import Audit
from auditor.verification import latest_verification
from auditor.workload import audit_review


def audit_listing(s: Session, a: Audit, full: bool = False) -> dict[str, Any]:
    """The CLI's audit document (`auditor.audits.audit_doc`) with its findings count, how many of
    their examples have a standing decision (`decided`) and how many are flagged, its review
    (`auditor.workload`: counts in a list, the whole progress with `full`), and what tells it
    from another audit of its data set (`model`, `solver`, `label`); `full` adds the summary,
    params, class names and the summary in words (`facts`, `estimate_line`)."""
    doc = {**audit_doc(a, summary=True), "findings": finding_store.count_findings(s, a.id)}
    review = audit_review(s, a, full=full)
    doc["review"] = finite_json(review)
    doc["decided"] = finding_store.decided_examples(s, a.id)
    # a label check's review counts already hold its flagged findings (an audit list polls
    # this for every audit): counted again only for an audit that has no review
    doc["flagged"] = review["flagged"] if review else finding_store.count_flagged(s, a.id)
    doc.update(model=model_name(doc), solver=solver_name(doc), label=audit_label(doc))
    if full:
        doc["class_names"] = dataset_store.get_dataset_by_id(s, a.dataset_id).class_names
        doc["facts"] = summary_facts(doc)
        doc["estimate_line"] = estimate_line(doc.get("summary"))
        # the newest succeeded `audit verify` of a label check: before/after next to predicted
        doc["verification"] = latest_verification(s, a.id) if a.kind == "label-check" else None
    else:
        doc.pop("summary"), doc.pop("params")
    return doc


def class_options(s: Session, a: Audit, ctx: AuditContext) -> list[dict[str, Any]]:
    """The data set's classes for a relabel menu: index, name and how the menu reads it ("3 ·
    cat", or "3" where the name is the index)."""
    return [
        {"index": i, "name": ctx.class_name(i), "text": ctx.class_option(i)}
        for i in range(reviewing.class_count(s, a))
    ]
