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

from auditor.cli.common import err_console, out_console, print_json, user_errors

app = typer.Typer(
    no_args_is_help=True,
    help="Recurring audits: add, list, pause, resume, remove, tick (run what is due now).",
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
KIND_HELP = "label-check | explain | domain-mismatch | attack"


def _audit_params(kind: str, o: dict[str, Any]) -> dict[str, Any]:
    """The params `auditor audit run KIND ...` builds from the same options."""
    from auditor.cli.audit import audit_params

    return audit_params(kind, **o)


def _when(doc: dict[str, Any]) -> str:
    return f"every {doc['every']}" if doc["every"] else f"cron {doc['cron']}"


@app.command("add")
@user_errors
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
    model: Annotated[str, typer.Option(help="logreg | mlp | cnn | MODULE:FACTORY")] = "logreg",
    weights: Annotated[
        str | None, typer.Option(help="Weights file (.safetensors or weights-only .pt)")
    ] = None,
    weight_decay: Annotated[float, typer.Option(help="L2 regularisation in training")] = 0.01,
    params: Annotated[
        str, typer.Option("--params", help="Parameters that count: all | last")
    ] = "all",
    solver: Annotated[
        str, typer.Option(help="auto | direct | cg | lissa | arnoldi | ekfac")
    ] = "auto",
    damping: Annotated[float, typer.Option(help="Damping lambda added to the Hessian")] = 0.0,
    seed: Annotated[int, typer.Option(help="Training seed")] = 0,
    rank_by: Annotated[
        str | None, typer.Option(help="label-check ranking: auto (default: margin, or self-influence when the model fits every label) | margin | loo-margin | self-influence | loss | combined")
    ] = None,
    test_indices: Annotated[
        str | None, typer.Option(help="explain: comma-separated test rows")
    ] = None,
    errors: Annotated[
        bool, typer.Option("--errors", help="explain: the misclassified test points")
    ] = False,
    top: Annotated[int | None, typer.Option(help="explain/domain-mismatch: rows per list")] = None,
    top_errors: Annotated[
        int | None, typer.Option(help="domain-mismatch: how many worst test points")
    ] = None,
    targets: Annotated[
        int | None, typer.Option(help="attack: number of target test points")
    ] = None,
    budget: Annotated[
        int | None, typer.Option(help="attack: training images to perturb per target")
    ] = None,
    step: Annotated[float | None, typer.Option(help="attack: step size")] = None,
    iterations: Annotated[int | None, typer.Option(help="attack: iterations")] = None,
    json_output: JsonOption = False,
) -> None:
    """Audit DATASET every period (--every) or on a cron expression (--cron).

    Adding a schedule identical to an existing one returns that one (created: false).
    """
    from auditor import schedules
    from auditor.store import open_store

    audit_params = _audit_params(
        kind,
        dict(
            model=model,
            weights=weights,
            weight_decay=weight_decay,
            params=params,
            solver=solver,
            damping=damping,
            seed=seed,
            rank_by=rank_by,
            test_indices=test_indices,
            errors=errors,
            top=top,
            top_errors=top_errors,
            targets=targets,
            budget=budget,
            step=step,
            iterations=iterations,
        ),
    )
    doc, created = schedules.add_schedule(
        open_store(),
        dataset,
        kind,
        audit_params,
        every=every,
        cron=cron,
        test_name=test,
        skip_unchanged=skip_unchanged,
        due_now=due_now,
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
            d["dataset"],
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
    from auditor.audits import check_broker
    from auditor.config import get_settings
    from auditor.store import open_store

    sessions = open_store()
    if not get_settings().embedded:
        check_broker()  # before claiming anything, so a broker outage loses no run
    outcomes = schedules.run_due(sessions)
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
