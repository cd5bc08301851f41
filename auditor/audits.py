"""Creating audits: the one way in behind `audit run|enqueue`, the demo and scheduled scans.

`create_audit` is the only caller of `store.audits.create_audit`, so every audit, however it was asked
for, gets the same checks (the request, then the data: `check_examples`) and the same recorded
damping (`auditor.dampings`). It re-reads the dataset's source first and records a new snapshot
when the content changed, so an audit always names the exact data it ran on. Whether an audit is
sharded is `is_sharded`'s to say, for the dispatcher and for `run_here` alike. Sending it to a
worker is the front door's business (`workers.dispatch`); running it is `auditor.runner`'s (and
`auditor.shards`' for a sharded one).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from auditor import runner
from auditor.analyses.registry import check_request, get_kind
from auditor.config import Settings
from auditor.dampings import apply_recorded
from auditor.data.base import Examples, check_test_set
from auditor.data.options import DataOptions
from auditor.datasets import Snapshotted, snapshotted
from auditor.errors import DataError
from auditor.progress import Progress, eta_from_phase
from auditor.records import finite_json
from auditor.runner import RunOutcome
from auditor.store import audits as audit_store
from auditor.store.models import Audit, utcnow

MAX_SHARDS = 256  # more messages than any deployment has workers only costs (issue 16)


def check_examples(
    name: str, train: Examples, test_name: str | None, test: Examples | None, settings: Any
) -> None:
    """Refuse, with one line, data an audit cannot use: too few examples or classes, a test set
    that does not fit the training set, settings beyond the data (shards, test rows)."""
    n = len(train)
    if n < 2:
        raise DataError(f"dataset {name!r} has {n} example{'s' * (n != 1)}; an audit needs at least 2")
    classes = np.unique(np.asarray(train.y))
    if len(classes) < 2:
        raise DataError(
            f"dataset {name!r} has one class (label {int(classes[0])}); influence on a classifier needs "
            "at least two classes"
        )
    shards = getattr(settings, "shards", 1) or 1
    if shards > min(n, MAX_SHARDS):
        raise DataError(
            f"--shards {shards} is more than the {min(n, MAX_SHARDS)} allowed here (at most one shard "
            f"per example and {MAX_SHARDS} in all); dataset {name!r} has {n} examples"
        )
    if test is None:
        if getattr(settings, "rank_by", None) == "value":  # evaluated on held-out rows instead
            from auditor.analyses.fix_value import check_value_ranking

            check_value_ranking(name, n)
        return
    if len(test) == 0:
        raise DataError(f"test set {test_name!r} has no examples")
    check_test_set(train, test)  # what the analysis would refuse when it runs
    rows = getattr(settings, "test_indices", None) or []
    bad = [i for i in rows if not 0 <= int(i) < len(test)]
    if bad:
        raise DataError(f"test index {bad[0]} is outside the test set's rows 0..{len(test) - 1}")


# Told the damping record an audit was given (`auditor.dampings.lookup`'s dict): the CLI says so
# on stderr, a schedule logs it.
DampingNotice = Callable[[dict[str, Any]], None]


def create_audit(
    sessions: sessionmaker[Session],
    kind: str,
    dataset_name: str,
    params: dict[str, Any],
    test_name: str | None = None,
    schedule_id: int | None = None,
    *,
    settings: Settings,
    local: bool = False,
    snapshot: Snapshotted | None = None,
    on_damping: DampingNotice | None = None,
    check_data: Callable[[Examples, Examples | None], None] | None = None,
) -> int:
    """Check the request, scan the dataset (and test set), check the data and create a queued
    audit; returns its id.

    An unknown kind, a missing test set or a bad setting is refused before anything is read or
    stored; so is a model factory that is not registered, unless the audit runs here (`local`:
    `audit run`), where an explicit MODULE:FACTORY is the caller's own code. With no damping in
    `params`, the one `validate --sweep-damping` recorded for this model and data set is used,
    and `on_damping` is told once the audit exists. `params` itself is left as it was.
    `check_data` is the caller's own refusal of the data as read now (a verification: not
    changed since).

    `snapshot`: a caller that already re-read the data in `datasets.snapshotted` (a schedule,
    which first decides whether anything changed) passes it; the audit is then created in that
    transaction, after the same checks, and a refusal rolls the whole transaction back.
    `settings` say which factories are registered, where dampings are recorded and how the data
    set is read.
    """
    from auditor.factories import listed_factories

    with listed_factories(settings.model_factories):
        audit_id, chosen = _create_audit(
            sessions, kind, dataset_name, params, test_name, schedule_id, local, snapshot,
            home=settings.home, data=DataOptions.from_settings(settings), check_data=check_data,
        )  # fmt: skip
    if chosen is not None and on_damping is not None:  # said once the audit exists, not before a refusal
        on_damping(chosen)
    return audit_id


def _create_audit(
    sessions: sessionmaker[Session],
    kind: str,
    dataset_name: str,
    params: dict[str, Any],
    test_name: str | None,
    schedule_id: int | None,
    local: bool,
    snapshot: Snapshotted | None,
    *,
    home: Path,
    data: DataOptions,
    check_data: Callable[[Examples, Examples | None], None] | None = None,
) -> tuple[int, dict[str, Any] | None]:
    spec = check_request(kind, params, test_name, local=local)
    params = copy.deepcopy(params)
    chosen = apply_recorded(dataset_name, params, home=home)
    settings = spec.parse(params)

    def check(train: Examples, test: Examples | None) -> None:
        check_examples(dataset_name, train, test_name, test, settings)
        if check_data is not None:
            check_data(train, test)
        model = getattr(settings, "model", None)
        if local and model is not None:  # the run is here and now: build the model first
            from auditor.analyses.fitting import build_module
            from auditor.factories import local_models

            with local_models():
                build_module(train, model)

    if snapshot is not None:
        check(snapshot.examples, snapshot.test_examples)
        audit_id = _add_audit(snapshot, kind, params, schedule_id)
    else:
        with snapshotted(sessions, dataset_name, test_name, check=check, data=data) as snap:
            audit_id = _add_audit(snap, kind, params, schedule_id)
    return audit_id, chosen


def _add_audit(
    snap: Snapshotted, kind: str, params: dict[str, Any], schedule_id: int | None
) -> int:
    audit = audit_store.create_audit(
        snap.session,
        kind,
        snap.dataset,
        snapshot=snap.snapshot,
        params=params,
        test_dataset=snap.test,
        schedule_id=schedule_id,
    )
    snap.session.flush()
    return audit.id


def is_sharded(kind: str, params: Mapping[str, Any]) -> bool:
    """Whether an audit of `kind` with these params runs as shards (one fit, N scoring tasks)
    rather than as one task: the dispatcher's choice of task and `run_here`'s both come from here."""
    return get_kind(kind).shard_count(params) > 1


def run_here(
    sessions: sessionmaker[Session],
    audit_id: int,
    *,
    settings: Settings,
    echo: Progress | None = None,
    local: bool = False,
) -> RunOutcome:
    """Run a created audit in this process to a final state: one shard after another when it is
    sharded (`auditor.shards`), else the runner's one lifecycle (`echo` gets its progress)."""
    with sessions() as s:
        audit = audit_store.get_audit(s, audit_id)
        sharded = is_sharded(audit.kind, audit.params or {})
    if sharded:
        from auditor.shards import run_all_shards_here

        return run_all_shards_here(sessions, audit_id, settings=settings)
    return runner.execute_audit(sessions, audit_id, echo=echo, local=local, settings=settings)


def run_in_process(settings: Settings) -> runner.AuditStarter:
    """The embedded default's `runner.AuditStarter` (schedules with no broker): a starter that
    runs each audit here and now, with `settings`."""

    def start(sessions: sessionmaker[Session], audit_id: int) -> tuple[str, str]:
        return "ran", run_here(sessions, audit_id, settings=settings).status

    return start


def cancel_audit(
    sessions: sessionmaker[Session], audit_id: int, *, lease_seconds: float
) -> dict[str, Any]:
    """Cancel a queued audit at once, ask a running one to stop at its next progress report, and
    cancel at once a running one whose heartbeat is older than the lease (nobody runs it any
    more). Returns {"id", "status", "cancel_requested"}."""
    stale_before = utcnow() - timedelta(seconds=lease_seconds)
    with sessions() as s, s.begin():
        a = audit_store.request_cancel(s, audit_id, stale_before=stale_before)
        return {"id": a.id, "status": a.status, "cancel_requested": a.cancel_requested}


def audit_doc(a: Audit, *, summary: bool = True) -> dict[str, Any]:
    """An audit as `audit status/list --json` and the web API show it; without `summary` (long
    JSON) and params, for lists."""
    doc = {
        "id": a.id,
        "kind": a.kind,
        "dataset": a.dataset.name,
        "test_dataset": a.test_dataset.name if a.test_dataset else None,
        "snapshot_id": a.snapshot_id,
        "status": a.status,
        "progress": round(a.progress, 4),
        "message": a.message,
        "error": a.error,
        "task_id": a.task_id,
        "created_at": a.created_at.isoformat() if a.created_at else None,
        "started_at": a.started_at.isoformat() if a.started_at else None,
        "finished_at": a.finished_at.isoformat() if a.finished_at else None,
        **_timing(a),
    }
    if summary:
        doc.update(params=a.params, summary=finite_json(a.summary))
    return doc


def _timing(a: Audit) -> dict[str, Any]:
    """Seconds since a running audit started and an estimate of the seconds left at the current
    phase's own rate (`auditor.progress.eta_from_phase`, from the phase the runner keeps in the
    running audit's summary); an audit that recorded no phase falls back to elapsed x fraction
    to do / fraction done. The message says the current step's examples/s."""
    if a.status != "running" or a.started_at is None:
        return {"elapsed_seconds": None, "eta_seconds": None}
    elapsed = max((utcnow() - a.started_at).total_seconds(), 0.0)
    p = a.progress or 0.0
    phase = (a.summary or {}).get("phase") if isinstance(a.summary, dict) else None
    if isinstance(phase, dict) and "fraction" in phase and "started_at" in phase:
        eta = eta_from_phase(p, float(phase["fraction"]), time.time() - float(phase["started_at"]))
    else:
        eta = elapsed * (1 - p) / p if 0.01 < p < 1 else None
    return {"elapsed_seconds": round(elapsed, 1), "eta_seconds": None if eta is None else round(eta, 1)}
