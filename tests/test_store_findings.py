from __future__ import annotations

import numpy as np
import pytest
from factories import make_audit, make_dataset, make_records
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from auditor.analyses.base import FindingRecord
from auditor.errors import NotFound
from auditor.store import audits as audit_store
from auditor.store import findings as finding_store
from auditor.store.models import Finding


def test_upserting_the_same_findings_twice_keeps_one_row_each(
    sessions: sessionmaker[Session],
) -> None:
    with sessions() as s, s.begin():
        audit = make_audit(s, make_dataset(s))
    with sessions() as s, s.begin():
        assert finding_store.upsert_findings(s, audit.id, make_records(1000)) == 1000
    with sessions() as s, s.begin():
        assert finding_store.upsert_findings(s, audit.id, make_records(1000, score_offset=0.5)) == 1000
    with sessions() as s:
        assert finding_store.count_findings(s, audit.id) == 1000
        top = finding_store.list_findings(s, audit.id, top=1)[0]
        assert (top.rank, top.score, top.payload) == (0, 1000.5, {"p_given": 0.0})
        assert s.scalar(select(func.min(Finding.score))) == 1.5


def test_repeated_keys_in_one_call_collapse_to_the_last(sessions: sessionmaker[Session]) -> None:
    records = make_records(3) + [FindingRecord(0, "k000000", "label", 42.0, 0)]
    with sessions() as s, s.begin():
        audit = make_audit(s, make_dataset(s))
        assert finding_store.upsert_findings(s, audit.id, records) == 3
        assert finding_store.list_findings(s, audit.id)[0].score == 42.0


def test_numpy_values_are_stored_as_plain_json(sessions: sessionmaker[Session]) -> None:
    record = FindingRecord(
        np.int64(3),
        "k",
        "label",
        np.float32(0.25),
        np.int32(0),
        np.int64(2),  # type: ignore[arg-type]
        {"probs": np.array([0.5, 0.25], dtype=np.float32), "top": np.int64(1)},
    )
    with sessions() as s, s.begin():
        audit = make_audit(s, make_dataset(s))
        finding_store.upsert_findings(s, audit.id, [record])
    with sessions() as s:
        finding = finding_store.list_findings(s, audit.id)[0]
        assert (finding.example_index, finding.score, finding.label) == (3, 0.25, 2)
        assert finding.payload == {"probs": [0.5, 0.25], "top": 1}


def test_nan_scores_are_refused_and_nothing_of_the_batch_is_kept(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Findings are stored a chunk at a time; a bad one in a later chunk still leaves nothing,
    since the caller's transaction is rolled back."""
    monkeypatch.setattr(finding_store, "FINDING_CHUNK_ROWS", 2)
    with sessions() as s, s.begin():
        audit_id = make_audit(s, make_dataset(s)).id
    records = [*make_records(5), FindingRecord(9, "k", "label", float("nan"), 9)]
    with pytest.raises(ValueError, match="non-finite score"), sessions() as s, s.begin():
        finding_store.upsert_findings(s, audit_id, records)
    with sessions() as s:
        assert finding_store.count_findings(s, audit_id) == 0


def test_findings_are_stored_a_chunk_at_a_time_and_a_repeated_key_keeps_its_last_copy(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(finding_store, "FINDING_CHUNK_ROWS", 3)
    first, again = make_records(7), make_records(7)
    again[1] = FindingRecord(again[1].example_index, again[1].example_key, "label", 42.0, 99)
    consumed: list[int] = []

    def records():  # made on demand, read once
        for i, r in enumerate([*first, *again[:2]]):
            consumed.append(i)
            yield r

    with sessions() as s, s.begin():
        audit_id = make_audit(s, make_dataset(s)).id
        finding_store.upsert_findings(s, audit_id, records())
    assert consumed == list(range(9))
    with sessions() as s:
        stored = {f.example_key: (f.score, f.rank) for f in finding_store.list_findings(s, audit_id)}
    assert len(stored) == 7 and stored[again[1].example_key] == (42.0, 99)  # a later chunk's copy wins


def test_findings_list_by_rank_with_top_and_kind(sessions: sessionmaker[Session]) -> None:
    records = make_records(5, kind="harmful") + make_records(5, kind="helpful")
    with sessions() as s, s.begin():
        audit = make_audit(s, make_dataset(s))
        finding_store.upsert_findings(s, audit.id, records[::-1])
        helpful = finding_store.list_findings(s, audit.id, top=3, kind="helpful")
        assert [f.rank for f in helpful] == [0, 1, 2]
        assert {f.kind for f in helpful} == {"helpful"}
        assert finding_store.count_findings(s, audit.id, kind="harmful") == 5
        assert finding_store.get_finding(s, helpful[0].id).example_key == "k000000"
        with pytest.raises(NotFound):
            finding_store.get_finding(s, 10**9)


def test_deleting_an_audit_deletes_its_findings(sessions: sessionmaker[Session]) -> None:
    with sessions() as s, s.begin():
        audit = make_audit(s, make_dataset(s))
        finding_store.upsert_findings(s, audit.id, make_records(10))
    with sessions() as s, s.begin():
        s.delete(s.get(type(audit), audit.id))
    with sessions() as s:
        assert finding_store.count_findings(s, audit.id) == 0


def test_non_finite_payload_numbers_are_stored_as_null_and_scores_must_be_finite(sessions) -> None:
    import math

    from auditor.analyses.base import FindingRecord
    from auditor.store import findings as finding_store

    with sessions() as s, s.begin():
        audit = make_audit(s, make_dataset(s), status="running")
        rec = FindingRecord(0, "k0", "label", 1.0, 1, 0, {"margin": -math.inf, "p": math.nan, "ok": 0.5, "xs": [math.inf, 1.0]})
        finding_store.upsert_findings(s, audit.id, [rec])
        audit_store.set_audit_summary(s, audit.id, {"best": math.inf})
        audit_id = audit.id
    with sessions() as s:
        (f,) = finding_store.list_findings(s, audit_id)
        assert f.payload == {"margin": None, "p": None, "ok": 0.5, "xs": [None, 1.0]}
        assert audit_store.get_audit(s, audit_id).summary == {"best": None}
        with pytest.raises(ValueError, match="non-finite"):
            finding_store.upsert_findings(s, audit_id, [FindingRecord(1, "k1", "label", -math.inf, 2)])
