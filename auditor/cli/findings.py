"""`auditor findings ...`: list, show and export an audit's findings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from auditor.cli.common import (
    check_out_path,
    err_console,
    out_console,
    print_json,
    styled,
    user_errors,
)

app = typer.Typer(no_args_is_help=True, help="Findings: list, show, export.")
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


@app.command("list")
@user_errors
def list_findings(
    audit_id: int,
    top: Annotated[int, typer.Option(min=1, help="Show the first N by rank")] = 20,
    kind: Annotated[str | None, typer.Option(help="Only findings of this kind")] = None,
    json_output: JsonOption = False,
) -> None:
    """An audit's findings, best-ranked first."""
    from auditor.findings_view import finding_doc
    from auditor.store import open_store, repo

    sessions = open_store()
    with sessions() as s:
        repo.get_audit(s, audit_id)
        docs = [finding_doc(f) for f in repo.list_findings(s, audit_id, top=top, kind=kind)]
    if json_output:
        print_json(docs)
        return
    table = Table("id", "rank", "kind", "example", "label", "suggested", "score")
    for d in docs:
        table.add_row(
            str(d["id"]), str(d["rank"]), d["kind"], str(d["example_index"]), str(d["label"]),
            str(d["payload"].get("suggested_label", "")), f"{d['score']:.4g}",
        )
    out_console.print(table)


@app.command("show")
@user_errors
def show(finding_id: int, json_output: JsonOption = False) -> None:
    """One finding with its example (rendered when it is an image) and any decision."""
    from auditor.cli.render import image_to_text
    from auditor.errors import DataError
    from auditor.findings_view import dataset_examples, finding_doc, load_example
    from auditor.store import open_store, repo

    sessions = open_store()
    found, is_image = None, False
    with sessions() as s:
        f = repo.get_finding(s, finding_id)
        doc = finding_doc(f)
        audit = repo.get_audit(s, f.audit_id)
        review = repo.get_review(s, audit.dataset_id, f.example_key)
        doc["decision"] = None if review is None else {
            "decision": review.decision, "new_label": review.new_label, "reviewer": review.reviewer,
            "note": review.note, "version": review.version,
        }
        # The example itself is only drawn for people, and only if its file is still there:
        # the finding and its decision live in the database and never need the dataset.
        if not json_output and f.example_index >= 0:
            try:
                examples, _ = dataset_examples(s, f.audit_id)
                found, is_image = load_example(examples, f), examples.is_image
            except DataError as exc:
                err_console.print(styled((f"cannot show the example: {exc}", "yellow")))
    if json_output:
        print_json(doc)
        return
    out_console.print(f"finding {doc['id']} (audit {doc['audit_id']}, {doc['kind']}, rank {doc['rank']})")
    if found is not None and is_image:
        out_console.print(image_to_text(found[0]))
    for k, v in {"example": doc["example_index"], "label": doc["label"], "score": doc["score"], **doc["payload"]}.items():
        out_console.print(f"  {k}: {v}")
    if doc["decision"]:
        out_console.print(f"  decision: {doc['decision']}")


@app.command("export")
@user_errors
def export(
    audit_id: int,
    out: Annotated[Path, typer.Option("--out", help="labels.csv or labels.json")],
    json_output: JsonOption = False,
) -> None:
    """Every example with original label, decision, corrected label and score, ready to train on."""
    from auditor.findings_view import export_rows, write_export
    from auditor.store import open_store

    check_out_path(out)
    sessions = open_store()
    with sessions() as s:
        rows = export_rows(s, audit_id)
    write_export(rows, out)
    decided = sum(1 for r in rows if r["decision"])
    if json_output:
        print_json({"out": str(out), "rows": len(rows), "decided": decided})
    else:
        out_console.print(f"wrote {len(rows)} rows ({decided} decided) to {out}")
