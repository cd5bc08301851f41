"""A label check's estimate of its wrong labels and its flagged findings, through the store, the
shards and the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from auditor.audits import create_audit
from auditor.config import get_settings
from auditor.data.base import Examples
from auditor.data.bundled import digits, flip_labels, write_npz
from auditor.runner import execute_audit
from auditor.shards import run_all_shards_here
from auditor.store import audits as audit_store
from auditor.store import datasets as dataset_store
from auditor.store import findings as finding_store
from tests.helpers import cli

N = 300
ESTIMATE_KEYS = {"count", "low", "high", "interval", "method", "flagged", "pairs", "evaluated_rows"}


def planted(tmp_path: Path, n: int = N, fraction: float = 0.1) -> tuple[Path, np.ndarray]:
    d = digits()
    small = Examples(d.x[:n], d.y[:n], d.keys[:n], is_image=True)
    noisy, flipped = flip_labels(small, fraction, seed=0) if fraction else (small, np.zeros(0, int))
    return write_npz(noisy, tmp_path / "d.npz"), flipped


def _register(sessions, path: Path) -> None:
    with sessions() as s, s.begin():
        dataset_store.create_dataset(s, "d", str(path), "npz", {})


def _label_findings(sessions, audit_id: int) -> list:
    with sessions() as s:
        return finding_store.list_findings(s, audit_id, kind="label")


def test_clean_examples_get_no_suggestion(tmp_path, sqlite_url) -> None:
    from auditor.store import open_store

    path, _ = planted(tmp_path, n=200, fraction=0.0)
    sessions = open_store(sqlite_url)
    _register(sessions, path)
    audit_id = create_audit(sessions, "label-check", "d", {"model": {"name": "logreg"}}, settings=get_settings())
    assert execute_audit(sessions, audit_id, settings=get_settings()).status == "succeeded"
    findings = _label_findings(sessions, audit_id)
    agrees = [f for f in findings if int(np.argmax(f.payload["loo_probs"])) == f.label]
    assert len(agrees) >= 0.9 * len(findings)  # clean, well separated: the left-out model agrees
    assert all(f.payload["suggested_label"] is None for f in agrees)
    for f in findings:  # a suggestion exactly where the left-out model prefers another label
        assert (f.payload["suggested_label"] is not None) == (f.payload["loo_margin"] > 0)
        assert not f.flagged or f.payload["suggested_label"] is not None


def test_the_flagged_findings_are_the_estimate_in_rank_order(tmp_path, sqlite_url) -> None:
    from auditor.store import open_store

    path, flipped = planted(tmp_path)
    sessions = open_store(sqlite_url)
    _register(sessions, path)
    audit_id = create_audit(sessions, "label-check", "d", {"model": {"name": "logreg"}}, settings=get_settings())
    assert execute_audit(sessions, audit_id, settings=get_settings()).status == "succeeded"
    with sessions() as s:
        estimate = audit_store.get_audit(s, audit_id).summary["estimate"]
    findings = _label_findings(sessions, audit_id)
    flagged = [f for f in findings if f.flagged]
    assert set(estimate) == ESTIMATE_KEYS and estimate["evaluated_rows"] == N
    assert estimate["low"] <= estimate["count"] <= estimate["high"]
    assert (
        len(flagged)
        == estimate["flagged"]
        == min(estimate["count"], sum(f.payload["suggested_label"] is not None for f in findings))
    )
    # in rank order: no finding with a suggestion is skipped between flagged ones
    last = max(f.rank for f in flagged)
    assert [f.rank for f in flagged] == [
        f.rank for f in findings if f.rank <= last and f.payload["suggested_label"] is not None
    ]
    # the estimate is about right, and most of the workload are planted flips
    assert abs(estimate["count"] - len(flipped)) <= 0.3 * len(flipped)
    assert len({f.example_index for f in flagged} & set(flipped.tolist())) >= 0.7 * len(flagged)


def test_a_sharded_run_estimates_and_flags_as_one_run(tmp_path, sessions) -> None:
    path, _ = planted(tmp_path)
    _register(sessions, path)
    params: dict[str, Any] = {
        "model": {"name": "logreg"},
        "solver": {"name": "direct"},
        "why_top": 0,
    }
    single = create_audit(sessions, "label-check", "d", params, settings=get_settings())
    assert execute_audit(sessions, single, settings=get_settings()).status == "succeeded"
    sharded = create_audit(sessions, "label-check", "d", {**params, "shards": 3}, settings=get_settings())
    assert run_all_shards_here(sessions, sharded, settings=get_settings()).status == "succeeded"
    with sessions() as s:
        a = audit_store.get_audit(s, single).summary["estimate"]
        b = audit_store.get_audit(s, sharded).summary["estimate"]
    assert a == b and a["count"] > 0

    def flags(audit_id: int) -> list[tuple[str, int]]:
        return [(f.example_key, f.rank) for f in _label_findings(sessions, audit_id) if f.flagged]

    assert flags(sharded) == flags(single) and len(flags(single)) == a["flagged"]


def test_set_flagged_makes_exactly_those_findings_the_workload(tmp_path, sessions) -> None:
    path, _ = planted(tmp_path, n=60)
    _register(sessions, path)
    audit_id = create_audit(
        sessions, "label-check", "d", {"model": {"name": "logreg"}, "why_top": 0}, settings=get_settings()
    )
    assert execute_audit(sessions, audit_id, settings=get_settings()).status == "succeeded"
    keys = [f.example_key for f in _label_findings(sessions, audit_id)]
    with sessions() as s, s.begin():
        assert finding_store.set_flagged(s, audit_id, keys[5:8]) == 3
    with sessions() as s:
        assert [
            f.example_key for f in finding_store.list_findings(s, audit_id, flagged=True)
        ] == keys[5:8]
        page = finding_store.query_findings(s, audit_id, flagged=True, limit=None)
        assert page.total == 3 and [f.example_key for f, _ in page.rows] == keys[5:8]
        assert finding_store.query_findings(s, audit_id, flagged=False, limit=None).total == 57


@pytest.fixture
def cli_audit(tmp_path: Path) -> dict[str, Any]:
    path, _ = planted(tmp_path)
    cli("dataset", "add", "small", str(path))
    return cli("audit", "run", "label-check", "small", "--json")


def test_findings_list_flagged_lists_exactly_the_flagged_ones(cli_audit: dict[str, Any]) -> None:
    audit_id = str(cli_audit["id"])
    everything = cli("findings", "list", audit_id, "--top", "1000", "--json")
    flagged = cli("findings", "list", audit_id, "--flagged", "--top", "1000", "--json")
    assert all(isinstance(d["flagged"], bool) for d in everything)
    assert [d["id"] for d in flagged] == [d["id"] for d in everything if d["flagged"]]
    assert len(flagged) == cli_audit["summary"]["estimate"]["flagged"] > 0


def test_audit_status_shows_the_estimate(cli_audit: dict[str, Any]) -> None:
    audit_id = str(cli_audit["id"])
    estimate = cli_audit["summary"]["estimate"]
    assert set(estimate) == ESTIMATE_KEYS
    assert cli("audit", "status", audit_id, "--json")["summary"]["estimate"] == estimate
    text = cli("audit", "status", audit_id)
    assert f"estimated {estimate['count']:,} ({estimate['low']:,}–{estimate['high']:,}" in text
    assert f"{estimate['flagged']:,} flagged" in text
    assert all(isinstance(r["flagged"], bool) for r in cli_audit["top"])
