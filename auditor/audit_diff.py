"""`auditor audit diff A B`: what changed in what two audits of one dataset flag.

"Flagged" means: among an audit's findings of one kind, ordered by rank (best first), the first
`--top` of them, where `--top` is a percentage of that audit's findings of the kind (default
"10%", rounded up, at least one) or an absolute count ("50"). For a label check (one finding of
kind "label" per training example, rank 1 = most likely mislabelled) these are the examples a
reviewer checking the top 10% of the queue would look at. The two audits are compared per kind.

Examples are matched by content key (hash of bytes + label), so an edited or relabelled example
is a different example: its old key can leave the flagged set (`in_b` false: B's data no longer
holds it) and its new key can enter it.

- newly_flagged: flagged in B, not in A (`rank_in_a` says where A ranked it, None when A never
  saw that example, e.g. a new row or a changed label);
- no_longer_flagged: flagged in A, not in B (`rank_in_b`, `in_b`);
- settled: examples flagged in A or B that a reviewer has decided about; the review queue skips
  them. `still_flagged` counts examples flagged in both.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from auditor.errors import AuditorError
from auditor.store import audits as audit_store
from auditor.store import datasets as dataset_store
from auditor.store import findings as finding_store
from auditor.store import reviews as review_store
from auditor.store.models import Audit, Finding, Review

DEFAULT_TOP = "10%"


@dataclass(frozen=True)
class TopSpec:
    """How many findings count as flagged: a fraction of an audit's findings, or a count."""

    fraction: float | None = None
    count: int | None = None

    def size(self, n: int) -> int:
        if n <= 0:
            return 0
        if self.count is not None:
            return min(self.count, n)
        assert self.fraction is not None
        return min(n, max(1, math.ceil(self.fraction * n - 1e-9)))

    def __str__(self) -> str:
        if self.count is not None:
            return str(self.count)
        assert self.fraction is not None
        return f"{self.fraction * 100:g}%"


def parse_top(text: str) -> TopSpec:
    """ "10%" -> the top tenth; "50" -> the top 50 findings."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(%?)\s*", text)
    if match is None:
        raise AuditorError(f"cannot read --top {text!r}: use a percentage (10%) or a count (50)")
    value, percent = float(match.group(1)), bool(match.group(2))
    if percent:
        if not 0 < value <= 100:
            raise AuditorError(f"--top {text!r} must be a percentage above 0 and at most 100")
        return TopSpec(fraction=value / 100)
    if value != int(value) or value < 1:
        raise AuditorError(f"--top {text!r} must be a whole number of findings, at least 1")
    return TopSpec(count=int(value))


def _finished_audit(session: Session, audit_id: int) -> Audit:
    audit = audit_store.get_audit(session, audit_id)
    if audit.status != "succeeded":
        raise AuditorError(f"audit {audit_id} is {audit.status}; diff compares succeeded audits")
    return audit


def _flagged(
    session: Session, audit_id: int, counts: dict[str, int], top: TopSpec
) -> dict[tuple[str, str], Finding]:
    """(kind, example_key) -> finding, for the first top.size(n) findings of each kind."""
    flagged: dict[tuple[str, str], Finding] = {}
    for kind, n in sorted(counts.items()):
        for finding in finding_store.list_findings(session, audit_id, top=top.size(n), kind=kind):
            flagged[(kind, finding.example_key)] = finding
    return flagged


def _row(finding: Finding, review: Review | None) -> dict[str, Any]:
    return {
        "finding_id": finding.id,
        "kind": finding.kind,
        "example_key": finding.example_key,
        "example_index": finding.example_index,
        "label": finding.label,
        "rank": finding.rank,
        "score": finding.score,
        "settled": review.decision if review is not None else None,
    }


def _audit_summary(audit: Audit, counts: dict[str, int], flagged: int) -> dict[str, Any]:
    return {
        "id": audit.id,
        "kind": audit.kind,
        "dataset": audit.dataset.name,
        "snapshot_id": audit.snapshot_id,
        "findings": sum(counts.values()),
        "flagged": flagged,
    }


def diff_audits(
    session: Session, a_id: int, b_id: int, top: TopSpec | str = DEFAULT_TOP
) -> dict[str, Any]:
    """Compare what audits A (older) and B (newer) flag; see the module doc for the fields."""
    spec = parse_top(top) if isinstance(top, str) else top
    a, b = _finished_audit(session, a_id), _finished_audit(session, b_id)
    if a.dataset_id != b.dataset_id:
        raise AuditorError(
            f"audits {a_id} and {b_id} are of different datasets "
            f"({a.dataset.name}, {b.dataset.name}); diff compares audits of one dataset"
        )
    if a.kind != b.kind:
        raise AuditorError(
            f"audit {a_id} is a {a.kind}, audit {b_id} a {b.kind}; diff needs one kind"
        )
    counts_a, counts_b = finding_store.kind_counts(session, a.id), finding_store.kind_counts(session, b.id)
    flagged_a = _flagged(session, a.id, counts_a, spec)
    flagged_b = _flagged(session, b.id, counts_b, spec)
    new_keys = [k for k in flagged_b if k not in flagged_a]
    gone_keys = [k for k in flagged_a if k not in flagged_b]
    ranks_in_a = finding_store.ranks_of_keys(session, a.id, new_keys)
    ranks_in_b = finding_store.ranks_of_keys(session, b.id, gone_keys)
    in_b = dataset_store.snapshot_holds(session, b.snapshot_id, [key for _, key in gone_keys])
    keys_a = {key for _, key in flagged_a}
    keys_b = {key for _, key in flagged_b}
    reviews = review_store.reviews_of_keys(session, a.dataset_id, keys_a | keys_b)

    newly = []
    for k in sorted(new_keys, key=lambda k: (k[0], flagged_b[k].rank)):
        row = _row(flagged_b[k], reviews.get(k[1]))
        row["rank_in_a"] = ranks_in_a.get(k)
        newly.append(row)
    gone = []
    for k in sorted(gone_keys, key=lambda k: (k[0], flagged_a[k].rank)):
        row = _row(flagged_a[k], reviews.get(k[1]))
        row["rank_in_b"] = ranks_in_b.get(k)
        row["in_b"] = k[1] in in_b
        gone.append(row)
    settled = []
    for key in sorted(reviews, key=lambda key: reviews[key].id):
        review = reviews[key]
        settled.append(
            {
                "example_key": key,
                "decision": review.decision,
                "new_label": review.new_label,
                "reviewer": review.reviewer,
                "decided_at": review.decided_at.isoformat(),
                "flagged_in": [
                    name for name, keys in (("a", keys_a), ("b", keys_b)) if key in keys
                ],
            }
        )
    return {
        "top": str(spec),
        "a": _audit_summary(a, counts_a, len(flagged_a)),
        "b": _audit_summary(b, counts_b, len(flagged_b)),
        "newly_flagged": newly,
        "no_longer_flagged": gone,
        "still_flagged": len(flagged_a.keys() & flagged_b.keys()),
        "settled": settled,
    }
