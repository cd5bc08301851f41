"""A label check split into shards gives exactly the findings of one worker."""

from __future__ import annotations

from auditor.audits import create_audit
from auditor.config import get_settings
from auditor.data.bundled import digits, write_npz
from auditor.runner import execute_audit
from auditor.shards import run_all_shards_here, run_shard, start_sharded
from auditor.store import audits as audit_store
from auditor.store import datasets as dataset_store
from auditor.store import findings as finding_store
from auditor.store import open_store


def _setup(tmp_path, url, n=150):
    ex = digits()
    from auditor.data.base import Examples

    small = Examples(ex.x[:n], ex.y[:n], ex.keys[:n], is_image=True)
    path = write_npz(small, tmp_path / "d.npz")
    sessions = open_store(url)
    with sessions() as s, s.begin():
        dataset_store.create_dataset(s, "d", str(path), "npz", {})
    return sessions


def _rows(sessions, audit_id):
    with sessions() as s:
        return [(f.example_key, f.rank, round(f.score, 9)) for f in finding_store.list_findings(s, audit_id)]


def test_sharded_label_check_matches_a_single_worker(tmp_path, sqlite_url):
    sessions = _setup(tmp_path, sqlite_url)
    params = {"model": {"name": "logreg"}, "solver": {"name": "direct"}}
    single = create_audit(sessions, "label-check", "d", params, settings=get_settings())
    assert execute_audit(sessions, single, settings=get_settings()).status == "succeeded"
    sharded = create_audit(sessions, "label-check", "d", {**params, "shards": 3}, settings=get_settings())
    outcome = run_all_shards_here(sessions, sharded, settings=get_settings())
    assert outcome.status == "succeeded"
    assert _rows(sessions, sharded) == _rows(sessions, single)


def test_shards_load_the_one_fit_instead_of_fitting_their_own(tmp_path, sqlite_url):
    sessions = _setup(tmp_path, sqlite_url)
    params = {"model": {"name": "logreg"}, "solver": {"name": "ekfac"}, "shards": 3, "why_top": 50}
    sharded = create_audit(sessions, "label-check", "d", params, settings=get_settings())
    assert run_all_shards_here(sessions, sharded, settings=get_settings()).status == "succeeded"
    with sessions() as s:
        summary = audit_store.get_audit(s, sharded).summary
    # the fit ran once before the shards; the shard that wrote the summary loaded it
    assert summary["curvature"]["reused"] is True and summary["training"]["reused"] is True
    single = create_audit(sessions, "label-check", "d", {k: v for k, v in params.items() if k != "shards"} | {"solver": {"name": "ekfac", "reuse": False}}, settings=get_settings())
    assert execute_audit(sessions, single, settings=get_settings()).status == "succeeded"
    assert _rows(sessions, sharded) == _rows(sessions, single)
    # the shard that completed the audit said why for the top examples, as one worker does
    with sessions() as s:
        a = finding_store.list_findings(s, sharded, top=60)
        b = finding_store.list_findings(s, single, top=60)
        assert audit_store.get_audit(s, sharded).summary["why_top"] == 50
    lists = lambda f: {k: [r["index"] for r in v] for k, v in (f.payload.get("why") or {}).items()}  # noqa: E731
    assert [lists(f) for f in a] == [lists(f) for f in b]
    assert all(lists(f) for f in a[:50]) and not any(lists(f) for f in a[50:])


def test_a_redelivered_shard_adds_no_duplicates(tmp_path, sqlite_url):
    sessions = _setup(tmp_path, sqlite_url, n=90)
    audit_id = create_audit(sessions, "label-check", "d", {"model": {"name": "logreg"}, "shards": 2}, settings=get_settings())
    count = start_sharded(sessions, audit_id)
    assert run_shard(sessions, audit_id, 0, count, settings=get_settings()).status == "running"
    assert run_shard(sessions, audit_id, 0, count, settings=get_settings()).status == "running"  # delivered twice
    assert run_shard(sessions, audit_id, 1, count, settings=get_settings()).status == "succeeded"
    rows = _rows(sessions, audit_id)
    assert len(rows) == 90 and len({k for k, _, _ in rows}) == 90
    assert sorted(r for _, r, _ in rows) == list(range(1, 91))


def test_a_shard_that_keeps_dying_fails_the_audit_after_the_bound(tmp_path, sqlite_url, monkeypatch):
    """Shard starts count towards the poison bound (AUDITOR_MAX_DELIVERIES per shard, on average):
    a shard redelivered after its worker died again and again ends the audit failed."""
    monkeypatch.setenv("AUDITOR_MAX_DELIVERIES", "2")
    sessions = _setup(tmp_path, sqlite_url, n=90)
    audit_id = create_audit(sessions, "label-check", "d", {"model": {"name": "logreg"}, "shards": 2}, settings=get_settings())
    count = start_sharded(sessions, audit_id)
    with sessions() as s, s.begin():  # 4 shard starts that died without a word
        audit_store.get_audit(s, audit_id).deliveries += 4
    outcome = run_shard(sessions, audit_id, 0, count, settings=get_settings())
    assert outcome.status == "failed" and "gave up after 6 starts" in outcome.error
    with sessions() as s:
        audit = audit_store.get_audit(s, audit_id)
        assert audit.status == "failed" and audit.error.startswith("shard 1/2: gave up")
