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

from sqlalchemy.orm import Session, sessionmaker

from auditor.analyses.registry import KINDS, get_kind
from auditor.artifacts import ArtifactStore
from auditor.config import get_settings
from auditor.errors import AuditorError, Conflict
from auditor.runner import RunOutcome, StoreProgress, guarded, load_inputs, poison_reason
from auditor.store import audits as audit_store
from auditor.store import findings as finding_store


def start_sharded(sessions: sessionmaker[Session], audit_id: int, task_id: str | None = None) -> int:
    """Mark the audit running and return the number of shards to send."""
    with sessions() as s, s.begin():
        audit = audit_store.get_audit(s, audit_id)
        kind = get_kind(audit.kind)
        if not kind.shardable:
            shardable = ", ".join(k.name for k in KINDS.values() if k.shardable)
            raise AuditorError(f"{audit.kind} audits cannot be sharded; only {shardable}")
        count = kind.shard_count(audit.params or {})
        if audit.status == "failed":
            audit_store.set_audit_status(s, audit_id, "queued")
        if audit.status in ("queued", "failed", "running"):
            audit_store.set_audit_status(s, audit_id, "running", message=f"0 of {count} shards done", task_id=task_id)
        return count


def fit_shared(sessions: sessionmaker[Session], audit_id: int, *, in_worker: bool = True) -> RunOutcome:
    """One fit for N shards: train the model and fit the curvature before the shards are sent,
    storing both as artifacts (`auditor.artifacts`), so every shard, on whichever worker, loads
    them instead of fitting its own. The audit stays running (status "running" returned) unless
    the fit fails or is cancelled; then the shards are not sent."""
    from auditor.analyses.label_check import fit_shared as fit

    def compute() -> RunOutcome:
        with sessions() as s:
            audit = audit_store.get_audit(s, audit_id)
            inp, dataset_id = load_inputs(audit), audit.dataset_id
        cfg = get_kind("label-check").parse(inp.params)
        tracker = StoreProgress(sessions, audit_id)
        fit(inp.train, cfg, ArtifactStore(sessions, dataset_id), lambda f, m: tracker(min(0.3 * f, 0.3), f"fit: {m}"))
        with sessions() as s, s.begin():
            status = audit_store.get_audit(s, audit_id).status
        return RunOutcome(audit_id, status)

    return guarded(sessions, audit_id, compute, in_worker=in_worker, part="fit", requeue=False)


def run_shard(
    sessions: sessionmaker[Session], audit_id: int, index: int, count: int, *, in_worker: bool = True
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
            if audit.deliveries > get_settings().max_deliveries * count + 1:
                reason = poison_reason(audit)
                audit_store.set_audit_status(s, audit_id, "failed", error=f"{part}: {reason}", message="failed")
                return RunOutcome(audit_id, "failed", error=reason)
        with sessions() as s:
            audit = audit_store.get_audit(s, audit_id)
            inp = load_inputs(audit)
            n_total, kind = audit.snapshot.n, get_kind(audit.kind)
            # every shard trains the same model and fits the same curvature: the first to finish
            # stores them, shards that start later load them
            inp.cache = ArtifactStore(sessions, audit.dataset_id)
        inp.params = {**inp.params, "shard": [index, count]}
        tracker = StoreProgress(sessions, audit_id)
        # shards run in parallel, so each reports its own fraction (capped below 1: only the
        # finalising shard completes the audit)
        inp.progress = lambda fraction, message: tracker(min(fraction, 0.99), f"{part}: {message}")
        result = kind.run(inp)
        with sessions() as s, s.begin():
            finding_store.upsert_findings(s, audit_id, result.findings)
        with sessions() as s, s.begin():
            stored = finding_store.count_findings(s, audit_id)
            if stored < n_total:
                return RunOutcome(audit_id, "running", findings=stored)
            finding_store.rerank(s, audit_id)
        # This shard completes the audit: say why for the audit's top examples (the ranking is
        # global only now), with the one stored model and curvature, then finish.
        why_count = explain_top(sessions, audit_id, inp, tracker)
        with sessions() as s, s.begin():
            summary = {**result.summary, "n": stored, "shards": count, "why_top": why_count}
            summary.pop("train_disagreements", None)  # per-shard figure; not meaningful for the whole
            audit_store.set_audit_summary(s, audit_id, summary)
            try:
                audit_store.set_audit_status(s, audit_id, "succeeded", message=f"{stored} findings from {count} shards")
            except Conflict:
                pass  # another shard finalised at the same moment
        return RunOutcome(audit_id, "succeeded", findings=stored)

    return guarded(sessions, audit_id, compute, in_worker=in_worker, part=part, requeue=False)


def explain_top(sessions: sessionmaker[Session], audit_id: int, inp, progress) -> int:
    """Add the "why" lists (label_check.explain_flagged) to the audit's top `why_top` label
    findings; returns how many got them."""
    from auditor.analyses.label_check import why_for_rows, why_payload

    cfg = get_kind("label-check").parse({k: v for k, v in inp.params.items() if k != "shard"})
    if not cfg.why_top:
        return 0
    with sessions() as s:
        top = finding_store.list_findings(s, audit_id, top=cfg.why_top, kind="label")
        rows = [f.example_index for f in top]
    progress(0.99, f"finding why the top {len(rows)} examples are flagged")
    why = why_for_rows(inp.train, cfg, rows, inp.cache)
    with sessions() as s, s.begin():
        for f in finding_store.list_findings(s, audit_id, top=cfg.why_top, kind="label"):
            if f.example_index in why:
                f.payload = {**(f.payload or {}), **why_payload(why[f.example_index])}
    return len(why)


def run_all_shards_here(sessions: sessionmaker[Session], audit_id: int) -> RunOutcome:
    """The embedded path: the same shard code, one after another in this process."""
    count = start_sharded(sessions, audit_id)
    outcome = fit_shared(sessions, audit_id, in_worker=False)
    if outcome.status != "running":
        return outcome
    for i in range(count):
        outcome = run_shard(sessions, audit_id, i, count, in_worker=False)
        if outcome.status in ("failed", "cancelled"):
            break
    return outcome
