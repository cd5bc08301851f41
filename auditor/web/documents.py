"""Documents the API and the pages both show: an audit with its findings count, class options."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from auditor import reviewing
from auditor.audits import audit_doc
from auditor.findings_view import AuditContext
from auditor.records import finite_json
from auditor.store import datasets as dataset_store
from auditor.store import findings as finding_store
from auditor.store.models import Audit
from auditor.workload import audit_review


def audit_listing(s: Session, a: Audit, full: bool = False) -> dict[str, Any]:
    """The CLI's audit document (`auditor.audits.audit_doc`) with its findings count and its
    review (`auditor.workload`: counts in a list, the whole progress with `full`); `full` adds
    the summary, params and class names."""
    doc = {**audit_doc(a, summary=full), "findings": finding_store.count_findings(s, a.id)}
    doc["review"] = finite_json(audit_review(s, a, full=full))
    if full:
        doc["class_names"] = dataset_store.get_dataset_by_id(s, a.dataset_id).class_names
    return doc


def class_options(s: Session, a: Audit, ctx: AuditContext) -> list[dict[str, Any]]:
    """The data set's classes for a relabel menu: index and name."""
    return [{"index": i, "name": ctx.class_name(i)} for i in range(reviewing.class_count(s, a))]
