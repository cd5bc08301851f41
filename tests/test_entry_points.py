"""One way in for every rule: the doors that make or run audits meet in one service function.

`audit run`, `audit enqueue` and a schedule's scan create their audits through
`auditor.audits.create_audit` (the only caller of `audit_store.create_audit`, so the checks and the
recorded damping hold for all of them); the worker's task and `audit run` run them through
`runner.execute_audit`; `audit enqueue`'s dispatcher and `audit run` ask `audits.is_sharded`
whether an audit is sharded. Each claim is checked with a spy that wraps the real function, on a
real SQLite or PostgreSQL store, and for enqueue a real Redis (this module's own database number)
with no worker: the message is read back from its queue.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from auditor import audits, runner, schedules
from auditor.config import get_settings
from auditor.data.base import Examples
from auditor.data.bundled import write_npz
from auditor.store import audits as audit_store
from auditor.store import datasets as dataset_store
from tests.helpers import cli, digits

REDIS_URL = "redis://127.0.0.1:6379/8"  # this file's own database on the shared Redis
ROOT = Path(__file__).resolve().parents[1]


class Spy:
    """Wraps `module.name` (the real function still runs) and records each call's arguments."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> None:
        self.real: Callable[..., Any] = getattr(module, name)
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self.active = 0
        monkeypatch.setattr(module, name, self)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((args, kwargs))
        self.active += 1
        try:
            return self.real(*args, **kwargs)
        finally:
            self.active -= 1


@pytest.fixture
def store(
    db_url: str, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> sessionmaker[Session]:
    """The CLI's store is the migrated test database (SQLite, then PostgreSQL)."""
    monkeypatch.setenv("AUDITOR_DATABASE_URL", db_url)
    return sessions


@pytest.fixture
def creations(monkeypatch: pytest.MonkeyPatch) -> Spy:
    """A spy on `audits.create_audit`; every `audit_store.create_audit` must happen inside it."""
    spy = Spy(monkeypatch, audits, "create_audit")
    inside: list[bool] = []
    real_insert = audit_store.create_audit

    def insert(*args: Any, **kwargs: Any) -> Any:
        inside.append(spy.active > 0)
        return real_insert(*args, **kwargs)

    monkeypatch.setattr(audit_store, "create_audit", insert)
    spy.inserts = inside  # type: ignore[attr-defined]
    return spy


def _add_digits(tmp_path: Path, name: str = "d", n: int = 120) -> str:
    cli("dataset", "add", name, str(write_npz(digits(n), tmp_path / f"{name}.npz")))
    return name


def _queued_task_names(client: Any) -> list[str]:
    return [
        json.loads(raw)["headers"]["task"]
        for queue in (b"gpu", b"default")
        for raw in client.lrange(queue, 0, -1)
    ]


def test_audit_run_enqueue_and_a_scheduled_scan_all_create_through_create_audit(
    store: sessionmaker[Session],
    creations: Spy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    redis_db: Any,
) -> None:
    _add_digits(tmp_path)
    ran = cli("audit", "run", "label-check", "d", "--json")
    assert ran["status"] == "succeeded" and len(creations.calls) == 1

    cli("schedule", "add", "d", "label-check", "--every", "1h", "--due-now", "--no-skip-unchanged")
    (scheduled,) = schedules.tick(store, start=audits.run_in_process(get_settings()), settings=get_settings())
    assert len(creations.calls) == 2 and creations.calls[1][0][5] == 1  # the schedule's id

    monkeypatch.setenv("AUDITOR_BROKER_URL", REDIS_URL)
    queued = cli("audit", "enqueue", "label-check", "d", "--json")
    assert len(creations.calls) == 3 and _queued_task_names(redis_db) == ["auditor.run_audit"]

    assert creations.inserts == [True, True, True]  # type: ignore[attr-defined]
    with store() as s:
        made = {a.id: a.schedule_id for a in audit_store.list_audits(s)}
    assert made == {ran["id"]: None, scheduled: 1, queued["id"]: None}


def test_only_create_audit_calls_the_store_s_create_audit() -> None:
    """The source says the same as the spies: no other door writes an audit row."""
    callers = sorted(
        str(path.relative_to(ROOT))
        for top in ("auditor", "workers")
        for path in (ROOT / top).rglob("*.py")
        if re.search(r"\baudit_store\.create_audit\(", path.read_text())
    )
    assert callers == ["auditor/audits.py"]


def test_the_worker_task_and_audit_run_run_audits_through_execute_audit(
    store: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers.tasks import run_audit

    _add_digits(tmp_path)
    runs = Spy(monkeypatch, runner, "execute_audit")
    assert cli("audit", "run", "label-check", "d", "--json")["status"] == "succeeded"
    assert len(runs.calls) == 1 and runs.calls[0][1]["local"] is True

    audit_id = audits.create_audit(store, "label-check", "d", {}, settings=get_settings())
    result = run_audit.apply(args=[audit_id], task_id="task-1")  # the task, in this process
    assert result.get() == "succeeded"
    assert len(runs.calls) == 2 and runs.calls[1][0][1] == audit_id
    assert runs.calls[1][1]["task_id"] == "task-1"


def test_enqueue_s_dispatcher_and_audit_run_ask_is_sharded(
    store: sessionmaker[Session],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    redis_db: Any,
) -> None:
    _add_digits(tmp_path)
    sharding = Spy(monkeypatch, audits, "is_sharded")
    monkeypatch.setenv("AUDITOR_BROKER_URL", REDIS_URL)
    cli("audit", "enqueue", "label-check", "d", "--shards", "2", "--json")
    cli("audit", "enqueue", "label-check", "d", "--json")
    assert [kind for (kind, _), _ in sharding.calls] == ["label-check", "label-check"]
    assert _queued_task_names(redis_db) == ["auditor.run_audit", "auditor.run_sharded"]

    monkeypatch.delenv("AUDITOR_BROKER_URL")
    ran = cli("audit", "run", "label-check", "d", "--shards", "2", "--json")
    assert ran["status"] == "succeeded" and ran["summary"]["shards"] == 2
    assert len(sharding.calls) == 3 and sharding.calls[2][0][1]["shards"] == 2


def _one_class(tmp_path: Path) -> str:
    d = digits(60)
    keep = d.y == 3
    one = Examples(
        d.x[keep], d.y[keep], [k for k, m in zip(d.keys, keep, strict=True) if m], is_image=True
    )
    cli("dataset", "add", "threes", str(write_npz(one, tmp_path / "threes.npz")))
    return "threes"


def test_a_scheduled_audit_of_data_the_checks_refuse_fails_with_the_cli_s_one_line_reason(
    store: sessionmaker[Session], creations: Spy, tmp_path: Path
) -> None:
    name = _one_class(tmp_path)
    refused = cli("audit", "run", "label-check", name, ok=False)
    assert refused.exit_code != 0 and len(refused.stderr.strip().splitlines()) == 1
    reason = refused.stderr.strip().removeprefix("error: ")
    assert "one class" in reason

    cli("schedule", "add", name, "label-check", "--every", "1h", "--due-now")
    with store() as s:
        snapshots = len(dataset_store.list_snapshots(s, dataset_store.get_dataset(s, name).id))
    (outcome,) = schedules.run_due(store, start=audits.run_in_process(get_settings()), settings=get_settings())
    assert (outcome.action, outcome.reason, outcome.audit_id) == ("failed", reason, None)
    assert outcome.describe().endswith(f"failed: {reason}")
    assert len(creations.calls) == 2 and creations.inserts == []  # type: ignore[attr-defined]
    with store() as s:
        assert audit_store.list_audits(s) == []
        assert len(dataset_store.list_snapshots(s, dataset_store.get_dataset(s, name).id)) == snapshots

    cli("schedule", "add", name, "label-check", "--every", "2h", "--due-now")
    ticked = cli("schedule", "tick", ok=False)  # the CLI's tick says the same and exits 1
    assert ticked.exit_code == 1 and f"failed: {reason}" in " ".join(ticked.stdout.split())


def test_the_recorded_damping_is_applied_in_create_audit_and_said_by_each_door(
    store: sessionmaker[Session], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from auditor.analyses.settings import ModelSpec
    from auditor.dampings import record

    _add_digits(tmp_path)
    record("d", ModelSpec().to_dict(), damping=0.75, lds=0.9, solver="direct", home=get_settings().home)  # as validate would
    result = cli("audit", "run", "label-check", "d", "--json", ok=False)
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["params"]["solver"]["damping"] == 0.75
    assert doc["summary"]["curvature"]["damping"] == 0.75
    said = " ".join(result.stderr.split())  # rich wraps stderr at 80 columns when not a tty
    assert re.search(
        r"damping 0\.75: chosen by validate --sweep-damping on \S+ \(LDS 0\.900\); --damping overrides",
        said,
    )
    assert said.count("chosen by validate") == 1
    refused = cli("audit", "run", "label-check", "d", "--shards", "500", ok=False)  # too many
    assert refused.exit_code != 0 and len(refused.stderr.strip().splitlines()) == 1
    assert refused.stderr.startswith("error: --shards 500")  # the refusal only, no damping line

    params: dict[str, Any] = {"solver": {"name": "direct", "damping": None}}
    told: list[dict[str, Any]] = []
    audit_id = audits.create_audit(store, "label-check", "d", params, settings=get_settings(), on_damping=told.append)
    assert params["solver"]["damping"] is None and [t["damping"] for t in told] == [0.75]
    with store() as s:
        assert audit_store.get_audit(s, audit_id).params["solver"]["damping"] == 0.75

    cli("schedule", "add", "d", "label-check", "--every", "1h", "--due-now")
    with caplog.at_level(logging.INFO, logger="auditor.schedules"):
        (scheduled,) = schedules.tick(
            store, start=lambda sessions, audit_id: ("enqueued", "queued"), settings=get_settings()
        )
    assert "schedule 1: damping 0.75 chosen by validate --sweep-damping" in caplog.text
    with store() as s:
        assert audit_store.get_audit(s, scheduled).params["solver"]["damping"] == 0.75
    given = cli("audit", "run", "label-check", "d", "--damping", "0.25", "--json", ok=False)
    assert "chosen by validate" not in given.stderr
    assert json.loads(given.stdout)["summary"]["curvature"]["damping"] == 0.25


def test_is_sharded_follows_the_kind_s_declaration() -> None:
    assert audits.is_sharded("label-check", {"shards": 3})
    assert not audits.is_sharded("label-check", {"shards": 1})
    assert not audits.is_sharded("label-check", {})
    assert not audits.is_sharded("explain", {"test_indices": [0]})
