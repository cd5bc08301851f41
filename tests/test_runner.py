"""`execute_audit` when deliveries repeat, overlap or get interrupted (a stand-in analysis, so
each test takes well under a second), on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from factories import make_records
from sqlalchemy.orm import Session, sessionmaker

from auditor import runner
from auditor.analyses import fitting
from auditor.analyses.base import AnalysisInput, AnalysisResult
from auditor.audits import create_audit
from auditor.config import get_settings
from auditor.data.base import Examples
from auditor.data.bundled import digits, write_npz
from auditor.errors import Cancelled
from auditor.runner import execute_audit
from auditor.store import audits as audit_store
from auditor.store import datasets as dataset_store
from auditor.store import findings as finding_store

N = 30


@pytest.fixture
def audit_id(sessions: sessionmaker[Session], tmp_path: Path) -> int:
    d = digits()
    path = write_npz(Examples(d.x[:N], d.y[:N], d.keys[:N], is_image=True), tmp_path / "d.npz")
    with sessions() as s, s.begin():
        dataset_store.create_dataset(s, "d", str(path), "npz", {})
    return create_audit(sessions, "label-check", "d", {}, settings=get_settings())


def stand_in(monkeypatch: pytest.MonkeyPatch, during: Callable[[], None] = lambda: None) -> None:
    """Replace the analysis: report progress, call `during`, report again, return N findings."""

    def analysis(inp: AnalysisInput) -> AnalysisResult:
        inp.progress(0.1, "working")
        during()
        inp.progress(1.0, "done")  # 1.0 always reaches the store (no rate limit)
        return AnalysisResult(make_records(N), {"n": N})

    monkeypatch.setattr(runner, "get_analysis", lambda kind: analysis)


def read(sessions: sessionmaker[Session], audit_id: int):
    with sessions() as s:
        return audit_store.get_audit(s, audit_id), finding_store.count_findings(s, audit_id)


def test_a_second_delivery_of_a_finished_audit_changes_nothing(
    sessions, audit_id, monkeypatch
) -> None:
    stand_in(monkeypatch)
    first = execute_audit(sessions, audit_id, settings=get_settings(), task_id="t1")
    assert (first.status, first.findings) == ("succeeded", N)
    done, _ = read(sessions, audit_id)
    stand_in(monkeypatch, during=lambda: pytest.fail("the analysis must not run again"))
    again = execute_audit(sessions, audit_id, settings=get_settings(), task_id="t1")
    assert (again.status, again.findings) == ("succeeded", N)
    after, count = read(sessions, audit_id)
    assert (after.finished_at, after.task_id, count) == (done.finished_at, "t1", N)


def test_an_overlapping_delivery_stops_when_the_other_one_finishes(
    sessions, audit_id, monkeypatch
) -> None:
    def other_delivery_finishes() -> None:
        with sessions() as s, s.begin():
            finding_store.upsert_findings(s, audit_id, make_records(N, score_offset=100.0))
            audit_store.set_audit_status(s, audit_id, "succeeded", message="by the other delivery")

    stand_in(monkeypatch, during=other_delivery_finishes)
    outcome = execute_audit(sessions, audit_id, settings=get_settings(), task_id="t1")
    assert outcome.status == "succeeded"
    audit, count = read(sessions, audit_id)
    assert (audit.status, audit.message, audit.progress, count) == (
        "succeeded", "by the other delivery", 1.0, N,
    )  # fmt: skip
    with sessions() as s:  # the other delivery's findings, not overwritten by this one's
        assert min(f.score for f in finding_store.list_findings(s, audit_id)) > 100


def test_a_cancel_that_arrives_after_the_last_progress_report_still_wins(
    sessions, audit_id, monkeypatch
) -> None:
    def analysis(inp: AnalysisInput) -> AnalysisResult:
        with sessions() as s, s.begin():
            audit_store.request_cancel(s, audit_id)
        return AnalysisResult(make_records(N), {})

    monkeypatch.setattr(runner, "get_analysis", lambda kind: analysis)
    assert execute_audit(sessions, audit_id, settings=get_settings()).status == "cancelled"
    audit, count = read(sessions, audit_id)
    assert (audit.status, count) == ("cancelled", 0)


@pytest.mark.parametrize(
    ("task_id", "interruption", "status"),
    [(None, KeyboardInterrupt, "cancelled"), ("t1", SystemExit, "queued")],
)
def test_an_interrupted_run_leaves_a_truthful_status(
    sessions, audit_id, monkeypatch, task_id, interruption, status
) -> None:
    def interrupted() -> None:
        raise interruption()

    stand_in(monkeypatch, during=interrupted)
    with pytest.raises(interruption):
        execute_audit(sessions, audit_id, settings=get_settings(), task_id=task_id)
    audit, _ = read(sessions, audit_id)
    assert audit.status == status
    if status == "queued":  # the redelivered message then runs it from the start
        stand_in(monkeypatch)
        assert execute_audit(sessions, audit_id, settings=get_settings(), task_id=task_id).status == "succeeded"


def test_a_stop_signal_wrapped_by_python_is_still_an_interruption(
    sessions, audit_id, monkeypatch
) -> None:
    """Seen in CI: SIGINT reached a worker while torch imported a module whose dataclass
    `__set_name__` wrapped the handler's WorkerTerminate in a RuntimeError; the audit was marked
    failed ('internal error') and the worker never stopped. It must be queued again instead."""

    def import_interrupted() -> None:
        try:
            raise SystemExit(1)
        except SystemExit as stop:
            raise RuntimeError("Error calling __set_name__ on 'Field' instance") from stop

    stand_in(monkeypatch, during=import_interrupted)
    with pytest.raises(SystemExit):
        execute_audit(sessions, audit_id, settings=get_settings(), task_id="t1")
    audit, _ = read(sessions, audit_id)
    assert (audit.status, audit.error) == ("queued", None)


def test_a_failed_audit_with_a_cancel_request_is_not_run_again(
    sessions, audit_id, monkeypatch
) -> None:
    with sessions() as s, s.begin():
        audit_store.set_audit_status(s, audit_id, "running")
        audit_store.request_cancel(s, audit_id)
        audit_store.set_audit_status(s, audit_id, "failed", error="boom")
    stand_in(monkeypatch, during=lambda: pytest.fail("must not run"))
    outcome = execute_audit(sessions, audit_id, settings=get_settings(), task_id="t2")
    assert (outcome.status, outcome.error) == ("failed", "boom")


def test_a_cancel_stops_a_real_audit_during_training(sessions, audit_id, monkeypatch) -> None:
    """Training is the longest phase; it reports progress, so a cancel need not wait for the fit."""
    real_train = fitting.train
    seen: dict[str, bool] = {}

    def train_after_cancel(module, x, y, config, progress=None, **kw):
        with sessions() as s, s.begin():
            audit_store.request_cancel(s, audit_id)
        time.sleep(0.6)  # past StoreProgress's rate limit, so the next report reads the flag
        try:  # tol 0: without a cancel this fit would run all 500 steps
            return real_train(module, x, y, replace(config, tol=0.0, max_iter=500), progress=progress, **kw)
        except Cancelled:
            seen["stopped during training"] = True
            raise

    monkeypatch.setattr(fitting, "train", train_after_cancel)
    assert execute_audit(sessions, audit_id, settings=get_settings()).status == "cancelled"
    assert seen == {"stopped during training": True}
    audit, count = read(sessions, audit_id)
    assert (audit.status, count) == ("cancelled", 0)
