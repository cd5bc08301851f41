"""How many labels are wrong: confident learning on the leave-one-out probabilities, with a
bootstrap interval, and which findings make up the review workload.

The label check already predicts, for every example, what the model trained *without* it would
say (theta + H^-1 g_i / n, no retraining): the out-of-sample probabilities cleanlab gets from
k-fold cross-validation. From those, the estimate follows Northcutt, Jiang & Chuang, "Confident
Learning: Estimating Uncertainty in Dataset Labels" (JAIR 2021):

- per-class threshold t_j = mean of p_j(x) over the examples labelled j (the model's own
  self-confidence in class j, so an under- or over-confident model moves its thresholds with it);
- confident joint C[i, j] = number of examples labelled i whose p_j(x) >= t_j (the largest such
  p_j where several pass); an example no class passes counts nowhere;
- calibrated to the given-label counts: row i of C scaled to sum to n_i (the examples that
  passed no threshold are distributed as those that did);
- estimated wrong labels = the off-diagonal sum of the calibrated joint, per (given, true) pair.

Why not a calibrated posterior (sum of 1 - p(given label | x) over rows)? It needs the
probabilities themselves to be calibrated, and a regularised model's are not: it spreads mass
over every class, so every clean example adds a little "expected error" and the sum runs high
(bench/review_workload.py measures both on 5,000 28x28 digits with 500 flips: the posterior sum
says 1,435 for the team CNN and 2,062 for logistic regression, the confident joint 479 and 624). Calibrating first needs held-out labels the label check does
not assume. Confident learning needs only that the model ranks classes well within each class,
which is what the ranking already relies on.

The first-order leave-one-out step is not always sound: for a team's network given as weights
(not at a minimum, damped EK-FAC curvature) it was measured to overshoot by far, turning most
correct labels into "wrong" ones. `choose_probabilities` checks it against what one removal can
do and reads the trained model's probabilities where it overshoots; the summary's `method` says
which were read and why.

The interval is a bootstrap over rows: resample rows with replacement, recompute thresholds,
joint and count, and take the 2.5% and 97.5% points. At most REPLICATES replicates on resamples
of at most SAMPLE_ROWS rows (m-out-of-n: each replicate's deviation from their mean, scaled by
n/m for the count and by sqrt(m/n) for the spread, since a count's spread grows as sqrt(n)), so a
million rows cost what 20,000 do. Seeded, so the same rows give the same interval. It covers the
sampling of the examples, not the model's own error (a model that has memorised its wrong labels
predicts them under leave-one-out too, and the estimate is then low).

The flagged set (the review workload) is the estimate's size taken from the audit's own
ranking: the first `count` findings in rank order among those whose leave-one-out model prefers
another label (only those have a suggestion to confirm). That keeps the workload in the order the
reviewer works through it and uses the ranking's strength (margin, best of auditor's scores)
rather than the joint's coarser membership; bench/review_workload.py reports the confident
joint's own off-diagonal members beside it.

Pure numpy, no I/O: the label check calls it on its arrays, the shard that completes a sharded
audit calls it on what the shards stored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

INTERVAL = 0.95
REPLICATES = 50  # bootstrap replicates at most
SAMPLE_ROWS = 20_000  # rows per bootstrap replicate at most (m-out-of-n above this)
SEED = 0
PROB_DECIMALS = 6  # probabilities as stored in a finding's payload and as the estimate reads them
METHOD = "confident-learning"


def stored_probs(probs: np.ndarray) -> np.ndarray:
    """Probabilities rounded as a finding's payload stores them (float64, PROB_DECIMALS), so an
    estimate computed in one run and one computed from the stored findings read the same numbers."""
    return np.round(np.asarray(probs, dtype=np.float64), PROB_DECIMALS)


@dataclass(frozen=True)
class NoiseEstimate:
    """The estimated number of wrong labels, its interval, and where they are."""

    count: int
    low: int
    high: int
    evaluated_rows: int
    pairs: list[dict[str, int]]  # {"given", "suggested", "count"}, largest first
    interval: float = INTERVAL
    method: str = METHOD
    confident_off_diagonal: np.ndarray = field(
        default_factory=lambda: np.zeros(0, bool), repr=False
    )  # per row: in the (uncalibrated) confident joint's off-diagonal

    def summary(self, flagged: int) -> dict:
        """The audit summary's `estimate` (the shared contract of issue 24)."""
        return {
            "count": self.count,
            "low": self.low,
            "high": self.high,
            "interval": self.interval,
            "method": self.method,
            "flagged": int(flagged),
            "pairs": self.pairs,
            "evaluated_rows": self.evaluated_rows,
        }


def per_class_thresholds(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """t_j = mean p_j(x) over the rows labelled j; +inf for a class no row is labelled with
    (nothing is confidently a class the data never shows)."""
    k = probs.shape[1]
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    sums = np.zeros(k)
    np.add.at(sums, labels, probs[np.arange(len(labels)), labels])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.inf)


def confident_classes(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Per row, the class it is confidently (the most probable of those at or above their
    threshold), or -1 where no class reaches its threshold."""
    passed = probs >= thresholds[None, :]
    masked = np.where(passed, probs, -np.inf)
    best = masked.argmax(1)
    return np.where(passed.any(1), best, -1)


def calibrated_joint(labels: np.ndarray, confident: np.ndarray, k: int) -> np.ndarray:
    """The confident joint C[given, confident class], each row scaled to the given-label count."""
    counted = confident >= 0
    joint = np.zeros((k, k))
    np.add.at(joint, (labels[counted], confident[counted]), 1.0)
    given = np.bincount(labels, minlength=k).astype(np.float64)
    row = joint.sum(1)
    scale = np.divide(given, row, out=np.zeros(k), where=row > 0)
    return joint * scale[:, None]


def _off_diagonal(joint: np.ndarray) -> float:
    return float(joint.sum() - np.trace(joint))


def _joint_of(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    confident = confident_classes(probs, per_class_thresholds(probs, labels))
    return calibrated_joint(labels, confident, probs.shape[1]), confident


def estimate_label_errors(
    probs: np.ndarray,
    labels: np.ndarray,
    *,
    seed: int = SEED,
    replicates: int = REPLICATES,
    sample_rows: int = SAMPLE_ROWS,
    interval: float = INTERVAL,
    method: str = METHOD,
) -> NoiseEstimate:
    """The number of wrong labels among `labels` given out-of-sample class probabilities
    `probs` (n, K), overall and per (given, suggested) pair, with a bootstrap interval."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if n == 0:
        return NoiseEstimate(0, 0, 0, 0, [], interval, method)
    joint, confident = _joint_of(probs, labels)
    point = _off_diagonal(joint)
    count = int(round(point))
    low = high = count
    if replicates > 0 and n > 1:
        rng = np.random.default_rng(seed)
        m = min(n, sample_rows)
        draws = np.empty(replicates)
        for b in range(replicates):
            rows = rng.integers(0, n, m)
            draws[b] = _off_diagonal(_joint_of(probs[rows], labels[rows])[0]) * n / m
        spread = (draws - draws.mean()) * math.sqrt(m / n)
        tail = (1.0 - interval) / 2
        low = int(math.floor(point + np.quantile(spread, tail)))
        high = int(math.ceil(point + np.quantile(spread, 1.0 - tail)))
    low, high = max(0, min(low, count)), min(n, max(high, count))
    pairs = [
        {"given": int(i), "suggested": int(j), "count": int(round(joint[i, j]))}
        for i, j in zip(*np.nonzero(joint), strict=True)
        if i != j and round(joint[i, j]) >= 1
    ]
    pairs.sort(key=lambda p: (-p["count"], p["given"], p["suggested"]))
    off = (confident >= 0) & (confident != labels)
    return NoiseEstimate(count, low, high, n, pairs, interval, method, off)


LOO_PLAUSIBLE_RATIO = (
    2.0  # leave-one-out disagreement beyond this multiple of the trained model's: step not trusted
)
MEMORISED_DISAGREEMENT = (
    0.005  # at or below, the trained model fits (almost) every label: only leave-one-out can tell
)


def disagreement(probs: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose most probable class is not the given label."""
    return float((np.asarray(probs).argmax(1) != labels).mean()) if len(labels) else 0.0


def choose_probabilities(
    trained: np.ndarray, loo: np.ndarray, labels: np.ndarray
) -> tuple[str, np.ndarray, str]:
    """Which probabilities the estimate reads: ("leave-one-out" | "trained", probs, reason).

    The leave-one-out ones, unless the first-order step plainly overshoots: removing one example
    of n moves the model by O(1/n), so the left-out model cannot disagree with many more given
    labels than the trained one does. Where it disagrees with more than LOO_PLAUSIBLE_RATIO times
    as many (measured: a team's CNN given as weights, not at a minimum, with EK-FAC's damping,
    64% against 14%; the built-in models 1.0-1.3x), the step is not trusted and the trained
    model's probabilities are read instead, which is fine for a model that leaves its wrong
    labels unfitted. A model that fits (almost) every label has memorised the wrong ones; only
    the leave-one-out probabilities carry a signal then, and they are always read.
    """
    d_train, d_loo = disagreement(trained, labels), disagreement(loo, labels)
    if d_train > MEMORISED_DISAGREEMENT and d_loo > LOO_PLAUSIBLE_RATIO * d_train:
        return (
            "trained",
            trained,
            (
                f"the leave-one-out step disagrees with {d_loo:.1%} of the given labels against the trained "
                f"model's {d_train:.1%}, more than removing one example can change; the trained model's "
                "probabilities are read"
            ),
        )
    return (
        "leave-one-out",
        loo,
        (
            f"the left-out model disagrees with {d_loo:.1%} of the given labels (the trained model with {d_train:.1%})"
        ),
    )


def posterior_expected_errors(probs: np.ndarray, labels: np.ndarray) -> float:
    """The alternative not taken: sum over rows of 1 - p(given label), the expected number of
    wrong labels if `probs` were calibrated (reported by the bench beside the estimate)."""
    probs = np.asarray(probs, dtype=np.float64)
    return float((1.0 - probs[np.arange(len(labels)), labels]).sum())


def flag_in_rank_order(order: np.ndarray, has_suggestion: np.ndarray, count: int) -> np.ndarray:
    """The review workload: positions from `order` (best-ranked first) that have a suggestion,
    the first `count` of them, in rank order."""
    ranked = np.asarray(order)
    candidates = ranked[np.asarray(has_suggestion, dtype=bool)[ranked]]
    return candidates[: max(count, 0)]


def estimate_from(trained: np.ndarray, loo: np.ndarray, labels: np.ndarray) -> NoiseEstimate:
    """The estimate as an audit makes it: from the probabilities `choose_probabilities` picks
    (both as stored, `stored_probs`), its `method` naming which and why."""
    source, probs, reason = choose_probabilities(trained, loo, labels)
    return estimate_label_errors(
        probs, labels, method=f"{METHOD} on the {source} probabilities ({reason})"
    )


def estimate_text(estimate: dict[str, Any]) -> str:
    """The summary's `estimate` in one line: "estimated 180 (160–205) wrong labels; 200 flagged"."""
    share = estimate["interval"]
    return (
        f"estimated {estimate['count']:,} ({estimate['low']:,}–{estimate['high']:,}, {share:.0%} interval) "
        f"wrong labels of {estimate['evaluated_rows']:,}; {estimate['flagged']:,} flagged"
    )
