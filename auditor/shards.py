"""Split an audit over several workers, for any kind that declares shard hooks (the label check).

The kind brings its own hooks (`auditor.analyses.sharding.ShardHooks`, found through
`get_kind(audit.kind).sharding()`): one fit shared by every shard, the scoring of one shard's
rows, and what the shard completing the audit adds for the global top. This module owns the
lifecycle: each shard upserts its findings with provisional ranks; the shard that brings the
count of findings up to the snapshot's size re-ranks all of them by (score desc, example_index)
-- the order a single worker produces -- calls the kind's finish, and marks the audit succeeded.
No result backend or chord is needed: the database is the rendezvous, and a redelivered shard
only upserts the same rows again.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from auditor.analyses.registry import AuditKind, get_kind
from auditor.analyses.sharding import ShardHooks
from auditor.artifacts import ArtifactStore, root
from auditor.config import Settings
from auditor.data.options import DataOptions
from auditor.errors import Conflict
from auditor.factories import listed_factories
from auditor.runner import RunOutcome, StoreProgress, guarded, load_inputs, poison_reason
from auditor.store import audits as audit_store
from auditor.store import findings as finding_store


def start_sharded(sessions: sessionmaker[Session], audit_id: int, task_id: str | None = None) -> int:
    """Mark the audit running and return the number of shards to send."""
    with sessions() as s, s.begin():
        audit = audit_store.get_audit(s, audit_id)
        kind = get_kind(audit.kind)
        kind.sharding()  # refuses a kind without shard hooks
        count = kind.shard_count(audit.params or {})
        if audit.status == "failed":
            audit_store.set_audit_status(s, audit_id, "queued")
        if audit.status in ("queued", "failed", "running"):
            audit_store.set_audit_status(s, audit_id, "running", message=f"0 of {count} shards done", task_id=task_id)
        return count


def fit_shared(
    sessions: sessionmaker[Session], audit_id: int, *, settings: Settings, in_worker: bool = True
) -> RunOutcome:
    """One fit for N shards: train the model and fit the curvature before the shards are sent,
    storing both as artifacts (`auditor.artifacts`), so every shard, on whichever worker, loads
    them instead of fitting its own (the kind's `fit_shared` hook). The audit stays running
    (status "running" returned) unless the fit fails or is cancelled; then the shards are not sent."""

    def compute() -> RunOutcome:
        with sessions() as s:
            audit = audit_store.get_audit(s, audit_id)
            inp, hooks = load_inputs(audit, DataOptions.from_settings(settings)), get_kind(audit.kind).sharding()
            inp.cache = ArtifactStore(sessions, audit.dataset_id, folder=root(settings))
        tracker = StoreProgress(sessions, audit_id)
        hooks.fit_shared(inp, lambda f, m: tracker(min(0.3 * f, 0.3), f"fit: {m}"))
        with sessions() as s, s.begin():
            status = audit_store.get_audit(s, audit_id).status
        return RunOutcome(audit_id, status)

    with listed_factories(settings.model_factories):
        return guarded(
            sessions, audit_id, compute, in_worker=in_worker, lease_seconds=settings.lease_seconds,
            part="fit", requeue=False,
        )  # fmt: skip


def run_shard(
    sessions: sessionmaker[Session],
    audit_id: int,
    index: int,
    count: int,
    *,
    settings: Settings,
    in_worker: bool = True,
) -> RunOutcome:
    """Compute shard `index` of `count`; the shard completing the audit finalises it.

    The lifecycle (cancel, failure, interruption) is the runner's; an interrupted shard in a
    worker leaves the audit running, since its message comes back and the other shards go on.
    """
    part = f"shard {index + 1}/{count}"

    def compute() -> RunOutcome:
        with sessions() as s, s.begin():
            audit = audit_store.get_audit(s, audit_id, for_update=True)
            if audit.status != "running" or audit.cancel_requested:
                return RunOutcome(audit_id, audit.status)
            # Every shard start counts: a shard that kills its worker each time is redelivered
            # by its own message, so the poison bound is per shard on average (the fan-out's
            # own start is the 1).
            audit.deliveries = (audit.deliveries or 0) + 1
            if audit.deliveries > settings.max_deliveries * count + 1:
                reason = poison_reason(audit)
                audit_store.set_audit_status(s, audit_id, "failed", error=f"{part}: {reason}", message="failed")
                return RunOutcome(audit_id, "failed", error=reason)
        with sessions() as s:
            audit = audit_store.get_audit(s, audit_id)
            inp = load_inputs(audit, DataOptions.from_settings(settings))
            n_total, kind = audit.snapshot.n, get_kind(audit.kind)
            # every shard trains the same model and fits the same curvature: the first to finish
            # stores them, shards that start later load them
            inp.cache = ArtifactStore(sessions, audit.dataset_id, folder=root(settings))
        hooks = kind.sharding()
        tracker = StoreProgress(sessions, audit_id)
        # shards run in parallel, so each reports its own fraction (capped below 1: only the
        # finalising shard completes the audit)
        inp.progress = lambda fraction, message: tracker(min(fraction, 0.99), f"{part}: {message}")
        result = hooks.score_shard(inp, index, count)
        with sessions() as s, s.begin():
            finding_store.upsert_findings(s, audit_id, result.findings)
        with sessions() as s, s.begin():
            stored = finding_store.count_findings(s, audit_id)
            if stored < n_total:
                return RunOutcome(audit_id, "running", findings=stored)
            finding_store.rerank(s, audit_id)
        # This shard completes the audit: the kind's finish for the audit's top findings (the
        # ranking is global only now), with the one stored fit, then the summary.
        finished = finish_top(sessions, audit_id, kind, inp, tracker)
        flagged = flag_over_all_rows(sessions, audit_id, hooks)
        with sessions() as s, s.begin():
            summary = hooks.merge_summary(result.summary, n=stored, shards=count, finished=finished)
            summary.update(flagged)
            audit_store.set_audit_summary(s, audit_id, summary)
            try:
                audit_store.set_audit_status(s, audit_id, "succeeded", message=f"{stored} findings from {count} shards")
            except Conflict:
                pass  # another shard finalised at the same moment
        return RunOutcome(audit_id, "succeeded", findings=stored)

    with listed_factories(settings.model_factories):
        return guarded(
            sessions, audit_id, compute, in_worker=in_worker, lease_seconds=settings.lease_seconds,
            part=part, requeue=False,
        )  # fmt: skip


def flag_over_all_rows(sessions: sessionmaker[Session], audit_id: int, hooks: ShardHooks) -> dict[str, Any]:
    """What needs every stored row (`ShardHooks.flag`: the label check's estimate of the wrong
    labels, which flags the review workload): read in example order, flagged, and the summary's
    additions returned ({} when the kind flags nothing or its rows cannot say)."""
    kind = hooks.flagged_kind()
    if not kind:
        return {}
    with sessions() as s:
        n = finding_store.count_findings(s, audit_id, kind=kind)
        out = hooks.flag(n, finding_store.rows_in_example_order(s, audit_id, kind)) if n else None
    if out is None:
        return {}
    keys, additions = out
    with sessions() as s, s.begin():
        finding_store.set_flagged(s, audit_id, keys, kind)
    return additions


def finish_top(sessions: sessionmaker[Session], audit_id: int, kind: AuditKind, inp, progress) -> int:
    """Add the kind's finish (`ShardHooks.finish`; the label check's "why" lists) to the
    payloads of the audit's top findings it names; returns how many got additions."""
    hooks = kind.sharding()
    finding_kind, top = hooks.finish_top(kind.parse(inp.params))
    if not top:
        return 0
    with sessions() as s:
        rows = [f.example_index for f in finding_store.list_findings(s, audit_id, top=top, kind=finding_kind)]
    progress(0.99, f"finishing the top {len(rows)} findings")
    added = hooks.finish(inp, rows)
    with sessions() as s, s.begin():
        for f in finding_store.list_findings(s, audit_id, top=top, kind=finding_kind):
            if f.example_index in added:
                f.payload = {**(f.payload or {}), **added[f.example_index]}
    return len(added)


def run_all_shards_here(sessions: sessionmaker[Session], audit_id: int, *, settings: Settings) -> RunOutcome:
    """The embedded path: the same shard code, one after another in this process."""
    count = start_sharded(sessions, audit_id)
    outcome = fit_shared(sessions, audit_id, settings=settings, in_worker=False)
    if outcome.status != "running":
        return outcome
    for i in range(count):
        outcome = run_shard(sessions, audit_id, i, count, settings=settings, in_worker=False)
        if outcome.status in ("failed", "cancelled"):
            break
    return outcome
