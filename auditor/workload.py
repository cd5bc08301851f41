"""How far the review of an audit has got, how precise its queue has been, and how long is left.

One function, `review_progress`, that the CLI (`audit status`, `audit list`), the API
(`/api/audits/{id}/progress`) and the pages call, so they all show the same numbers.

Definitions (the issue's review semantics): a flagged finding is *reviewed* when its example
has a standing decision (`reviews`, keyed by data set and example, whichever audit prompted it);
confirm and relabel say the flag was right, dismiss that it was wrong, so the precision so far is
(confirmed + relabelled) / reviewed, with a 95% Wilson score interval (it stays inside [0, 1] and
is honest for a handful of decisions, where the normal approximation is not). The pace is the
median of the seconds between consecutive decisions made from this audit's findings: a median,
because a lunch break is one long gap that a mean would spread over every decision.
"""

from __future__ import annotations

import io
import math
from collections import defaultdict
from statistics import median
from typing import Any

from sqlalchemy.orm import Session

from auditor.findings_view import audit_context
from auditor.store import workload as workload_store
from auditor.store.models import DECISIONS, Audit

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of a binomial proportion; None when n is 0."""
    if n <= 0:
        return None
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _precision(counts: dict[str, int]) -> dict[str, Any]:
    reviewed = sum(counts.get(d, 0) for d in DECISIONS)
    right = counts.get("confirmed", 0) + counts.get("relabelled", 0)
    interval = wilson_interval(right, reviewed)
    return {
        "precision": right / reviewed if reviewed else None,
        "low": interval[0] if interval else None,
        "high": interval[1] if interval else None,
    }


def review_pace(session: Session, audit_id: int) -> float | None:
    """Median seconds between consecutive decisions made from the audit's findings (None with
    fewer than two)."""
    times = workload_store.decision_times(session, audit_id)
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]
    return float(median(gaps)) if gaps else None


def review_progress(session: Session, audit_id: int) -> dict[str, Any]:
    """The audit's review workload as numbers (JSON-ready): flagged / reviewed / left, decisions
    by outcome, the precision so far with its interval, the same per (given -> suggested) class
    pair, decisions on ranked-only findings apart, the pace and the hours left."""
    ctx = audit_context(session, audit_id)
    pairs: dict[tuple[int | None, int | None], dict[str, int]] = defaultdict(
        lambda: defaultdict(int)
    )
    for given, suggested, n in workload_store.flagged_pair_counts(session, audit_id):
        pairs[(given, suggested)]["flagged"] += n
    flagged_decisions: dict[str, int] = defaultdict(int)
    ranked_only: dict[str, int] = defaultdict(int)
    for flagged, given, suggested, decision, n in workload_store.decided_pair_counts(
        session, audit_id
    ):
        if flagged:
            pairs[(given, suggested)][decision] += n
            flagged_decisions[decision] += n
        else:
            ranked_only[decision] += n
    flagged_total = sum(p["flagged"] for p in pairs.values())
    reviewed = sum(flagged_decisions.values())
    left = flagged_total - reviewed
    pace = review_pace(session, audit_id)
    pair_docs = []
    for (given, suggested), counts in pairs.items():
        done = sum(counts.get(d, 0) for d in DECISIONS)
        pair_docs.append({
            "given": given,
            "given_name": ctx.class_name(given),
            "suggested": suggested,
            "suggested_name": ctx.class_name(suggested),
            "flagged": counts.get("flagged", 0),
            "reviewed": done,
            **{d: counts.get(d, 0) for d in DECISIONS},
            **_precision(counts),
        })  # fmt: skip
    pair_docs.sort(key=lambda p: (-p["flagged"], -p["reviewed"], p["given"] is None, p["given"] or 0,
                                  p["suggested"] is None, p["suggested"] or 0))  # fmt: skip
    return {
        "flagged": flagged_total,
        "reviewed": reviewed,
        "left": left,
        **{d: flagged_decisions.get(d, 0) for d in DECISIONS},
        **_precision(flagged_decisions),
        "interval": 0.95,
        "pairs": pair_docs,
        "ranked_only": {
            "reviewed": sum(ranked_only.values()),
            **{d: ranked_only.get(d, 0) for d in DECISIONS},
        },
        "seconds_per_decision": pace,
        "hours_left": left * pace / 3600 if pace is not None else None,
    }


def review_counts(session: Session, audit_id: int) -> dict[str, int]:
    """Flagged, reviewed and left only, cheap enough for every row of a list of audits."""
    flagged, reviewed = workload_store.flagged_counts(session, audit_id)
    return {"flagged": flagged, "reviewed": reviewed, "left": flagged - reviewed}


def audit_review(session: Session, audit: Audit, *, full: bool = True) -> dict[str, Any] | None:
    """`review_progress` (or, not `full`, `review_counts`) of a label check that has findings
    to review (succeeded, or running with some stored); None for the other kinds."""
    if audit.kind != "label-check" or audit.status not in ("succeeded", "running"):
        return None
    return review_progress(session, audit.id) if full else review_counts(session, audit.id)


def progress_line(p: dict[str, Any]) -> str:
    """One line a person reads: "review: 120 of 200 flagged reviewed, 80 left; precision so far
    0.91 (0.85-0.95); about 1.3 h left at 24 s per decision"."""
    line = f"review: {p['reviewed']} of {p['flagged']} flagged reviewed, {p['left']} left"
    if p["precision"] is not None:
        line += f"; precision so far {p['precision']:.2f} ({p['low']:.2f}\u2013{p['high']:.2f})"
    if p["hours_left"] is not None:
        line += f"; about {p['hours_left']:.1f} h left at {p['seconds_per_decision']:.0f} s per decision"
    other = p["ranked_only"]["reviewed"]
    if other:
        line += f" ({other} decision{'s' if other != 1 else ''} on ranked-only findings)"
    return line


def precision_curve(session: Session, audit_id: int) -> list[dict[str, float]]:
    """Precision so far after each standing decision on a flagged finding, in the order they
    were made: [{"reviewed": k, "precision", "low", "high"}, ...]."""
    right, curve = 0, []
    for k, decision in enumerate(workload_store.flagged_decisions_in_order(session, audit_id), 1):
        right += decision != "dismissed"
        low, high = wilson_interval(right, k) or (0.0, 1.0)
        curve.append({"reviewed": k, "precision": right / k, "low": low, "high": high})
    return curve


def progress_png(session: Session, audit_id: int) -> bytes:
    """A small picture for the audit page: precision so far by decision count (with its 95%
    band) and how much of the flagged set is reviewed. Drawn without pyplot's global state, so
    two requests can draw at once."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    progress = review_progress(session, audit_id)
    curve = precision_curve(session, audit_id)
    fig = Figure(figsize=(6.4, 2.6), dpi=100)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1.2]})
    if curve:
        k = [c["reviewed"] for c in curve]
        left.fill_between(
            k, [c["low"] for c in curve], [c["high"] for c in curve], color="#cde", lw=0
        )
        left.plot(k, [c["precision"] for c in curve], color="#2a6", lw=1.6)
    else:
        left.text(0.5, 0.5, "no decisions yet", ha="center", va="center", transform=left.transAxes)
    left.set_ylim(0, 1.02)
    left.set_xlabel("flagged findings reviewed")
    left.set_ylabel("precision so far")
    right.barh([0], [progress["reviewed"]], color="#2a6")
    right.barh([0], [progress["left"]], left=[progress["reviewed"]], color="#ddd")
    right.set_yticks([])
    right.set_xlabel(f"{progress['reviewed']} of {progress['flagged']} reviewed")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
