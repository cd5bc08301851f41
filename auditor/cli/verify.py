"""`auditor audit verify AUDIT`: retrain with a label check's decisions applied, and show the test
loss and accuracy before and after beside what influence predicted.

Embedded (no broker) it runs here, with a progress bar, like `audit run`; with a broker it is
queued for the workers, like `audit enqueue`, and `audit status ID` follows it.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from auditor.cli.common import clean, err_console, out_console, print_json, styled, user_errors


@user_errors
def verify_command(
    audit_id: Annotated[int, typer.Argument(help="The label-check audit whose decisions to apply")],
    train_fn: Annotated[
        str | None,
        typer.Option(
            "--train-fn",
            help="MODULE:FUNCTION that retrains the model (registered, as for validate --metric lds); "
            "required for a --no-train team model, which auditor has no recipe for",
        ),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON document on stdout.")
    ] = False,
) -> None:
    """Retrain the audit's model on the labels as given and with the reviewers' decisions applied
    (confirm: the suggestion; relabel: the new label; dismiss: as given), with the same seed, and
    report test loss and accuracy before and after, next to influence's predicted change."""
    from auditor.config import get_settings
    from auditor.store import open_store
    from auditor.verification import request_verification

    settings = get_settings()
    enqueue = not settings.embedded
    if enqueue:
        from workers.dispatch import check_broker

        check_broker()
    sessions = open_store(settings.database_url)
    verify_id = request_verification(sessions, audit_id, settings=settings, train_fn=train_fn, local=not enqueue)
    if enqueue:
        from workers.dispatch import enqueue as send

        task_id = send(sessions, verify_id)
        if json_output:
            print_json({"id": verify_id, "audit": audit_id, "task_id": task_id, "status": "queued"})
        else:
            typer.echo(verify_id)
            err_console.print(
                f"verify audit {verify_id} queued; watch it with `auditor audit status {verify_id} --watch`"
            )
        return
    from auditor.audits import audit_doc
    from auditor.cli.progress import progress_bar
    from auditor.runner import execute_audit
    from auditor.store import audits as audit_store

    with progress_bar(f"audit {verify_id} verify", enabled=True) as bar:
        outcome = execute_audit(sessions, verify_id, settings=settings, echo=bar, local=True)
    with sessions() as s:
        doc = audit_doc(audit_store.get_audit(s, verify_id))
    if json_output:
        print_json(doc)
    else:
        print_report(doc)
    if outcome.status != "succeeded":
        raise typer.Exit(1)


def print_report(doc: dict[str, Any]) -> None:
    """Before, after, the change and the prediction in one table, then what was applied."""
    if doc["status"] != "succeeded":
        err_console.print(
            styled(
                (f"audit {doc['id']} {doc['status']}: ", "bold red"),
                clean(doc["error"] or doc["message"] or "", " "),
            ),
            soft_wrap=True,
        )
        return
    r = doc["summary"]
    out_console.print(
        f"verify audit {doc['id']} of audit {r['audit']}: evaluated on {r['evaluated_on']}",
        markup=False,
    )
    table = Table("", "test loss", "test accuracy")
    for name, row, signed in (
        ("before", r["before"], False),
        ("after", r["after"], False),
        ("change", r["change"], True),
    ):
        table.add_row(
            name, _num(row["test_loss"], signed), _num(row["test_accuracy"], signed, pct=True)
        )
    predicted = r.get("predicted_change")
    if predicted:
        table.add_row(
            "predicted",
            _num(predicted["test_loss"], True),
            _num(predicted["test_accuracy"], True, pct=True),
        )
    out_console.print(table)
    a = r["applied"]
    out_console.print(
        f"applied: {a['confirmed']} confirmed, {a['relabelled']} relabelled, {a['dismissed']} dismissed "
        f"({r['labels_changed']} labels changed); trained by {r['training']['by']}, seed {r['training']['seed']}",
        markup=False,
    )
    if r.get("predicted_note"):
        out_console.print(f"predicted: {r['predicted_note']}", markup=False)


def _num(value: float | None, signed: bool, pct: bool = False) -> str:
    if value is None:
        return "n/a"
    if pct:
        return f"{value * 100:+.2f} pts" if signed else f"{value:.2%}"
    return f"{value:+.4f}" if signed else f"{value:.4f}"
