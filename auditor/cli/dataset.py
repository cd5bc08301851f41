"""`auditor dataset ...` commands: register data sources and record their snapshots.

Every command reads the source completely before writing anything, so a bad file leaves the
database as it was.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from auditor.cli.common import clean, data_options, out_console, print_json, styled, user_errors
from auditor.store import open_store

app = typer.Typer(no_args_is_help=True, help="Datasets: add, list, show, re-scan.")


class Format(str, Enum):
    imagefolder = "imagefolder"
    npz = "npz"
    csv = "csv"


JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]


@app.command("add")
@user_errors
def add(
    name: Annotated[str, typer.Argument(help="A short name to refer to the dataset by.")],
    path: Annotated[Path, typer.Argument(help="A folder of class folders, an .npz or a .csv.")],
    format: Annotated[
        Format | None, typer.Option("--format", help="Default: from the path.")
    ] = None,
    label_column: Annotated[
        str | None, typer.Option("--label-column", help="CSV label column (default: label).")
    ] = None,
    group_column: Annotated[
        str | None, typer.Option("--group-column", help="CSV column naming each row's group.")
    ] = None,
    resize: Annotated[
        str | None, typer.Option("--resize", help="Resize images to HxW, e.g. 32x32.")
    ] = None,
    update: Annotated[
        bool, typer.Option("--update", help="Re-point an existing dataset and re-scan it.")
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Register a dataset and record its first snapshot."""
    from auditor.datasets import reader_options, register_dataset

    doc = register_dataset(
        open_store(),
        name,
        path,
        format=format.value if format is not None else None,
        options=reader_options(label_column, group_column, resize),
        update=update,
        data=data_options(),
    )
    _print_scan(doc, json_output)


def _print_scan(doc: dict[str, Any], json_output: bool) -> None:
    message = doc.pop("message")
    if json_output:
        print_json(doc)
    else:
        out_console.print(message)


@app.command("list")
@user_errors
def list_command(json_output: JsonOption = False) -> None:
    """List datasets with their size and last scan."""
    from auditor.datasets import list_dataset_docs

    docs = list_dataset_docs(open_store())
    if json_output:
        print_json(docs)
        return
    if not docs:
        out_console.print("no datasets yet: `auditor dataset add NAME PATH`")
        return
    table = Table("name", "examples", "format", "source", "scanned (UTC)")
    for doc in docs:
        scanned = doc["scanned_at"][:16].replace("T", " ") if doc["scanned_at"] else "-"
        table.add_row(clean(doc["name"]), str(doc["n"]), doc["format"], clean(doc["source_path"]), scanned)
    out_console.print(table)


@app.command("show")
@user_errors
def show(name: str, json_output: JsonOption = False) -> None:
    """Show a dataset, its snapshots and its label counts."""
    from auditor.datasets import show_dataset

    doc = show_dataset(open_store(), name)
    if json_output:
        print_json(doc)
        return
    out_console.print(styled((doc["name"], "bold"), f" ({doc['format']}) {doc['source_path']}"))
    out_console.print(f"{doc['n']} examples, {doc['reviewed']} reviewed")
    counts = ", ".join(f"{label}: {count}" for label, count in doc["label_counts"].items())
    out_console.print(f"labels: {counts or '-'}")
    table = Table("snapshot", "examples", "content hash", "created (UTC)")
    for snap in doc["snapshots"]:
        created = snap["created_at"][:19].replace("T", " ")
        table.add_row(str(snap["id"]), str(snap["n"]), snap["content_hash"][:16], created)
    out_console.print(table)


@app.command("scan")
@user_errors
def scan(name: str, json_output: JsonOption = False) -> None:
    """Re-read a dataset's source; record a new snapshot if its content changed."""
    from auditor.datasets import scan_dataset

    _print_scan(scan_dataset(open_store(), name, data=data_options()), json_output)
