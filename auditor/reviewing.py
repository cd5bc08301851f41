"""Review decisions, one way in: `auditor review ...`, the API routes and the pages' keys all
decide, undo and bulk-accept through these functions, so a rule holds wherever one decides.

The rules kept here:
- a relabel names its class (by index or name, one of the data set's); the others take none;
- a confirm takes the finding's suggested label, so a finding that suggests none cannot be
  confirmed (one line, nothing stored);
- confirming where the standing decision is already a confirm of the same label records
  nothing new and answers the standing decision (idempotent);
- a decision on a stale version is a `Conflict` (`review_store.decide` / `review_store.undo`: optimistic
  versions), never an overwrite;
- reviewers colliding take turns on an example, briefly: a decision waits for another one on
  the same example at most the front door's lock timeout, then is `review_store.Busy` (a
  `Conflict`: try again); a bulk accept passes over examples being decided right now (skipped,
  with the reason) and goes in the order of their keys, so two never deadlock.

Each function takes the caller's `Session` and never commits: the front door owns the unit of
work, as with `auditor.store.repo`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from auditor.data.base import Examples
from auditor.errors import AuditorError, Conflict, NotFound
from auditor.findings_view import AuditContext, context_for, event_doc, finding_doc, resolve_class
from auditor.rerank import maybe_rerank
from auditor.store import audits as audit_store
from auditor.store import datasets as dataset_store
from auditor.store import findings as finding_store
from auditor.store import reviews as review_store
from auditor.store.db import lock_race, try_transaction_lock
from auditor.store.models import Audit, Finding, Review


def suggested_label(finding: Finding) -> int | None:
    """The label the finding suggests (what a confirm takes), if any."""
    value = (finding.payload or {}).get("suggested_label")
    return int(value) if value is not None else None


def class_count(session: Session, audit: Audit) -> int:
    """How many classes the audit's data set has: its names, else the largest label seen + 1."""
    names = dataset_store.get_dataset_by_id(session, audit.dataset_id).class_names
    if names:
        return len(names)
    return max(dataset_store.label_counts(session, audit.snapshot_id), default=-1) + 1


def relabel_class(
    session: Session, audit: Audit, value: int | str, examples: Examples | None = None
) -> int:
    """The class a relabel names (index or name), refused in one line unless it is one of the
    data set's: checked against `examples` when the caller has read the data set, else against
    the class names and labels stored with it."""
    if examples is not None:
        return resolve_class(value, examples.class_names, examples.num_classes)
    names = dataset_store.get_dataset_by_id(session, audit.dataset_id).class_names
    return resolve_class(value, names, class_count(session, audit))


def decide(
    session: Session,
    finding_id: int,
    decision: str,
    new_label: int | str | None = None,
    *,
    reviewer: str,
    user_id: int | None = None,
    note: str | None = None,
    expected_version: int | None = None,
    examples: Examples | None = None,
) -> Review:
    """Record `decision` (confirmed / relabelled / dismissed) about the example behind a finding
    and return the decision standing now. `expected_version`: the version of the decision the
    reviewer saw (None: none yet). `examples`: the data set, when the caller has read it, to
    check a relabel's class against."""
    finding = finding_store.get_finding(session, finding_id)
    audit = audit_store.get_audit(session, finding.audit_id)
    if decision == "relabelled":
        if new_label is None:
            raise AuditorError("a relabel decision needs new_label (a class index or name)")
        new_label = relabel_class(session, audit, new_label, examples)
    elif new_label is not None:
        raise AuditorError(f"a {decision} decision takes no new_label")
    if decision == "confirmed":
        _check_suggests(finding)
        standing = _same_confirm(session, audit, finding)
        if standing is not None:
            return standing
    review = review_store.decide(
        session, finding_id, decision, new_label, reviewer, note,
        expected_version=expected_version, user_id=user_id,
    )  # fmt: skip
    session.flush()
    _rerank_when_due(session, finding.audit_id)  # decisions feed the queue (auditor.rerank)
    return review


def undo(
    session: Session,
    finding_id: int,
    *,
    reviewer: str,
    user_id: int | None = None,
    expected_version: int | None = None,
) -> Review | None:
    """Withdraw the decision standing on the finding's example; the one before it (if any)
    stands again and is returned. A stale `expected_version` is a `Conflict`."""
    review = review_store.undo(
        session, finding_id, reviewer, expected_version=expected_version, user_id=user_id
    )
    session.flush()
    return review


@dataclass
class BulkAccept:
    """What a bulk accept did: findings confirmed (in order), those skipped with the reason, and
    the decision now standing on each confirmed one."""

    confirmed: list[int] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    decisions: dict[int, Review] = field(default_factory=dict)


def accept_suggested(
    session: Session,
    audit_id: int,
    *,
    reviewer: str,
    user_id: int | None = None,
    finding_ids: Iterable[int] | None = None,
    top_k: int | None = None,
    label: int | str | None = None,
) -> BulkAccept:
    """Confirm the suggested label of the given findings of the audit, or of its top K undecided
    (given class `label`, by index or name, when set). Only first decisions: a finding that
    suggests no label, or whose example someone has decided about, is skipped with the reason."""
    audit = audit_store.get_audit(session, audit_id)
    if (finding_ids is None) == (top_k is None):
        raise AuditorError("give exactly one of finding_ids or top_k")
    if finding_ids is not None:
        targets = [finding_store.get_finding(session, i) for i in dict.fromkeys(finding_ids)]
        wrong = [f.id for f in targets if f.audit_id != audit_id]
        if wrong:
            raise NotFound(f"finding {wrong[0]} is not part of audit {audit_id}")
    else:
        names = dataset_store.get_dataset_by_id(session, audit.dataset_id).class_names
        wanted = resolve_class(label, names) if label not in (None, "") else None
        page = finding_store.query_findings(
            session, audit_id, label=wanted, decision="undecided", limit=top_k
        )
        targets = [f for f, _ in page.rows]
    skipped: dict[int, str] = {}
    decisions: dict[int, Review] = {}
    # Decide in one fixed order, that of the key each decision holds (the example's), whatever
    # order the caller gave, and pass over an example someone else is deciding right now rather
    # than wait for them: two bulk accepts of overlapping findings never deadlock, and never
    # queue behind each other. The answer keeps the caller's order.
    for f in sorted(targets, key=lambda f: (f.example_key, f.id)):
        if suggested_label(f) is None:
            skipped[f.id] = "suggests no label"
            continue
        try:
            review = review_store.decide(
                session, f.id, "confirmed", None, reviewer, None, user_id=user_id, wait=False
            )
            session.flush()
        except Conflict as exc:  # decided already, or being decided (review_store.Busy)
            skipped[f.id] = str(exc)
            continue
        decisions[f.id] = review
    done = BulkAccept()
    for f in targets:
        if f.id in decisions:
            done.confirmed.append(f.id)
            done.decisions[f.id] = decisions[f.id]
        else:
            done.skipped.append({"finding_id": f.id, "reason": skipped[f.id]})
    if done.confirmed:
        _rerank_when_due(session, audit_id)  # once for the batch, not once a finding
    return done


def _rerank_when_due(session: Session, audit_id: int) -> None:
    """`maybe_rerank`, by one transaction at a time and never at the cost of the decision.

    Concurrent decisions can all find a re-ranking due; each would rewrite the same queue ranks
    and lock the same rows. One takes the audit's re-rank lock and does it; the others leave it
    to that one (the next decision checks again). A re-ranking that still loses a lock wait is
    rolled back on its own and the decision stands.
    """
    if not try_transaction_lock(session, f"rerank audit {audit_id}"):
        return
    try:
        with session.begin_nested():
            maybe_rerank(session, audit_id)
    except Exception as exc:  # the driver's own errors too: queue ranks are written by COPY
        if not lock_race(exc):
            raise


def next_to_review(
    session: Session, audit_id: int | None = None, exclude: Iterable[int] = ()
) -> Finding | None:
    """The best-ranked finding whose example nobody has decided about yet (of `audit_id`, else
    of the newest succeeded audit), passing over `exclude`; None when all are settled."""
    return review_store.next_unsettled_finding(session, audit_id=audit_id, exclude=exclude)


@dataclass
class FindingDetail:
    """One finding as its page and `findings show` present it, with the decision history."""

    doc: dict[str, Any]
    ctx: AuditContext
    audit: Audit


def finding_detail(session: Session, finding_id: int) -> FindingDetail:
    """The finding's document with its standing decision and the example's history (each event
    with the label it gave), every row read here so that the views only format."""
    f = finding_store.get_finding(session, finding_id)
    audit = audit_store.get_audit(session, f.audit_id)
    ctx = context_for(session, audit.id, [f])
    doc = finding_doc(f, ctx, review_store.get_review(session, audit.dataset_id, f.example_key))
    history = review_store.review_history_with_suggestions(session, audit.dataset_id, f.example_key)
    doc["history"] = [event_doc(e, ctx, suggested) for e, suggested in history]
    return FindingDetail(doc, ctx, audit)


def _check_suggests(finding: Finding) -> None:
    if suggested_label(finding) is None:
        raise AuditorError(
            f"finding {finding.id} suggests no label to confirm; relabel or dismiss it"
        )


def _same_confirm(session: Session, audit: Audit, finding: Finding) -> Review | None:
    """The standing decision when it already confirms the label this finding suggests."""
    review = review_store.get_review(session, audit.dataset_id, finding.example_key)
    if review is None or review.decision != "confirmed" or review.finding_id is None:
        return None
    if review.finding_id == finding.id:
        return review
    try:
        prompted = finding_store.get_finding(session, review.finding_id)
    except NotFound:
        return None
    return review if suggested_label(prompted) == suggested_label(finding) else None
