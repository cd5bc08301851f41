"""`auditor audit ...`: run audits in process, enqueue them on workers, watch, cancel, compare."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.table import Table

from auditor.cli.common import err_console, out_console, print_json, user_errors
from auditor.cli.progress import progress_bar

app = typer.Typer(no_args_is_help=True, help="Audits: run, enqueue, status, list, cancel, diff.")

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
KIND_HELP = "label-check | explain | domain-mismatch | attack"


def build_params(
    model: str,
    weights: str | None,
    weight_decay: float,
    params_subset: str,
    solver: str,
    damping: float,
    seed: int,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The audit's params JSON: model and solver specs plus the analysis's own options."""
    doc: dict[str, Any] = {
        "model": {"name": model, "weights": weights, "weight_decay": weight_decay, "params": params_subset, "seed": seed},
        "solver": {"name": solver, "damping": damping},
    }
    doc.update({k: v for k, v in extra.items() if v is not None})
    return doc


def audit_params(kind: str, **o: Any) -> dict[str, Any]:
    """The params JSON an audit (or a schedule) of `kind` gets from the shared CLI options.

    `--solver auto` means EK-FAC-or-exact by model size for label checks, and the exact solver
    for the analyses that need only a few solves.
    """
    solver = "direct" if o["solver"] == "auto" and kind != "label-check" else o["solver"]
    indices = [int(i) for i in o["test_indices"].split(",")] if o["test_indices"] else None
    extra = {
        "rank_by": o["rank_by"],
        "test_indices": indices,
        "errors": o["errors"] or None,
        "top": o["top"],
        "targets": o["targets"],
        "budget": o["budget"],
        "step": o["step"],
        "iterations": o["iterations"],
        "top_errors": o["top_errors"],
    }
    doc = build_params(o["model"], o["weights"], o["weight_decay"], o["params"], solver, o["damping"], o["seed"], extra)
    options = solver_options(o.get("lissa_scale"), o.get("lissa_depth"))
    if options:
        doc["solver"]["options"] = options
    return doc


def solver_options(lissa_scale: float | None, lissa_depth: int | None) -> dict[str, Any]:
    """Solver settings users tune (the ones solver errors name)."""
    return {k: v for k, v in (("scale", lissa_scale), ("depth", lissa_depth)) if v is not None}


def _audit_doc(a) -> dict[str, Any]:
    return {
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
        "params": a.params,
        "summary": a.summary,
        "created_at": a.created_at.isoformat() if a.created_at else None,
        "started_at": a.started_at.isoformat() if a.started_at else None,
        "finished_at": a.finished_at.isoformat() if a.finished_at else None,
    }




def _register(name: str, enqueue: bool):
    @user_errors
    def command(
        kind: Annotated[str, typer.Argument(help=KIND_HELP)],
        dataset: Annotated[str, typer.Argument(help="Registered dataset name (see `auditor dataset add`)")],
        test: Annotated[str | None, typer.Option(help="Test dataset name (explain, domain-mismatch, attack)")] = None,
        model: Annotated[str, typer.Option(help="logreg | mlp | cnn | MODULE:FACTORY")] = "logreg",
        weights: Annotated[str | None, typer.Option(help="Weights file (.safetensors or weights-only .pt)")] = None,
        weight_decay: Annotated[float, typer.Option(help="L2 regularisation in training")] = 0.01,
        params: Annotated[str, typer.Option("--params", help="Parameters that count: all | last")] = "all",
        solver: Annotated[str, typer.Option(help="auto | direct | cg | lissa | arnoldi | ekfac")] = "auto",
        damping: Annotated[float, typer.Option(help="Damping lambda added to the Hessian")] = 0.0,
        lissa_scale: Annotated[float | None, typer.Option(help="LiSSA scale (default: 1.5 x estimated top eigenvalue)")] = None,
        lissa_depth: Annotated[int | None, typer.Option(help="LiSSA recursion depth (default: from the spectrum)")] = None,
        seed: Annotated[int, typer.Option(help="Training seed")] = 0,
        rank_by: Annotated[str | None, typer.Option(help="label-check ranking: auto (default: margin, or self-influence when the model fits every label) | margin | loo-margin | self-influence | loss | combined")] = None,
        test_indices: Annotated[str | None, typer.Option(help="explain: comma-separated test rows")] = None,
        errors: Annotated[bool, typer.Option("--errors", help="explain: the misclassified test points")] = False,
        top: Annotated[int | None, typer.Option(help="explain/domain-mismatch: rows per list")] = None,
        top_errors: Annotated[int | None, typer.Option(help="domain-mismatch: how many worst test points")] = None,
        targets: Annotated[int | None, typer.Option(help="attack: number of target test points")] = None,
        budget: Annotated[int | None, typer.Option(help="attack: training images to perturb per target")] = None,
        step: Annotated[float | None, typer.Option(help="attack: step size")] = None,
        iterations: Annotated[int | None, typer.Option(help="attack: iterations")] = None,
        shards: Annotated[int, typer.Option(help="label-check: split over N workers (same result)")] = 1,
        json_output: JsonOption = False,
    ) -> None:
        from auditor.audits import check_broker, create_audit, dispatch
        from auditor.store import open_store

        doc_params = audit_params(
            kind, model=model, weights=weights, weight_decay=weight_decay, params=params, solver=solver,
            damping=damping, lissa_scale=lissa_scale, lissa_depth=lissa_depth, seed=seed, rank_by=rank_by, test_indices=test_indices, errors=errors, top=top,
            targets=targets, budget=budget, step=step, iterations=iterations, top_errors=top_errors,
        )
        if shards > 1:
            doc_params["shards"] = shards
        if enqueue:
            check_broker()
        sessions = open_store()
        audit_id = create_audit(sessions, kind, dataset, doc_params, test_name=test)
        if enqueue:
            try:
                task_id = dispatch(audit_id)
            except Exception as exc:
                from auditor.store import repo

                with sessions() as s, s.begin():
                    repo.set_audit_status(s, audit_id, "failed", error=f"could not enqueue: {exc}")
                raise
            if json_output:
                print_json({"id": audit_id, "task_id": task_id, "status": "queued"})
            else:
                typer.echo(audit_id)
                err_console.print(f"audit {audit_id} queued; watch it with `auditor audit status {audit_id} --watch`")
            return
        from auditor.findings_view import finding_doc
        from auditor.runner import execute_audit
        from auditor.store import repo

        with progress_bar(f"audit {audit_id} {kind}", enabled=True) as bar:
            if shards > 1:
                from auditor.shards import run_all_shards_here

                outcome = run_all_shards_here(sessions, audit_id)
            else:
                outcome = execute_audit(sessions, audit_id, echo=bar)
        with sessions() as s:
            doc = _audit_doc(repo.get_audit(s, audit_id))
            top_rows = [finding_doc(f) for f in repo.list_findings(s, audit_id, top=10)]
        if json_output:
            print_json({**doc, "findings": outcome.findings, "top": top_rows})
        else:
            _print_outcome(doc, top_rows)
        if outcome.status != "succeeded":
            raise typer.Exit(1)

    command.__doc__ = (
        "Queue an audit for a Celery worker; prints the audit id."
        if enqueue
        else "Run an audit in this process (no broker needed) and show its top findings."
    )
    app.command(name)(command)


def _print_outcome(doc: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    if doc["status"] != "succeeded":
        err_console.print(f"[bold red]audit {doc['id']} {doc['status']}:[/] {doc['error'] or doc['message']}")
        return
    out_console.print(f"audit {doc['id']} succeeded: {doc['message']}")
    _print_ranking(doc)
    table = Table("rank", "finding", "kind", "example", "label", "suggested", "score")
    for r in rows:
        table.add_row(
            str(r["rank"]), str(r["id"]), r["kind"], str(r["example_index"]), str(r["label"]),
            str(r["payload"].get("suggested_label", "")), f"{r['score']:.4g}",
        )
    out_console.print(table)


def _print_ranking(doc: dict[str, Any]) -> None:
    """A label check's summary says which ranking `auto` chose and why; reviewers should know."""
    summary = doc.get("summary") or {}
    if summary.get("rank_by_reason"):
        out_console.print(f"ranked by {summary['rank_by']}: {summary['rank_by_reason']}")


_register("run", enqueue=False)
_register("enqueue", enqueue=True)


@app.command("status")
@user_errors
def status(
    audit_id: int,
    watch: Annotated[bool, typer.Option("--watch", help="Follow progress until the audit ends")] = False,
    json_output: JsonOption = False,
) -> None:
    """Show an audit's status, progress and error."""
    from auditor.store import open_store, repo
    from auditor.store.models import FINISHED_STATUSES

    sessions = open_store()

    def read() -> dict[str, Any]:
        with sessions() as s:
            return _audit_doc(repo.get_audit(s, audit_id))

    doc = read()
    if watch and doc["status"] not in FINISHED_STATUSES:
        with progress_bar(f"audit {audit_id}") as bar:
            while doc["status"] not in FINISHED_STATUSES:
                bar(doc["progress"], f"{doc['status']}: {doc['message'] or ''}")
                time.sleep(1.0)
                doc = read()
            bar(doc["progress"], doc["status"])
    if json_output:
        print_json(doc)
        return
    line = f"audit {doc['id']} {doc['kind']} on {doc['dataset']}: {doc['status']} ({doc['progress']:.0%})"
    out_console.print(line + (f" - {doc['message']}" if doc["message"] else ""))
    if doc["error"]:
        out_console.print(f"[red]error:[/] {doc['error']}")
    _print_ranking(doc)


@app.command("list")
@user_errors
def list_audits(
    dataset: Annotated[str | None, typer.Option(help="Only audits of this dataset (scan history)")] = None,
    status: Annotated[str | None, typer.Option(help="Only audits with this status")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first")] = 50,
    json_output: JsonOption = False,
) -> None:
    """List audits, newest first."""
    from auditor.store import open_store, repo

    sessions = open_store()
    with sessions() as s:
        docs = [_audit_doc(a) for a in repo.list_audits(s, dataset, status=status, limit=limit)]
    if json_output:
        print_json(docs)
        return
    table = Table("id", "kind", "dataset", "snapshot", "status", "progress", "created (UTC)", "message")
    for d in docs:
        table.add_row(
            str(d["id"]), d["kind"], d["dataset"], str(d["snapshot_id"]), d["status"], f"{d['progress']:.0%}",
            (d["created_at"] or "")[:16].replace("T", " "), (d["error"] or d["message"] or "")[:60],
        )
    out_console.print(table)


@app.command("cancel")
@user_errors
def cancel(audit_id: int, json_output: JsonOption = False) -> None:
    """Stop an audit: a queued one at once, a running one at its next progress report."""
    from auditor.store import open_store, repo

    sessions = open_store()
    with sessions() as s, s.begin():
        a = repo.request_cancel(s, audit_id)
        doc = {"id": a.id, "status": a.status, "cancel_requested": a.cancel_requested}
    if json_output:
        print_json(doc)
    else:
        out_console.print(
            f"audit {audit_id} cancelled" if doc["status"] == "cancelled" else f"audit {audit_id}: cancel requested"
        )
