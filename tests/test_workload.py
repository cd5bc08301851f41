"""Review progress and measured precision (`auditor.workload.review_progress`) equal a direct
count from the review history, on SQLite and PostgreSQL.

Decisions go through the store's `decide` / `undo` (changes, undos, relabels, decisions on
ranked-only findings and decisions made from another audit of the same data set), then the
numbers are recomputed by brute force from `list_review_events` with `standing_decision`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from statistics import median

import numpy as np
import pytest
from factories import make_audit, make_dataset

from auditor.records import FindingRecord
from auditor.store import findings as finding_store
from auditor.store import reviews as review_store
from auditor.workload import progress_line, review_progress, wilson_interval

N, FLAGGED, STEP = 60, 36, 30.0


def label_findings(n: int = N, flagged: int = FLAGGED) -> list[FindingRecord]:
    """Label findings over 3 classes; the first `flagged` are the workload; a few suggest
    nothing (the left-out model agrees with the given label)."""
    return [
        FindingRecord(
            example_index=i,
            example_key=f"k{i:06d}",
            kind="label",
            score=float(n - i),
            rank=i + 1,
            label=i % 3,
            payload={"suggested_label": None if i % 7 == 6 else (i + 1 + i // 9 % 2) % 3},
            flagged=i < flagged,
        )  # fmt: skip
        for i in range(n)
    ]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[datetime]:
    """Decisions are stamped STEP seconds apart (the store's clock, not a mock of the database)."""
    now = [datetime(2025, 1, 1, tzinfo=timezone.utc)]

    def tick() -> datetime:
        now[0] += timedelta(seconds=STEP)
        return now[0]

    monkeypatch.setattr(review_store, "utcnow", tick)
    return now


def brute_force(s, audit_id: int, dataset_id: int) -> dict:
    events = review_store.list_review_events(s, dataset_id)
    by_key = defaultdict(list)
    for e in events:
        by_key[e.example_key].append(e)
    standing = {
        k: d.decision for k, evs in by_key.items() if (d := review_store.standing_decision(evs))
    }
    label = finding_store.list_findings(s, audit_id, kind="label")
    flagged = [f for f in label if f.flagged]
    outcome = Counter(standing[f.example_key] for f in flagged if f.example_key in standing)
    ranked_only = Counter(
        standing[f.example_key] for f in label if not f.flagged and f.example_key in standing
    )
    pairs: dict = defaultdict(Counter)
    for f in flagged:
        key = (f.label, f.payload.get("suggested_label"))
        pairs[key]["flagged"] += 1
        if f.example_key in standing:
            pairs[key][standing[f.example_key]] += 1
    times = sorted(
        e.created_at for e in events if e.audit_id == audit_id and e.decision != "undone"
    )
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]
    return {"flagged": len(flagged), "outcome": outcome, "ranked_only": ranked_only, "pairs": pairs,
            "pace": median(gaps) if gaps else None}  # fmt: skip


def decide_a_mix(s, audit_id: int, other_audit_id: int) -> None:
    """A history with everything a count can get wrong: changed decisions, undos back to
    nothing and back to an earlier decision, relabels, ranked-only decisions, and a decision
    made from another audit of the same data set."""
    ids = {f.example_key: f.id for f in finding_store.list_findings(s, audit_id)}
    other = {f.example_key: f.id for f in finding_store.list_findings(s, other_audit_id)}
    rng = np.random.default_rng(3)
    for i in range(24):  # flagged, decided once
        f = ids[f"k{i:06d}"]
        choice = rng.choice(["confirmed", "relabelled", "dismissed"], p=[0.5, 0.25, 0.25])
        review_store.decide(s, f, str(choice), 2 if choice == "relabelled" else None, "ana")
    review_store.undo(s, ids["k000003"], "ana")  # back to nothing: not reviewed any more
    r = review_store.get_review(s, make_dataset_id(s, audit_id), "k000004")
    review_store.decide(s, ids["k000004"], "relabelled", 1, "bo", expected_version=r.version)
    r = review_store.get_review(s, make_dataset_id(s, audit_id), "k000005")
    review_store.decide(s, ids["k000005"], "dismissed", None, "bo", expected_version=r.version)
    review_store.undo(s, ids["k000005"], "bo")  # back to the first decision
    review_store.decide(s, other["k000030"], "confirmed", None, "cy")  # flagged here, decided there
    for i in (40, 41, 42):  # ranked only
        review_store.decide(
            s, ids[f"k{i:06d}"], "dismissed" if i != 41 else "confirmed", None, "ana"
        )
    s.flush()


def make_dataset_id(s, audit_id: int) -> int:
    from auditor.store import audits as audit_store

    return audit_store.get_audit(s, audit_id).dataset_id


def test_progress_and_precision_equal_a_direct_count_from_the_review_events(
    sessions, clock
) -> None:
    with sessions() as s, s.begin():
        ds = make_dataset(s, "ds", n=N)
        audit, other = make_audit(s, ds), make_audit(s, ds)
        finding_store.upsert_findings(s, audit.id, label_findings())
        finding_store.upsert_findings(s, other.id, label_findings(flagged=0))
        decide_a_mix(s, audit.id, other.id)
    with sessions() as s:
        got = review_progress(s, audit.id)
        want = brute_force(s, audit.id, ds.id)

    outcome = want["outcome"]
    reviewed = sum(outcome.values())
    assert reviewed == 24  # 24 decided, one undone to nothing, one decided from the other audit
    assert (got["flagged"], got["reviewed"], got["left"]) == (FLAGGED, reviewed, FLAGGED - reviewed)
    assert {d: got[d] for d in ("confirmed", "relabelled", "dismissed")} == {
        d: outcome.get(d, 0) for d in ("confirmed", "relabelled", "dismissed")
    }
    right = outcome["confirmed"] + outcome["relabelled"]
    assert got["precision"] == pytest.approx(right / reviewed)
    assert (got["low"], got["high"]) == pytest.approx(wilson_interval(right, reviewed))
    assert got["low"] < got["precision"] < got["high"]
    assert got["ranked_only"] == {"reviewed": 3, "confirmed": 1, "relabelled": 0, "dismissed": 2}

    pairs = {(p["given"], p["suggested"]): p for p in got["pairs"]}
    assert set(pairs) == set(want["pairs"])
    for key, counts in want["pairs"].items():
        p = pairs[key]
        done = sum(counts[d] for d in ("confirmed", "relabelled", "dismissed"))
        assert (p["flagged"], p["reviewed"]) == (counts["flagged"], done), key
        assert p["dismissed"] == counts["dismissed"], key
        expected = (counts["confirmed"] + counts["relabelled"]) / done if done else None
        assert p["precision"] == (pytest.approx(expected) if done else None), key
        assert p["given_name"] == str(key[0])  # the data set names no classes: indices as text
    assert sum(p["flagged"] for p in got["pairs"]) == FLAGGED

    assert got["seconds_per_decision"] == pytest.approx(want["pace"]) == pytest.approx(STEP)
    assert got["hours_left"] == pytest.approx((FLAGGED - reviewed) * STEP / 3600)
    line = progress_line(got)
    assert line.startswith(
        f"review: {reviewed} of {FLAGGED} flagged reviewed, {FLAGGED - reviewed} left"
    )
    assert "precision so far" in line and "s per decision" in line


def test_nothing_reviewed_has_no_precision_and_no_pace(sessions) -> None:
    with sessions() as s, s.begin():
        ds = make_dataset(s, "ds", n=N)
        audit = make_audit(s, ds)
        finding_store.upsert_findings(s, audit.id, label_findings())
        got = review_progress(s, audit.id)
    assert (got["flagged"], got["reviewed"], got["left"]) == (FLAGGED, 0, FLAGGED)
    assert got["precision"] is None and got["low"] is None and got["hours_left"] is None
    assert progress_line(got) == f"review: 0 of {FLAGGED} flagged reviewed, {FLAGGED} left"


def test_the_wilson_interval_matches_its_formula_at_known_points() -> None:
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == pytest.approx(1.0)
    assert wilson_interval(0, 0) is None
