"""Creating audits: the library behind `audit run|enqueue` and schedules.

Creating an audit re-reads the dataset's source first and records a new snapshot when the
content changed, so an audit always names the exact data it ran on. Sending it to a worker is
the front door's business (`workers.dispatch`); running it here is `auditor.runner`'s.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from auditor.analyses.registry import check_request
from auditor.datasets import snapshotted
from auditor.store import repo


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
    check_request(kind, params, test_name, local=local)
    with snapshotted(sessions, dataset_name, test_name) as snap:
        audit = repo.create_audit(
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
