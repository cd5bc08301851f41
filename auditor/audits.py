"""Creating audits: the library behind `audit run|enqueue` and schedules.

Creating an audit re-reads the dataset's source first and records a new snapshot when the
content changed, so an audit always names the exact data it ran on. Sending it to a worker is
the front door's business (`workers.dispatch`); running it here is `auditor.runner`'s.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from auditor.analyses.registry import check_request
from auditor.data.base import Examples, check_test_set
from auditor.datasets import snapshotted
from auditor.errors import DataError
from auditor.progress import eta_from_phase
from auditor.records import finite_json
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
        return
    if len(test) == 0:
        raise DataError(f"test set {test_name!r} has no examples")
    check_test_set(train, test)  # what the analysis would refuse when it runs
    rows = getattr(settings, "test_indices", None) or []
    bad = [i for i in rows if not 0 <= int(i) < len(test)]
    if bad:
        raise DataError(f"test index {bad[0]} is outside the test set's rows 0..{len(test) - 1}")


def create_audit(
    sessions: sessionmaker[Session],
    kind: str,
    dataset_name: str,
    params: dict[str, Any],
    test_name: str | None = None,
    schedule_id: int | None = None,
    *,
    local: bool = False,
) -> int:
    """Check the request, scan the dataset (and test set) and create a queued audit; returns its id.

    An unknown kind, a missing test set or a bad setting is refused before anything is read or
    stored; so is a model factory that is not registered, unless the audit runs here (`local`:
    `audit run`), where an explicit MODULE:FACTORY is the caller's own code.
    """
    spec = check_request(kind, params, test_name, local=local)
    settings = spec.parse(params)

    def check(train: Examples, test: Examples | None) -> None:
        check_examples(dataset_name, train, test_name, test, settings)
        model = getattr(settings, "model", None)
        if local and model is not None:  # the run is here and now: build the model first
            from auditor.analyses.common import build_module
            from auditor.factories import local_models

            with local_models():
                build_module(train, model)

    with snapshotted(sessions, dataset_name, test_name, check=check) as snap:
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
