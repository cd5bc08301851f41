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
from sqlalchemy.orm import Session

from auditor.cli.common import out_console, print_json, user_errors
from auditor.data.imagefolder import parse_resize
from auditor.data.load import sniff_format
from auditor.errors import Conflict, DataError, NotFound
from auditor.resolve import load_dataset_source, read_source
from auditor.store import open_store, repo
from auditor.store.models import Dataset, Snapshot
from auditor.store.repo import SnapshotDiff

app = typer.Typer(no_args_is_help=True, help="Datasets: add, list, show, re-scan.")


class Format(str, Enum):
    imagefolder = "imagefolder"
    npz = "npz"
    csv = "csv"


JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]


def _reader_options(
    label_column: str | None, group_column: str | None, resize: str | None
) -> dict[str, Any]:
    """What a re-scan needs to read the source the same way (stored with the dataset)."""
    options: dict[str, Any] = {}
    if label_column is not None:
        options["label_column"] = label_column
    if group_column is not None:
        options["group_column"] = group_column
    if resize is not None:
        options["resize"] = list(parse_resize(resize))
    return options


def _dataset_doc(session: Session, dataset: Dataset) -> dict[str, Any]:
    latest = repo.latest_snapshot(session, dataset.id)
    return {
        "id": dataset.id,
        "name": dataset.name,
        "source_path": dataset.source_path,
        "format": dataset.format,
        "options": dataset.options,
        "created_at": dataset.created_at.isoformat(),
        "n": latest.n if latest is not None else None,
        "snapshot_id": latest.id if latest is not None else None,
        "content_hash": latest.content_hash if latest is not None else None,
        "scanned_at": latest.created_at.isoformat() if latest is not None else None,
    }


def _snapshot_doc(snapshot: Snapshot) -> dict[str, Any]:
    return {
        "id": snapshot.id,
        "content_hash": snapshot.content_hash,
        "n": snapshot.n,
        "created_at": snapshot.created_at.isoformat(),
    }


def _describe_diff(name: str, snapshot: Snapshot, diff: SnapshotDiff) -> str:
    if not diff.new_snapshot:
        return f"dataset {name}: unchanged ({snapshot.n} examples, snapshot {snapshot.id})"
    if diff.previous_snapshot_id is None:
        return f"dataset {name}: {snapshot.n} examples (snapshot {snapshot.id})"
    return (
        f"dataset {name}: snapshot {snapshot.id}, {snapshot.n} examples: {diff.added} added, "
        f"{diff.changed} changed, {diff.removed} removed"
    )


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
    source = path.expanduser().resolve()
    sessions = open_store()
    with sessions() as session, session.begin():
        exists = _find(session, name) is not None
    if exists and not update:
        raise Conflict(f"dataset {name!r} already exists; pass --update to re-read it")
    if not source.exists():
        raise DataError(f"{source}: no such file or folder")
    fmt = format.value if format is not None else sniff_format(source)
    options = _reader_options(label_column, group_column, resize)
    examples = read_source(source, fmt, options)

    with sessions() as session, session.begin():
        dataset = _find(session, name)
        created = dataset is None
        if dataset is None:
            dataset = repo.create_dataset(session, name, str(source), fmt, options)
        elif update:
            repo.update_dataset_source(session, dataset, str(source), fmt, options)
        else:
            raise Conflict(f"dataset {name!r} was just added by someone else")
        session.flush()
        snapshot, diff = repo.record_snapshot(session, dataset, examples)
        doc = {
            "created": created,
            "dataset": _dataset_doc(session, dataset),
            "snapshot": _snapshot_doc(snapshot),
            "diff": diff.to_dict(),
        }
    if json_output:
        print_json(doc)
    else:
        out_console.print(_describe_diff(name, snapshot, diff))


def _find(session: Session, name: str) -> Dataset | None:
    try:
        return repo.get_dataset(session, name)
    except NotFound:
        return None


@app.command("list")
@user_errors
def list_command(json_output: JsonOption = False) -> None:
    """List datasets with their size and last scan."""
    sessions = open_store()
    with sessions() as session, session.begin():
        docs = [_dataset_doc(session, dataset) for dataset in repo.list_datasets(session)]
    if json_output:
        print_json(docs)
        return
    if not docs:
        out_console.print("no datasets yet: `auditor dataset add NAME PATH`")
        return
    table = Table("name", "examples", "format", "source", "scanned (UTC)")
    for doc in docs:
        scanned = doc["scanned_at"][:16].replace("T", " ") if doc["scanned_at"] else "-"
        table.add_row(doc["name"], str(doc["n"]), doc["format"], doc["source_path"], scanned)
    out_console.print(table)


@app.command("show")
@user_errors
def show(name: str, json_output: JsonOption = False) -> None:
    """Show a dataset, its snapshots and its label counts."""
    sessions = open_store()
    with sessions() as session, session.begin():
        dataset = repo.get_dataset(session, name)
        doc = _dataset_doc(session, dataset)
        snapshots = repo.list_snapshots(session, dataset.id)
        doc["snapshots"] = [_snapshot_doc(snapshot) for snapshot in snapshots]
        doc["label_counts"] = (
            {str(k): v for k, v in repo.label_counts(session, snapshots[-1].id).items()}
            if snapshots
            else {}
        )
        doc["reviewed"] = len(repo.settled_keys(session, dataset.id))
    if json_output:
        print_json(doc)
        return
    out_console.print(f"[bold]{doc['name']}[/] ({doc['format']}) {doc['source_path']}")
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
    sessions = open_store()
    with sessions() as session:
        dataset = repo.get_dataset(session, name)
    examples = load_dataset_source(dataset)  # outside any transaction: a bad file writes nothing
    with sessions() as session, session.begin():
        dataset = repo.get_dataset(session, name)
        snapshot, diff = repo.record_snapshot(session, dataset, examples)
        doc = {
            "dataset": _dataset_doc(session, dataset),
            "snapshot": _snapshot_doc(snapshot),
            "diff": diff.to_dict(),
        }
    if json_output:
        print_json(doc)
    else:
        out_console.print(_describe_diff(name, snapshot, diff))
