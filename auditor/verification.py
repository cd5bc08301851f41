"""Verifying a review: the one way in for `auditor audit verify`, the API and any later button.

`request_verification` owns every rule of what may be verified, and creates the verify audit
through `auditor.audits.create_audit` (the one way audits are made), so it then runs, reports
progress, can be cancelled and goes to the workers like every other audit. The decisions are read
here, when it is asked for, and written into the audit's params: a verification applies the
decisions as they stood then, whenever a worker gets to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from auditor.analyses.registry import get_kind
from auditor.audits import create_audit
from auditor.config import Settings
from auditor.data.base import Examples
from auditor.data.keys import content_hash
from auditor.errors import AuditorError, DataError
from auditor.store import audits as audit_store
from auditor.store import datasets as dataset_store
from auditor.store import reviews as review_store
from auditor.store.models import Audit, Finding, Review

VERIFY = "verify"
SOURCE_KIND = "label-check"


@dataclass
class Corrections:
    """What the standing decisions do to the labels, and what influence predicted for it."""

    labels: dict[str, int] = field(default_factory=dict)  # example row -> new label (JSON keys)
    confirmed: int = 0
    relabelled: int = 0
    dismissed: int = 0
    unchanged: int = 0  # confirmed without a suggestion, or relabelled to the given label
    predicted: dict[str, float] = field(
        default_factory=lambda: {"test_loss": 0.0, "test_accuracy": 0.0}
    )
    predicted_from: int = 0  # changed labels whose finding carried a prediction for that label
    evaluated_on: str | None = None  # the rows the predictions were made on

    def apply(self, finding: Finding, review: Review) -> None:
        """One decision: confirm takes the finding's suggestion, relabel the reviewer's label,
        dismiss keeps the given one. Only the suggestion has a predicted worth (`fix_value`)."""
        payload = finding.payload or {}
        suggested = payload.get("suggested_label")
        if review.decision == "dismissed":
            self.dismissed += 1
            return
        new = suggested if review.decision == "confirmed" else review.new_label
        if new is None or int(new) == finding.label:
            self.unchanged += 1
            return
        self.labels[str(finding.example_index)] = int(new)
        if review.decision == "confirmed":
            self.confirmed += 1
        else:
            self.relabelled += 1
        worth = (payload.get("fix_value") or {}).get("relabel") if new == suggested else None
        if isinstance(worth, dict) and {"test_loss", "test_accuracy"} <= worth.keys():
            self.predicted_from += 1
            for k in self.predicted:
                self.predicted[k] += float(worth[k])
            self.evaluated_on = self.evaluated_on or (payload.get("fix_value") or {}).get(
                "evaluated_on"
            )

    def applied(self) -> dict[str, int]:
        return {
            "relabelled": self.relabelled, "confirmed": self.confirmed, "dismissed": self.dismissed,
            "unchanged": self.unchanged,
        }  # fmt: skip

    def predicted_change(self) -> dict[str, Any] | None:
        """The first-order sum over the changed labels that carry a prediction; None when none does."""
        if not self.predicted_from:
            return None
        doc: dict[str, Any] = {
            **self.predicted,
            "from_findings": self.predicted_from,
            "evaluated_on": self.evaluated_on,
        }
        notes = []
        if self.predicted_from > 1:
            # A test point's correctness flips once however many fixes push it: one fix's change
            # of accuracy is not additive (summed over 1,655 fixes it read -567 points against a
            # real -3.45, bench/review_workload.py), while the first-order loss change is.
            doc["test_accuracy"] = None
            notes.append("accuracy changes of single fixes do not add up: no prediction for several")
        missing = len(self.labels) - self.predicted_from
        if missing:
            notes.append(
                f"{missing} of {len(self.labels)} changed labels have no prediction (relabelled to another "
                "label than the suggestion, or not flagged): the sum leaves them out"
            )
        if notes:
            doc["note"] = "; ".join(notes)
        return doc


def corrections_of(decided: list[tuple[Finding, Review]]) -> Corrections:
    out = Corrections()
    for finding, review in decided:
        out.apply(finding, review)
    return out


def check_source(session: Session, audit_id: int) -> Audit:
    """The audit to verify, or a one-line refusal: only a succeeded label check whose data set
    has not changed since (as far as the store knows; the files are read again on create)."""
    source = audit_store.get_audit(session, audit_id)
    if source.kind != SOURCE_KIND:
        raise AuditorError(
            f"audit {audit_id} is of kind {source.kind}; only a label check's decisions can be verified"
        )
    if source.status != "succeeded":
        reason = f": {source.error}" if source.error else ""
        raise AuditorError(
            f"audit {audit_id} is {source.status}{reason}; only a succeeded label check can be verified"
        )
    latest = dataset_store.latest_snapshot(session, source.dataset_id)
    if latest is not None and latest.content_hash != source.snapshot.content_hash:
        raise DataError(changed_since(source, f"snapshot {latest.id}"))
    return source


def changed_since(source: Audit, now: str) -> str:
    return (
        f"dataset {source.dataset.name!r} changed since audit {source.id} (its snapshot {source.snapshot_id}, now "
        f"{now}): its findings and decisions no longer describe these rows; run a new label check"
    )


def request_verification(
    sessions: sessionmaker[Session],
    audit_id: int,
    *,
    settings: Settings,
    train_fn: str | None = None,
    local: bool = False,
) -> int:
    """Create a queued verify audit of label check `audit_id` with its standing decisions
    applied; returns its id. Refused in one line, with nothing stored: an audit that is not a
    succeeded label check, has no decisions, or whose data set changed since it ran; a
    `--no-train` model without `train_fn`, or a `train_fn` that is not registered (unless `local`)."""
    with sessions() as s:
        source = check_source(s, audit_id)
        decided = review_store.decided_findings(s, audit_id)
        if not decided:
            raise AuditorError(
                f"audit {audit_id} has no decisions yet: review some findings (`auditor review next {audit_id}`) first"
            )
        fix = corrections_of(decided)
        model = get_kind(SOURCE_KIND).parse(source.params or {}).model
        dataset, test = (
            source.dataset.name,
            source.test_dataset.name if source.test_dataset else None,
        )
        expected, changed = source.snapshot.content_hash, changed_since(source, "different on disk")

    def unchanged(train: Examples, _test: Examples | None) -> None:
        if content_hash(train.keys) != expected:
            raise DataError(changed)

    params = {
        "audit": audit_id,
        "train_fn": train_fn,
        "model": model.to_dict(),
        "corrections": fix.labels,
        "applied": fix.applied(),
        "predicted_change": fix.predicted_change(),
        "test_name": test,
    }
    return create_audit(
        sessions, VERIFY, dataset, params, test_name=test, local=local, check_data=unchanged,
        settings=settings,
    )


def latest_verification(session: Session, audit_id: int) -> dict[str, Any] | None:
    """The newest succeeded verification of label check `audit_id`: its audit id, when it
    finished, and its report (the verify audit's summary); None when there is none."""
    source = audit_store.get_audit(session, audit_id)
    for a in audit_store.audits_of_kind(session, source.dataset_id, VERIFY, status="succeeded"):
        if (a.params or {}).get("audit") == audit_id:
            return {
                "verify_audit": a.id,
                "audit": audit_id,
                "finished_at": a.finished_at.isoformat() if a.finished_at else None,
                **(a.summary or {}),
            }
    return None
