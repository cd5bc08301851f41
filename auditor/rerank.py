"""Decisions feed the queue: once reviewers have decided enough of an audit's findings, what is
left of its queue is re-ranked by what they taught it.

The static ranking orders by one score (the margin, or self-influence); reviewers' decisions say
which of the audit's other score columns also tell a wrong label from a right one on *this*
data set. A small calibration learns that: an L2-regularised logistic regression on the
standardised score columns (margin, leave-one-out margin, self-influence, loss, and the trained
and left-out probabilities of the given label), fitted on confirmed or relabelled (the flag was
right: 1) against dismissed (0). Newton's method on a handful of features is exact and
deterministic, so the same decisions always give the same order.

What moves: only undecided label findings, and only among the queue slots they already hold
within their group (flagged, or ranked only), so a decided finding keeps its place, the flagged
set stays the flagged set, and the queue stays a permutation of the same slots. Each re-ranking
is recorded in the audit's summary under `rerank` (when, on how many decisions, the fitted
coefficients, and why), which the pages show.

`maybe_rerank` is what the review service calls after each decision: it re-ranks once the
minimum is met and again each time `every` more decisions have been made.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from auditor.errors import AuditorError
from auditor.store import audits as audit_store
from auditor.store import workload as workload_store
from auditor.store.models import utcnow

FEATURES = ("margin", "loo_margin", "self_influence", "loss", "prob_label", "loo_prob_label")
POSITIVE = ("confirmed", "relabelled")  # the flag was right
CLIP = 5.0  # standardised values beyond this many deviations are clipped: one outlier, one vote


@dataclass(frozen=True)
class RerankPolicy:
    """When the queue may be re-ranked, and how strongly the calibration is regularised."""

    min_decisions: int = 20  # decided findings before the first re-ranking
    min_each: int = (
        5  # of each outcome (flag right / flag wrong): a class seen twice teaches nothing
    )
    every: int = 25  # re-rank again once this many more decisions have been made
    l2: float = 1.0  # ridge penalty on the standardised coefficients (not on the intercept)


DEFAULT_POLICY = RerankPolicy()


@dataclass(frozen=True)
class Calibration:
    """A fitted logistic regression on standardised score columns."""

    features: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    def probability(self, x: np.ndarray) -> np.ndarray:
        return _sigmoid(self.intercept + _standardise(x, self.mean, self.scale) @ self.coef)


def _sigmoid(t: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(t, -50, 50)))


def _standardise(x: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    z = (x - mean) / scale
    z = np.where(np.isfinite(z), z, 0.0)  # a missing score counts as average
    return np.clip(z, -CLIP, CLIP)


def _moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(count, mean, standard deviation) of each column's finite values."""
    seen = np.isfinite(x)
    count = seen.sum(axis=0)
    mean = np.where(seen, x, 0.0).sum(axis=0) / np.maximum(count, 1)
    scale = np.sqrt((np.where(seen, x - mean, 0.0) ** 2).sum(axis=0) / np.maximum(count, 1))
    return count, mean, scale


def fit_calibration(
    x: np.ndarray,
    y: np.ndarray,
    names: tuple[str, ...],
    l2: float,
    population: np.ndarray | None = None,
) -> Calibration:
    """L2 logistic regression by Newton's method (a few steps; deterministic) on the columns of
    `x` standardised by the mean and deviation of `population` (default `x`): all of the audit's
    findings, because decided ones come from the top of the queue, and scaled by themselves the
    rest of the queue would sit many deviations away and be clipped flat. Columns that are
    constant or missing in the decided rows carry nothing and are dropped."""
    count, _, spread = _moments(x)
    _, mean, scale = _moments(x if population is None else population)
    keep = (count >= 2) & (spread > 1e-12) & (scale > 1e-12)
    mean, scale = mean[keep], scale[keep]
    z = _standardise(x[:, keep], mean, scale)
    design = np.hstack([np.ones((len(z), 1)), z])
    w = np.zeros(design.shape[1])
    w[0] = np.log((y.sum() + 0.5) / (len(y) - y.sum() + 0.5))
    penalty = np.full(design.shape[1], l2)
    penalty[0] = 0.0
    for _ in range(50):
        p = _sigmoid(design @ w)
        grad = design.T @ (p - y) + penalty * w
        hess = (
            (design * (p * (1 - p))[:, None]).T @ design + np.diag(penalty) + 1e-9 * np.eye(len(w))
        )
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    used = tuple(n for n, k in zip(names, keep, strict=True) if k)
    return Calibration(used, mean, scale, w[1:], float(w[0]))


def _columns(
    rows: list[tuple[Any, ...]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[Any], np.ndarray]:
    """(ids, flagged, queue_rank, rank, decisions, features) of `label_score_rows` tuples."""
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    flagged = np.array([bool(r[1]) for r in rows], dtype=bool)
    queue = np.array([r[2] for r in rows], dtype=np.int64)
    rank = np.array([r[3] for r in rows], dtype=np.int64)
    decisions = [r[4] for r in rows]
    feats = np.array(
        [[np.nan if v is None else float(v) for v in r[5:]] for r in rows], dtype=float
    )
    return ids, flagged, queue, rank, decisions, feats.reshape(len(rows), len(FEATURES))


def _undecided(session: Session, audit_id: int) -> tuple[np.ndarray, ...]:
    """The undecided label findings as arrays, converted a fetch at a time (a million findings
    are never a million Python tuples at once)."""
    parts = []
    rows = workload_store.label_score_rows(session, audit_id, FEATURES, decided=False)
    while chunk := list(islice(rows, workload_store.ROWS_PER_FETCH)):
        ids, flagged, queue, rank, _, feats = _columns(chunk)
        parts.append((ids, flagged, queue, rank, feats))
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.astype(bool), empty, empty, np.zeros((0, len(FEATURES)))
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(5))


def new_queue_ranks(
    ids: np.ndarray, flagged: np.ndarray, queue: np.ndarray, rank: np.ndarray, score: np.ndarray
) -> list[tuple[int, int]]:
    """(finding id, queue_rank) for the findings whose place changes: within each group
    (flagged, ranked only), the findings by descending `score` (ties by rank, then id) take the
    group's own queue slots in order."""
    changed: list[tuple[int, int]] = []
    for group in (True, False):
        members = np.flatnonzero(flagged == group)
        if not len(members):
            continue
        order = members[np.lexsort((ids[members], rank[members], -score[members]))]
        slots = np.sort(queue[members])
        moved = queue[order] != slots
        changed.extend(zip(ids[order][moved].tolist(), slots[moved].tolist(), strict=True))
    return changed


def _too_few(n: int, positives: int, policy: RerankPolicy) -> str | None:
    negatives = n - positives
    if n >= policy.min_decisions and min(positives, negatives) >= policy.min_each:
        return None
    return (
        f"{n} decided (need {policy.min_decisions}), {positives} confirmed or relabelled and "
        f"{negatives} dismissed (need {policy.min_each} of each)"
    )


def rerank(
    session: Session, audit_id: int, policy: RerankPolicy = DEFAULT_POLICY
) -> dict[str, Any]:
    """Fit the calibration on the audit's decided label findings, re-rank the undecided ones and
    record it in the summary (`rerank`); return that record. With too few decisions, or an audit
    that is not a finished label check, an `AuditorError` in one line and nothing is stored."""
    audit = audit_store.get_audit(session, audit_id)
    if audit.kind != "label-check" or audit.status != "succeeded":
        raise AuditorError(
            f"audit {audit_id} is a {audit.status} {audit.kind} audit; only a succeeded label check's queue is re-ranked"
        )
    decided = list(workload_store.label_score_rows(session, audit_id, FEATURES, decided=True))
    _, _, _, _, decisions, x = _columns(decided)
    y = np.array([d in POSITIVE for d in decisions], dtype=float)
    short = _too_few(len(y), int(y.sum()), policy)
    if short is not None:
        raise AuditorError(f"too few decisions to re-rank audit {audit_id}: {short}")
    ids, flagged, queue, rank, feats = _undecided(session, audit_id)
    model = fit_calibration(x, y, FEATURES, policy.l2, population=np.vstack([x, feats]))
    keep = [FEATURES.index(f) for f in model.features]
    score = model.probability(feats[:, keep]) if len(ids) else np.zeros(0)
    changed = new_queue_ranks(ids, flagged, queue, rank, score)
    workload_store.set_queue_ranks(session, changed)
    record = _record(model, len(y), int(y.sum()), len(ids), len(changed))
    audit_store.merge_audit_summary(session, audit_id, "rerank", record)
    return record


def _record(
    model: Calibration, n: int, positives: int, undecided: int, moved: int
) -> dict[str, Any]:
    coefficients = {f: round(float(c), 4) for f, c in zip(model.features, model.coef, strict=True)}
    strongest = sorted(coefficients.items(), key=lambda kv: -abs(kv[1]))[:2]
    told = (
        ", ".join(f"{name} {value:+.2f}" for name, value in strongest) or "no score column varies"
    )
    return {
        "at": utcnow().isoformat(),
        "decisions": n,
        "positives": positives,
        "features": list(model.features),
        "coefficients": {**coefficients, "intercept": round(model.intercept, 4)},
        "undecided": undecided,
        "moved": moved,
        "reason": (
            f"{n} decisions ({positives} flags right, {n - positives} dismissed) fitted a calibration "
            f"of the score columns (strongest: {told}); the {undecided} undecided findings were "
            f"re-ordered by its probability that the flag is right, {moved} changed place"
        ),
    }


def maybe_rerank(
    session: Session, audit_id: int, policy: RerankPolicy = DEFAULT_POLICY
) -> dict[str, Any] | None:
    """Re-rank when it is due (called after each decision): the first time once the minimum of
    decisions is met, then each time `policy.every` more decisions stand than at the last one.
    Returns the new `rerank` record, or None when nothing was done."""
    audit = audit_store.get_audit(session, audit_id)
    if audit.kind != "label-check" or audit.status != "succeeded":
        return None
    n = workload_store.decision_count(session, audit_id)
    last = ((audit.summary or {}).get("rerank") or {}).get("decisions")
    due = n >= policy.min_decisions if last is None else n - int(last) >= policy.every
    if not due:
        return None
    try:
        return rerank(session, audit_id, policy)
    except AuditorError:
        return None  # not enough of one outcome yet: try again after the next decision
