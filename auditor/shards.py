"""Split a label-check audit over several workers.

Self-influence is independent per example once the model and curvature are fixed, and training
is deterministic (seeded, full-batch L-BFGS on CPU), so shard i of k retrains the same model,
scores rows i, i+k, i+2k, ... and upserts their findings with provisional ranks. The shard that
brings the count of findings up to the snapshot's size re-ranks all of them by (score desc,
example_index) -- the order a single worker produces -- and marks the audit succeeded. No result
backend or chord is needed: the database is the rendezvous, and a redelivered shard only
upserts the same rows again.
"""

from __future__ import annotations

import logging
import traceback

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session, sessionmaker

from auditor.analyses.registry import get_analysis
from auditor.errors import AuditorError, Cancelled, Conflict
from auditor.runner import RunOutcome, StoreProgress, _finish, _load_inputs
from auditor.store import repo
from auditor.store.models import Finding

log = logging.getLogger(__name__)
SHARDABLE = {"label-check"}


def rerank(session: Session, audit_id: int) -> int:
    """Rewrite ranks 1..n by (score desc, example_index asc) within each finding kind."""
    rows = session.execute(
        select(Finding.id, Finding.kind).where(Finding.audit_id == audit_id).order_by(Finding.kind, Finding.score.desc(), Finding.example_index)
    ).all()
    ranks, counter = [], {}
    for fid, kind in rows:
        counter[kind] = counter.get(kind, 0) + 1
        ranks.append({"fid": fid, "new_rank": counter[kind]})
    if ranks:
        stmt = update(Finding).where(Finding.id == bindparam("fid")).values(rank=bindparam("new_rank"))
        session.connection().execute(stmt, ranks)
    return len(ranks)


def start_sharded(sessions: sessionmaker[Session], audit_id: int, task_id: str | None = None) -> int:
    """Mark the audit running and return the number of shards to send."""
    with sessions() as s, s.begin():
        audit = repo.get_audit(s, audit_id)
        if audit.kind not in SHARDABLE:
            raise AuditorError(f"{audit.kind} audits cannot be sharded; only {', '.join(SHARDABLE)}")
        count = int((audit.params or {}).get("shards", 1))
        if audit.status == "failed":
            repo.set_audit_status(s, audit_id, "queued")
        if audit.status in ("queued", "failed", "running"):
            repo.set_audit_status(s, audit_id, "running", message=f"0 of {count} shards done", task_id=task_id)
        return count


def run_shard(sessions: sessionmaker[Session], audit_id: int, index: int, count: int) -> RunOutcome:
    """Compute shard `index` of `count`; the shard completing the audit finalises it."""
    with sessions() as s:
        audit = repo.get_audit(s, audit_id)
        if audit.status != "running" or audit.cancel_requested:
            return RunOutcome(audit_id, audit.status)
        inp = _load_inputs(s, audit)
        n_total = audit.snapshot.n
    inp.params = {**inp.params, "shard": [index, count]}

    tracker = StoreProgress(sessions, audit_id)
    # shards run in parallel, so each reports its own fraction (capped below 1: only the
    # finalising shard completes the audit)
    inp.progress = lambda fraction, message: tracker(min(fraction, 0.99), f"shard {index + 1}/{count}: {message}")
    try:
        result = get_analysis(audit.kind)(inp)
        with sessions() as s, s.begin():
            repo.upsert_findings(s, audit_id, result.findings)
        with sessions() as s, s.begin():
            stored = repo.count_findings(s, audit_id)
            if stored < n_total:
                return RunOutcome(audit_id, "running", findings=stored)
            rerank(s, audit_id)
            summary = {**result.summary, "n": stored, "shards": count}
            summary.pop("train_disagreements", None)  # per-shard figure; not meaningful for the whole
            repo.set_audit_summary(s, audit_id, summary)
            try:
                repo.set_audit_status(s, audit_id, "succeeded", message=f"{stored} findings from {count} shards")
            except Conflict:
                pass  # another shard finalised at the same moment
        return RunOutcome(audit_id, "succeeded", findings=stored)
    except Cancelled as exc:
        return _finish(sessions, audit_id, "cancelled", str(exc))
    except AuditorError as exc:
        return _finish(sessions, audit_id, "failed", f"shard {index + 1}/{count}: {exc}")
    except Exception as exc:
        log.error("audit %s shard %s crashed:\n%s", audit_id, index, traceback.format_exc())
        return _finish(sessions, audit_id, "failed", f"internal error in shard {index + 1}/{count}: {type(exc).__name__}: {exc}")


def run_all_shards_here(sessions: sessionmaker[Session], audit_id: int) -> RunOutcome:
    """The embedded path: the same shard code, one after another in this process."""
    count = start_sharded(sessions, audit_id)
    outcome = RunOutcome(audit_id, "running")
    for i in range(count):
        outcome = run_shard(sessions, audit_id, i, count)
        if outcome.status in ("failed", "cancelled"):
            break
    return outcome
