"""`auditor schedule ...`: recurring audits, and `auditor beat`, the process that runs them.

A schedule carries the same params an `auditor audit run` with the same options would. Due runs
happen in one of two ways: `auditor beat` (with a broker: sends tick tasks to workers), or
`auditor schedule tick` from cron or a test (runs due audits here in the embedded default, or
enqueues them with a broker). Either way a dataset whose content did not change since the
schedule's last audit is skipped unless the schedule was added with --no-skip-unchanged.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from auditor.cli.audit_options import KIND_HELP, audit_params, with_audit_options
from auditor.cli.common import clean, err_console, out_console, print_json, user_errors

app = typer.Typer(
    no_args_is_help=True,
    help="Recurring audits: add, list, pause, resume, remove, tick (run what is due now).",
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


def _when(doc: dict[str, Any]) -> str:
    return f"every {doc['every']}" if doc["every"] else f"cron {doc['cron']}"


@app.command("add")
@user_errors
@with_audit_options
def add(
    dataset: Annotated[str, typer.Argument(help="Registered dataset name")],
    kind: Annotated[str, typer.Argument(help=KIND_HELP)],
    every: Annotated[
        str | None, typer.Option("--every", help="Period, e.g. 30m, 6h, 1d, 1h30m")
    ] = None,
    cron: Annotated[
        str | None, typer.Option("--cron", help="Cron expression in UTC, e.g. '0 3 * * *'")
    ] = None,
    skip_unchanged: Annotated[
        bool,
        typer.Option(
            "--skip-unchanged/--no-skip-unchanged",
            help="Skip a run when the dataset did not change since the schedule's last audit",
        ),
    ] = True,
    due_now: Annotated[
        bool, typer.Option("--due-now", help="First run due at once, not one period from now")
    ] = False,
    test: Annotated[
        str | None, typer.Option(help="Test dataset name (explain, domain-mismatch, attack)")
    ] = None,
    json_output: JsonOption = False,
    audit: dict[str, Any] | None = None,
) -> None:
    """Audit DATASET every period (--every) or on a cron expression (--cron).

    Takes the same audit options as `auditor audit run`. Adding a schedule identical to an
    existing one returns that one (created: false).
    """
    from auditor import schedules
    from auditor.config import get_settings
    from auditor.store import open_store

    doc, created = schedules.add_schedule(
        open_store(),
        dataset,
        kind,
        audit_params(kind, audit or {}),
        every=every,
        cron=cron,
        test_name=test,
        skip_unchanged=skip_unchanged,
        due_now=due_now,
        settings=get_settings(),
    )
    if json_output:
        print_json({"created": created, "schedule": doc})
        return
    verb = "added" if created else "already exists:"
    out_console.print(
        f"schedule {doc['id']} {verb} {kind} on {dataset} {_when(doc)}; next run {doc['next_run_at']}"
    )


@app.command("list")
@user_errors
def list_command(
    dataset: Annotated[str | None, typer.Option(help="Only schedules of this dataset")] = None,
    json_output: JsonOption = False,
) -> None:
    """List schedules by id."""
    from auditor import schedules
    from auditor.store import open_store

    docs = schedules.list_schedule_docs(open_store(), dataset)
    if json_output:
        print_json(docs)
        return
    table = Table(
        "id", "dataset", "kind", "when", "state", "skip", "last run (UTC)", "next run (UTC)"
    )
    for d in docs:
        table.add_row(
            str(d["id"]),
            clean(d["dataset"]),
            d["kind"],
            _when(d),
            "on" if d["enabled"] else "paused",
            "unchanged" if d["skip_unchanged"] else "never",
            _short(d["last_run_at"]),
            _short(d["next_run_at"]),
        )
    out_console.print(table)


def _short(iso: str | None) -> str:
    return (iso or "-")[:16].replace("T", " ")


def _set_enabled(schedule_id: int, enabled: bool, json_output: bool) -> None:
    from auditor import schedules
    from auditor.store import open_store

    doc, changed = schedules.set_enabled(open_store(), schedule_id, enabled)
    if json_output:
        print_json({"changed": changed, "schedule": doc})
        return
    state = "resumed" if enabled else "paused"
    out_console.print(f"schedule {schedule_id} {state}" + ("" if changed else " (it already was)"))


@app.command("pause")
@user_errors
def pause(schedule_id: int, json_output: JsonOption = False) -> None:
    """Stop a schedule's runs (pausing a paused schedule is fine)."""
    _set_enabled(schedule_id, False, json_output)


@app.command("resume")
@user_errors
def resume(schedule_id: int, json_output: JsonOption = False) -> None:
    """Resume a paused schedule; its next run is one period from now (no backlog)."""
    _set_enabled(schedule_id, True, json_output)


@app.command("remove")
@user_errors
def remove(schedule_id: int, json_output: JsonOption = False) -> None:
    """Delete a schedule; its past audits stay."""
    from auditor import schedules
    from auditor.store import open_store

    schedules.remove(open_store(), schedule_id)
    if json_output:
        print_json({"id": schedule_id, "removed": True})
    else:
        out_console.print(f"schedule {schedule_id} removed")


@app.command("tick")
@user_errors
def tick_command(json_output: JsonOption = False) -> None:
    """Run (embedded, no broker) or enqueue (with a broker) every schedule due now.

    For cron jobs and tests; `auditor beat` does the same continuously.
    """
    from auditor import schedules
    from auditor.config import get_settings
    from auditor.store import open_store
    from workers.dispatch import default_starter

    settings = get_settings()
    sessions = open_store(settings.database_url)
    outcomes = schedules.run_due(sessions, start=default_starter(settings), settings=settings)  # the starter before any claim
    if json_output:
        print_json(
            {
                "outcomes": [o.to_dict() for o in outcomes],
                "audit_ids": [o.audit_id for o in outcomes if o.audit_id is not None],
            }
        )
    else:
        for o in outcomes:
            out_console.print(o.describe())
        if not outcomes:
            err_console.print("nothing due")
    if any(o.action == "failed" or o.audit_status == "failed" for o in outcomes):
        raise typer.Exit(1)


@user_errors
def beat_command(
    interval: Annotated[
        float | None,
        typer.Option(
            help="Seconds between reads of the schedules table (default: AUDITOR_BEAT_INTERVAL or 5)"
        ),
    ] = None,
    standby: Annotated[
        bool,
        typer.Option("--standby", help="If another beat runs, wait and take over when it stops"),
    ] = False,
    loglevel: Annotated[str, typer.Option(help="debug | info | warning | error")] = "info",
) -> None:
    """Run the scheduler: each tick, send due schedules to the workers (needs a broker).

    The schedules table is the only source of truth, re-read every tick, so schedule changes
    apply without a restart. One beat at a time: a second one exits with an error (or waits,
    with --standby).
    """
    from workers.beat import run_beat

    run_beat(interval=interval, standby=standby, loglevel=loglevel)
