"""Decisions feed the queue (`auditor.rerank`): re-ranking moves only undecided findings among
their own slots, is reproducible, learns from the decisions on a case where a score column the
static ranking ignores predicts the truth, and refuses with too few decisions; on SQLite and
PostgreSQL."""

from __future__ import annotations

import numpy as np
import pytest
from factories import make_audit, make_dataset

from auditor.errors import AuditorError
from auditor.records import FindingRecord
from auditor.rerank import RerankPolicy, maybe_rerank, rerank
from auditor.store import audits as audit_store
from auditor.store import findings as finding_store
from auditor.store import reviews as review_store

N, FLAGGED = 300, 150


def constructed(
    n: int = N, flagged: int = FLAGGED, seed: int = 0
) -> tuple[list[FindingRecord], set[str]]:
    """Findings ranked by `margin`, which carries no signal about the truth here, while
    `loo_margin` (ignored by the static ranking) does; returns them and the wrong labels' keys."""
    rng = np.random.default_rng(seed)
    wrong = rng.random(n) < 0.4
    margin = np.sort(rng.normal(size=n))[::-1]  # rank order = margin order
    loo = np.where(wrong, 1.0, -1.0) + 0.6 * rng.normal(size=n)
    records = [
        FindingRecord(
            example_index=i,
            example_key=f"k{i:06d}",
            kind="label",
            score=float(margin[i]),
            rank=i + 1,
            label=i % 3,
            flagged=i < flagged,
            payload={
                "margin": float(margin[i]),
                "loo_margin": float(loo[i]),
                "self_influence": float(rng.random()),
                "loss": float(rng.random()),
                "prob_label": float(rng.random()),
                "loo_prob_label": None,
                "suggested_label": (i + 1) % 3,
            },
        )  # fmt: skip
        for i in range(n)
    ]
    return records, {f"k{i:06d}" for i in np.flatnonzero(wrong)}


def setup(sessions, audits: int = 1):
    records, wrong = constructed()
    with sessions() as s, s.begin():
        ds = make_dataset(s, "ds", n=N)
        ids = []
        for _ in range(audits):
            a = make_audit(s, ds)
            finding_store.upsert_findings(s, a.id, records)
            ids.append(a.id)
    return ids, wrong


def decide_in_queue_order(s, audit_id: int, wrong: set[str], count: int) -> None:
    """Simulated reviewers who answer with the truth, walking the queue."""
    for _ in range(count):
        f = review_store.next_unsettled_finding(s, audit_id=audit_id)
        review_store.decide(
            s, f.id, "confirmed" if f.example_key in wrong else "dismissed", None, "sim"
        )
        s.flush()


def queue(s, audit_id: int) -> dict[str, tuple[bool, int]]:
    return {
        f.example_key: (f.flagged, f.queue_rank) for f in finding_store.list_findings(s, audit_id)
    }


def next_page_precision(s, audit_id: int, wrong: set[str], size: int = 30) -> float:
    page = finding_store.query_findings(s, audit_id, decision="undecided", limit=size)
    return sum(f.example_key in wrong for f, _ in page.rows) / len(page.rows)


def test_reranking_never_moves_a_decided_finding_and_keeps_the_slots_and_the_flags(
    sessions,
) -> None:
    (audit_id,), wrong = setup(sessions)
    with sessions() as s, s.begin():
        decide_in_queue_order(s, audit_id, wrong, 40)
        review_store.decide(
            s, finding_store.list_findings(s, audit_id)[200].id, "dismissed", None, "sim"
        )
        decided = review_store.settled_keys(s, audit_store.get_audit(s, audit_id).dataset_id)
        before = queue(s, audit_id)
        record = rerank(s, audit_id)
    with sessions() as s:
        after = queue(s, audit_id)
    assert record["moved"] > 0 and record["decisions"] == 41
    assert {k: after[k] for k in decided} == {k: before[k] for k in decided}
    for group in (True, False):
        undecided = [k for k in before if k not in decided and before[k][0] is group]
        assert all(after[k][0] is group for k in undecided)
        assert sorted(after[k][1] for k in undecided) == sorted(before[k][1] for k in undecided)
    assert sorted(v[1] for v in after.values()) == sorted(v[1] for v in before.values())


def test_reranking_is_reproducible(sessions) -> None:
    (first, second), wrong = setup(sessions, audits=2)
    with sessions() as s, s.begin():
        decide_in_queue_order(
            s, first, wrong, 40
        )  # decisions are per data set: both audits see them
        a = rerank(s, first)
        b = rerank(s, second)
    with sessions() as s, s.begin():
        q1, q2 = queue(s, first), queue(s, second)
        again = rerank(s, first)
        assert queue(s, first) == q1 and again["moved"] == 0
    assert q1 == q2 and a["coefficients"] == b["coefficients"] and a["features"] == b["features"]


def test_decisions_raise_the_precision_of_the_next_page(sessions) -> None:
    (audit_id,), wrong = setup(sessions)
    with sessions() as s, s.begin():
        decide_in_queue_order(s, audit_id, wrong, 40)
        static = next_page_precision(s, audit_id, wrong)
        record = rerank(s, audit_id)
        reranked = next_page_precision(s, audit_id, wrong)
        nxt = review_store.next_unsettled_finding(s, audit_id=audit_id)
        first = finding_store.query_findings(s, audit_id, decision="undecided", limit=1).rows[0][0]
    assert reranked >= static + 0.3, (static, reranked)
    assert (
        "loo_margin" in record["features"] and "loo_prob_label" not in record["features"]
    )  # all null
    assert record["coefficients"]["loo_margin"] == max(record["coefficients"].values(), key=abs)
    assert nxt.id == first.id and nxt.flagged  # review next walks the re-ranked queue
    with sessions() as s:
        summary = audit_store.get_audit(s, audit_id).summary
    assert summary["rerank"]["reason"] == record["reason"] and "\n" not in record["reason"]
    assert (
        summary["rerank"]["positives"]
        == record["positives"]
        == sum(1 for k in wrong if k < "k000040")
    )


def test_too_few_decisions_are_refused_in_one_line_and_nothing_is_stored(sessions) -> None:
    (audit_id,), wrong = setup(sessions)
    with sessions() as s, s.begin():
        decide_in_queue_order(s, audit_id, wrong, 12)
    with sessions() as s, s.begin():
        before, summary = queue(s, audit_id), dict(audit_store.get_audit(s, audit_id).summary or {})
        with pytest.raises(AuditorError) as err:
            rerank(s, audit_id)
        assert maybe_rerank(s, audit_id) is None
    assert "too few decisions to re-rank" in str(err.value) and "\n" not in str(err.value)
    with sessions() as s:
        assert queue(s, audit_id) == before
        assert (audit_store.get_audit(s, audit_id).summary or {}) == summary


def test_maybe_rerank_runs_at_the_minimum_and_again_after_every_k_more(sessions) -> None:
    (audit_id,), wrong = setup(sessions)
    policy = RerankPolicy(min_decisions=20, min_each=5, every=10)
    with sessions() as s, s.begin():
        decide_in_queue_order(s, audit_id, wrong, 19)
        assert maybe_rerank(s, audit_id, policy) is None
        decide_in_queue_order(s, audit_id, wrong, 1)
        assert maybe_rerank(s, audit_id, policy)["decisions"] == 20
        decide_in_queue_order(s, audit_id, wrong, 9)
        assert maybe_rerank(s, audit_id, policy) is None
        decide_in_queue_order(s, audit_id, wrong, 1)
        assert maybe_rerank(s, audit_id, policy)["decisions"] == 30
        assert audit_store.get_audit(s, audit_id).summary["rerank"]["decisions"] == 30


def test_only_a_succeeded_label_check_is_reranked(sessions) -> None:
    records, _ = constructed()
    with sessions() as s, s.begin():
        a = make_audit(s, make_dataset(s, "ds", n=N), status="running")
        finding_store.upsert_findings(s, a.id, records)
        with pytest.raises(AuditorError, match="only a succeeded label check"):
            rerank(s, a.id)
        assert maybe_rerank(s, a.id) is None


def test_decisions_made_through_the_review_service_re_rank_the_queue_when_due(sessions) -> None:
    """The doors (CLI, API, pages) decide through `auditor.reviewing`, which re-ranks once the
    default minimum of decisions stands: no separate step for reviewers to remember."""
    from auditor import reviewing
    from auditor.rerank import DEFAULT_POLICY

    (audit_id,), wrong = setup(sessions)
    with sessions() as s, s.begin():
        for made in range(1, DEFAULT_POLICY.min_decisions + 1):
            f = review_store.next_unsettled_finding(s, audit_id=audit_id)
            decision = "confirmed" if f.example_key in wrong else "dismissed"
            reviewing.decide(s, f.id, decision, reviewer="sim")
            summary = audit_store.get_audit(s, audit_id).summary or {}
            if made < DEFAULT_POLICY.min_decisions:
                assert "rerank" not in summary
        assert summary["rerank"]["decisions"] == DEFAULT_POLICY.min_decisions
