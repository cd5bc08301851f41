"""`auditor audit ...`: run audits in process, enqueue them on workers, watch, cancel, compare."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.table import Table

from auditor.cli.audit_options import KIND_HELP, KINDS_DOC, audit_params, with_audit_options
from auditor.cli.common import clean, err_console, out_console, print_json, styled, user_errors
from auditor.cli.progress import progress_bar

app = typer.Typer(no_args_is_help=True, help="Audits: run, enqueue, status, list, cancel, diff.")

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


def _say_recorded_damping(chosen: dict[str, Any]) -> None:
    """No --damping given: `audits.create_audit` used the one `validate --sweep-damping` chose
    for this model and data set (auditor.dampings); say so on stderr."""
    err_console.print(
        f"damping {chosen['damping']:g}: chosen by validate --sweep-damping on {chosen['chosen_at']} "
        f"(LDS {chosen['lds']:.3f}); --damping overrides",
        markup=False,
    )


def _register(name: str, enqueue: bool):
    @user_errors
    @with_audit_options
    def command(
        kind: Annotated[str, typer.Argument(help=KIND_HELP)],
        dataset: Annotated[str, typer.Argument(help="Registered dataset name (see `auditor dataset add`)")],
        test: Annotated[str | None, typer.Option(help="Test dataset name (explain, domain-mismatch, attack)")] = None,
        json_output: JsonOption = False,
        audit: dict[str, Any] | None = None,
    ) -> None:
        from auditor.audits import create_audit
        from auditor.config import get_settings
        from auditor.store import open_store

        settings = get_settings()
        doc_params = audit_params(kind, audit or {})
        if enqueue:
            from workers.dispatch import check_broker

            check_broker()
        sessions = open_store(settings.database_url)
        audit_id = create_audit(
            sessions,
            kind,
            dataset,
            doc_params,
            test_name=test,
            local=not enqueue,
            settings=settings,
            on_damping=_say_recorded_damping,
        )
        if enqueue:
            from workers.dispatch import enqueue as send

            task_id = send(sessions, audit_id)
            if json_output:
                print_json({"id": audit_id, "task_id": task_id, "status": "queued"})
            else:
                typer.echo(audit_id)
                err_console.print(f"audit {audit_id} queued; watch it with `auditor audit status {audit_id} --watch`")
            return
        from auditor.audits import audit_doc, run_here
        from auditor.findings_view import context_for, finding_doc
        from auditor.store import audits as audit_store
        from auditor.store import findings as finding_store

        with progress_bar(f"audit {audit_id} {kind}", enabled=True) as bar:
            outcome = run_here(sessions, audit_id, echo=bar, local=True, settings=settings)
        with sessions() as s:
            doc = audit_doc(audit_store.get_audit(s, audit_id))
            top = finding_store.list_findings(s, audit_id, top=10)
            ctx = context_for(s, audit_id, top)
            top_rows = [finding_doc(f, ctx) for f in top]
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
    ) + KINDS_DOC
    app.command(name)(command)


def _print_outcome(doc: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    from auditor.findings_view import named_label

    if doc["status"] != "succeeded":
        err_console.print(
            styled((f"audit {doc['id']} {doc['status']}: ", "bold red"), clean(doc["error"] or doc["message"] or "", " ")),
            soft_wrap=True,
        )
        return
    out_console.print(f"audit {doc['id']} succeeded: {doc['message']}")
    _print_ranking(doc)
    table = Table("rank", "finding", "kind", "file", "label", "suggested", "score")
    for r in rows:
        suggested = r["payload"].get("suggested_label")
        table.add_row(
            str(r["rank"]), str(r["id"]), r["kind"], r.get("locator") or str(r["example_index"]),
            named_label(r["label"], r.get("label_name")),
            named_label(suggested, r.get("suggested_label_name")) if suggested is not None else "",
            f"{r['score']:.4g}",
        )
    out_console.print(table)


def _print_ranking(doc: dict[str, Any]) -> None:
    """A label check's summary says which ranking `auto` chose and why, and every audit's which
    curvature and damping it used and why; reviewers should know."""
    summary = doc.get("summary") or {}
    if summary.get("estimate"):
        from auditor.analyses.label_noise import estimate_text

        out_console.print(estimate_text(summary["estimate"]), markup=False)
    if summary.get("rank_by_reason"):
        out_console.print(f"ranked by {summary['rank_by']}: {summary['rank_by_reason']}", markup=False)
    curvature = summary.get("curvature")
    if curvature:
        counted = curvature.get("parameters", {})
        out_console.print(
            f"curvature: {curvature['solver']} ({curvature['solver_reason']}); damping "
            f"{curvature['damping']:.3g} ({curvature['damping_reason']}); "
            f"{counted.get('counted')} of {counted.get('total')} parameters counted",
            markup=False,
        )


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
    from auditor.audits import audit_doc
    from auditor.store import audits as audit_store
    from auditor.store import open_store
    from auditor.store.models import FINISHED_STATUSES
    from workers.dispatch import reconcile_now

    sessions = open_store()

    def read() -> dict[str, Any]:
        reconcile_now(sessions, [audit_id])  # a lost audit is shown as what it is
        with sessions() as s:
            return audit_doc(audit_store.get_audit(s, audit_id))

    doc = read()
    if watch and doc["status"] not in FINISHED_STATUSES:
        with progress_bar(f"audit {audit_id}") as bar:
            while doc["status"] not in FINISHED_STATUSES:
                bar(doc["progress"], f"{doc['status']}: {doc['message'] or ''}")
                time.sleep(1.0)
                doc = read()
            bar(doc["progress"], doc["status"])
    from auditor.workload import audit_review, progress_line

    with sessions() as s:
        doc["review"] = audit_review(s, audit_store.get_audit(s, audit_id))
    if json_output:
        print_json(doc)
        return
    line = f"audit {doc['id']} {doc['kind']} on {doc['dataset']}: {doc['status']} ({doc['progress']:.0%})"
    out_console.print(styled(line + (f" - {doc['message']}" if doc["message"] else "")))
    if doc["error"]:
        out_console.print(styled(("error: ", "red"), doc["error"]))
    if doc["review"] is not None:
        out_console.print(styled(progress_line(doc["review"])))
    _print_ranking(doc)


@app.command("list")
@user_errors
def list_audits(
    dataset: Annotated[str | None, typer.Option(help="Only audits of this dataset (scan history)")] = None,
    status: Annotated[str | None, typer.Option(help="Only audits with this status")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first")] = 50,
    json_output: JsonOption = False,
) -> None:
    """List audits, newest first."""
    from auditor.audits import audit_doc
    from auditor.store import audits as audit_store
    from auditor.store import open_store
    from workers.dispatch import reconcile_now

    sessions = open_store()
    with sessions() as s:
        shown = [a.id for a in audit_store.list_audits(s, dataset, status=status, limit=limit)]
    reconcile_now(sessions, shown)
    from auditor.workload import audit_review

    with sessions() as s:
        audits = audit_store.list_audits(s, dataset, status=status, limit=limit)
        docs = [{**audit_doc(a), "review": audit_review(s, a, full=False)} for a in audits]
    if json_output:
        print_json(docs)
        return
    from auditor.audit_view import model_name, solver_name

    # one line per audit in 80 columns: the message gives way (cut with an ellipsis), the rest
    # never wraps; model and solver tell two audits of one data set apart, `reviewed` is the
    # review workload's progress (reviewed/flagged)
    def status(d: dict) -> str:
        return f"{d['status']} {d['progress']:.0%}" if d["status"] == "running" else d["status"]

    def reviewed(d: dict) -> str:
        r = d.get("review")
        return f"{r['reviewed']}/{r['flagged']}" if r else "-"

    rows = [
        (
            str(d["id"]), d["kind"], clean(d["dataset"]), "/".join(p for p in (model_name(d), solver_name(d)) if p),
            status(d), reviewed(d), (d["created_at"] or "")[5:16].replace("T", " "),
            clean(d["error"] or d["message"] or "", " "),
        )  # fmt: skip
        for d in docs
    ]
    table = Table(box=None, pad_edge=False, padding=(0, 1, 0, 0), header_style="bold")
    headers = ("id", "kind", "dataset", "model/solver", "status", "reviewed", "created")
    caps = (6, 11, 10, 14, 11, 9, 11)  # a long name is cut with an ellipsis, never wrapped
    used = 0
    for i, (name, cap) in enumerate(zip(headers, caps, strict=True)):
        width = min(cap, max([len(name)] + [len(r[i]) for r in rows]))
        table.add_column(name, no_wrap=True, overflow="ellipsis", width=width)
        used += width + 1  # and its right padding
    rest = max(8, out_console.width - used - 1)
    table.add_column("message", no_wrap=True, overflow="ellipsis", width=rest)
    for r in rows:
        table.add_row(*r)
    out_console.print(table)


@app.command("cancel")
@user_errors
def cancel(audit_id: int, json_output: JsonOption = False) -> None:
    """Stop an audit: a queued one at once, a running one at its next progress report (at once
    when the process running it has stopped)."""
    from auditor.audits import cancel_audit
    from auditor.config import get_settings
    from auditor.store import open_store

    settings = get_settings()
    doc = cancel_audit(open_store(settings.database_url), audit_id, lease_seconds=settings.lease_seconds)
    if json_output:
        print_json(doc)
    else:
        out_console.print(
            f"audit {audit_id} cancelled" if doc["status"] == "cancelled" else f"audit {audit_id}: cancel requested"
        )
