"""Sharding goes through the kind's hooks (`auditor.analyses.sharding.ShardHooks`): a kind
registered here, which `auditor.shards` has never heard of, is split, re-ranked and finished by
it; and the label check reaches the same code through its own hooks."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from auditor.analyses import label_check
from auditor.analyses.base import AnalysisInput, AnalysisResult, FindingRecord
from auditor.analyses.registry import KINDS, AuditKind, get_kind
from auditor.analyses.settings import POSITIVE_INT, Declared, setting
from auditor.analyses.sharding import ShardHooks
from auditor.audits import create_audit
from auditor.config import get_settings
from auditor.data.base import Examples
from auditor.data.bundled import digits, write_npz
from auditor.errors import AuditorError
from auditor.shards import run_all_shards_here
from auditor.store import audits as audit_store
from auditor.store import datasets as dataset_store
from auditor.store import findings as finding_store
from auditor.store import open_store


@dataclass
class SpySettings(Declared):
    shards: int = setting(1, "Shards", check=POSITIVE_INT)
    top: int = setting(3, "Findings to finish", check=POSITIVE_INT)


class SpyHooks(ShardHooks):
    """Scores row i as i % 7 (so the global order interleaves the shards) and records each call."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def fit_shared(self, inp, progress):
        self.calls.append(("fit_shared", inp.cache is not None))
        return {"shared": True}

    def score_shard(self, inp, index, count):
        self.calls.append(("score_shard", index, count))
        rows = [i for i in range(len(inp.train)) if i % count == index]
        findings = [
            FindingRecord(i, inp.train.keys[i], "spy", float(i % 7), rank=r + 1)
            for r, i in enumerate(rows)
        ]
        return AnalysisResult(findings, {"per_shard": index})

    def finish_top(self, settings):
        return "spy", settings.top

    def finish(self, inp, rows):
        self.calls.append(("finish", list(rows)))
        return {i: {"finished": True} for i in rows}

    def merge_summary(self, summary, *, n, shards, finished):
        self.calls.append(("merge_summary", n, shards, finished))
        return {
            **super().merge_summary(summary, n=n, shards=shards, finished=finished),
            "finished": finished,
        }


SPY = SpyHooks()


def _not_run(inp: AnalysisInput) -> AnalysisResult:
    raise AssertionError("a sharded audit scores through score_shard, not the kind's run")


def _sessions(tmp_path, url, n):
    ex = digits()
    path = write_npz(Examples(ex.x[:n], ex.y[:n], ex.keys[:n], is_image=True), tmp_path / "d.npz")
    sessions = open_store(url)
    with sessions() as s, s.begin():
        dataset_store.create_dataset(s, "d", str(path), "npz", {})
    return sessions


def test_a_kind_registered_with_hooks_is_sharded_without_shards_knowing_it(
    tmp_path, sqlite_url, monkeypatch
):
    SPY.calls.clear()
    kind = AuditKind(
        "spy",
        "A kind only this test knows.",
        SpySettings,
        f"{__name__}:_not_run",
        shard_hooks=f"{__name__}:SPY",
    )
    monkeypatch.setitem(KINDS, "spy", kind)
    sessions = _sessions(tmp_path, sqlite_url, n=20)
    audit_id = create_audit(sessions, "spy", "d", {"shards": 3}, settings=get_settings())
    assert run_all_shards_here(sessions, audit_id, settings=get_settings()).status == "succeeded"
    assert SPY.calls[0] == ("fit_shared", True)
    assert [c for c in SPY.calls if c[0] == "score_shard"] == [
        ("score_shard", i, 3) for i in range(3)
    ]
    with sessions() as s:
        audit = audit_store.get_audit(s, audit_id)
        found = finding_store.list_findings(s, audit_id)
        summary = audit.summary
    # re-ranked globally by (score desc, example_index), whatever shard each came from
    expected = sorted(range(20), key=lambda i: (-(i % 7), i))
    assert [f.example_index for f in found] == expected and [f.rank for f in found] == list(
        range(1, 21)
    )
    # the kind's finish got the global top three and its additions landed on exactly those
    assert ("finish", expected[:3]) in SPY.calls
    assert [bool(f.payload.get("finished")) for f in found] == [True] * 3 + [False] * 17
    assert SPY.calls[-1] == ("merge_summary", 20, 3, 3)
    assert summary["n"] == 20 and summary["shards"] == 3 and summary["finished"] == 3


def test_a_kind_without_hooks_is_refused_in_one_line() -> None:
    with pytest.raises(AuditorError, match="explain audits cannot be sharded; only label-check"):
        get_kind("explain").sharding()


def test_the_label_check_is_sharded_through_its_own_hooks(tmp_path, sqlite_url, monkeypatch):
    called: list[str] = []
    hooks = get_kind("label-check").sharding()
    assert isinstance(hooks, label_check.LabelCheckShards)
    for name in ("fit_shared", "score_shard", "finish_top", "finish", "merge_summary"):
        real = getattr(hooks, name)
        monkeypatch.setattr(
            hooks,
            name,
            lambda *a, _real=real, _name=name, **k: called.append(_name) or _real(*a, **k),
        )
    sessions = _sessions(tmp_path, sqlite_url, n=60)
    audit_id = create_audit(
        sessions,
        "label-check",
        "d",
        {"model": {"name": "logreg"}, "shards": 2, "why_top": 5},
        settings=get_settings(),
    )
    assert run_all_shards_here(sessions, audit_id, settings=get_settings()).status == "succeeded"
    assert called == [
        "fit_shared",
        "score_shard",
        "score_shard",
        "finish_top",
        "finish",
        "merge_summary",
    ]
    with sessions() as s:
        summary = audit_store.get_audit(s, audit_id).summary
        top = finding_store.list_findings(s, audit_id, top=6, kind="label")
    assert summary["why_top"] == 5 and "train_disagreements" not in summary
    assert [bool(f.payload.get("why")) for f in top] == [True] * 5 + [False]
