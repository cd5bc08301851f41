"""`auditor artifacts ...`: the trained models and curvature factors kept for reuse."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from auditor.cli.common import out_console, print_json, user_errors

app = typer.Typer(no_args_is_help=True, help="Stored models and curvature factors: list, prune.")
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@app.command("list")
@user_errors
def list_(json_output: JsonOption = False) -> None:
    """What is stored, for which data set, how big, and when it was last used."""
    from auditor.artifacts import list_artifacts, root
    from auditor.config import get_settings
    from auditor.store import open_store

    settings = get_settings()
    with open_store(settings.database_url)() as s:
        infos = list_artifacts(s, root(settings))
    if json_output:
        print_json([i.to_dict() for i in infos])
        return
    from pathlib import Path

    table = Table("id", "kind", "key", "data set", "size", "last used", "uses")
    for i in infos:
        table.add_row(str(i.id), i.kind, i.key[:12] + ("" if i.present else " (file missing)"), i.dataset or "-",
                      _size(i.bytes), i.last_used_at.strftime("%m-%d %H:%M"), str(i.uses))  # fmt: skip
    out_console.print(table)
    where = f" in {Path(infos[0].path).parent}" if infos else ""
    out_console.print(f"{len(infos)} artifact{'' if len(infos) == 1 else 's'}, {_size(sum(i.bytes for i in infos))}{where}")


@app.command("prune")
@user_errors
def prune(
    unused_for: Annotated[str | None, typer.Option(help="Remove those not used for this long (30d, 12h)")] = None,
    dataset: Annotated[str | None, typer.Option(help="Remove those of this data set")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Remove every one")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would go")] = False,
    json_output: JsonOption = False,
) -> None:
    """Remove stored artifacts (the next audit that needs one fits it again). Records whose
    file is missing always go."""
    from datetime import timedelta

    from auditor import recurrence
    from auditor.artifacts import prune as prune_artifacts
    from auditor.artifacts import root
    from auditor.config import get_settings
    from auditor.store import open_store

    settings = get_settings()
    age = timedelta(seconds=recurrence.parse_interval(unused_for)) if unused_for else None
    with open_store(settings.database_url)() as s, s.begin():
        gone = prune_artifacts(
            s, unused_for=age, dataset=dataset, everything=all_, dry_run=dry_run, folder=root(settings)
        )
    if json_output:
        print_json({"removed": [i.to_dict() for i in gone], "dry_run": dry_run})
        return
    verb = "would remove" if dry_run else "removed"
    out_console.print(f"{verb} {len(gone)} artifacts, {_size(sum(i.bytes for i in gone))}")
