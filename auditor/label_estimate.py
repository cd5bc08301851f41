"""The estimate of a sharded label check, over all of its rows, from what the shards stored.

Each shard sees only its own rows, so none of them can estimate how many labels are wrong (the
per-class thresholds are means over every row of a class). The shard that completes the audit
calls `estimate_stored` after the re-ranking: it reads every label finding's stored trained and leave-one-out
probabilities (`probs`, `loo_probs`, kept when there are at most 100 classes) in example order, which is
the order one in-process run computes them in, so both give the same estimate and flag the same
findings (tests/test_label_estimate.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from auditor.analyses.label_noise import estimate_from, flag_in_rank_order
from auditor.store import findings as finding_store


def estimate_stored(sessions: sessionmaker[Session], audit_id: int) -> dict[str, Any] | None:
    """Estimate the audit's wrong labels from its stored label findings, flag the workload, and
    return the summary's `estimate`; None (nothing flagged) where the findings carry no
    probabilities (more than 100 classes)."""
    with sessions() as s:
        n = finding_store.count_findings(s, audit_id, kind="label")
        if n == 0:
            return None
        keys: list[str] = []
        ranks, labels = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
        suggests, probs, loo = np.zeros(n, dtype=bool), None, None
        # filled in place: a million rows' probabilities as Python lists would be ten times larger
        for i, (_, key, rank, label, payload) in enumerate(
            finding_store.label_estimate_rows(s, audit_id)
        ):
            row, loo_row = payload.get("probs"), payload.get("loo_probs")
            if row is None or loo_row is None or label is None or i >= n:
                return None
            if probs is None or loo is None:
                probs, loo = np.zeros((n, len(row))), np.zeros((n, len(row)))
            keys.append(key)
            ranks[i], labels[i], probs[i], loo[i] = rank, label, row, loo_row
            suggests[i] = payload.get("suggested_label") is not None
    if probs is None or loo is None or len(keys) != n:
        return None
    estimate = estimate_from(probs, loo, labels)
    order = np.argsort(ranks, kind="stable")
    flagged = flag_in_rank_order(order, suggests, estimate.count)
    with sessions() as s, s.begin():
        count = finding_store.set_flagged(s, audit_id, [keys[int(j)] for j in flagged])
    return estimate.summary(count)


def estimate_text(estimate: dict[str, Any]) -> str:
    """The summary's `estimate` in one line: "estimated 180 (160–205) wrong labels; 200 flagged"."""
    share = estimate["interval"]
    return (
        f"estimated {estimate['count']:,} ({estimate['low']:,}–{estimate['high']:,}, {share:.0%} interval) "
        f"wrong labels of {estimate['evaluated_rows']:,}; {estimate['flagged']:,} flagged"
    )
