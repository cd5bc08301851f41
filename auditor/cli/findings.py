"""`auditor findings ...`: list, show and export an audit's findings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from auditor.cli.common import (
    check_out_path,
    data_options,
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
    top: Annotated[int, typer.Option(min=1, help="Show at most N findings (one page)")] = 20,
    kind: Annotated[str | None, typer.Option(help="Only findings of this kind")] = None,
    label: Annotated[str | None, typer.Option("--class", help="Only examples given this class (index or name)")] = None,
    decision: Annotated[str | None, typer.Option(help="Only: undecided | confirmed | relabelled | dismissed")] = None,
    page: Annotated[int, typer.Option(min=1, help="Page number, N findings per page")] = 1,
    order: Annotated[str, typer.Option(help="rank | -score | score | label")] = "rank",
    flagged: Annotated[
        bool, typer.Option("--flagged", help="Only the flagged findings (the audit's estimate of its wrong labels)")
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """An audit's findings, best-ranked first, with class names, files and decisions."""
    from auditor.findings_view import context_for, finding_doc, label_text, parse_class
    from auditor.store import audits as audit_store
    from auditor.store import findings as finding_store
    from auditor.store import open_store

    sessions = open_store()
    with sessions() as s:
        wanted = None
        if label is not None:
            wanted = parse_class(label, audit_store.get_audit(s, audit_id).dataset.class_names)
        result = finding_store.query_findings(
            s, audit_id, kind=kind, label=wanted, decision=decision, order=order,
            offset=(page - 1) * top, limit=top, flagged=True if flagged else None,
        )  # fmt: skip
        ctx = context_for(s, audit_id, [f for f, _ in result.rows])
        docs = [finding_doc(f, ctx, r) for f, r in result.rows]
    if json_output:
        print_json(docs)
        return
    kinds = {d["kind"] for d in docs}
    table = Table("id", "rank", *(["kind"] if len(kinds) > 1 else []))
    # a file path is what a reviewer copies: never wrapped, the other columns give way
    table.add_column("file", no_wrap=True, min_width=max([len(d["locator"] or "") for d in docs] + [4]))
    score_name = docs[0]["score_label"] if docs else "score"
    for name in ("label", "suggested", score_name, "decision"):
        table.add_column(name)
    for d in docs:
        dec = d["decision"]
        shown = "" if dec is None else dec["decision"] + (
            f" -> {dec['new_label_name']}" if dec["decision"] == "relabelled" else ""
        ) + f" ({dec['reviewer']})"
        suggested = d["payload"].get("suggested_label")
        table.add_row(
            str(d["id"]), str(d["rank"]), *([d["kind"]] if len(kinds) > 1 else []), d["locator"] or "", label_text(d["label"], ctx),
            label_text(suggested, ctx) if suggested is not None else "", f"{d['score']:.4g}", shown,
        )
    out_console.print(table)
    shown_to = (page - 1) * top + len(docs)
    err_console.print(
        f"{len(docs) and (page - 1) * top + 1}-{shown_to} of {result.total}"
        + (f"; next: --page {page + 1}" if shown_to < result.total else "")
    )


@app.command("show")
@user_errors
def show(finding_id: int, json_output: JsonOption = False) -> None:
    """One finding with its example (drawn when it is an image), why it was flagged, and the
    example's decision history."""
    from auditor import reviewing
    from auditor.cli.render import image_to_text
    from auditor.errors import DataError
    from auditor.findings_view import SCORE_LABELS, dataset_examples, label_text, load_example
    from auditor.store import findings as finding_store
    from auditor.store import open_store

    sessions = open_store()
    found, is_image = None, False
    with sessions() as s:
        f = finding_store.get_finding(s, finding_id)
        detail = reviewing.finding_detail(s, finding_id)
        doc, ctx = detail.doc, detail.ctx
        # The example itself is only drawn for people, and only if its file is still there:
        # the finding and its decision live in the database and never need the dataset.
        if not json_output and f.example_index >= 0 and out_console.is_terminal:
            try:
                examples, _ = dataset_examples(s, f.audit_id, data=data_options())
                found, is_image = load_example(examples, f), examples.is_image
            except DataError as exc:
                err_console.print(styled((f"cannot show the example: {exc}", "yellow")))
    if json_output:
        print_json(doc)
        return
    out_console.print(f"finding {doc['id']} (audit {doc['audit_id']}, {doc['kind']}, rank {doc['rank']})")
    if found is not None and is_image:
        out_console.print(image_to_text(found[0]))
    p = doc["payload"]
    out_console.print(f"  file: {doc['locator']}   (data set {doc['dataset']})")
    out_console.print(f"  label: {label_text(doc['label'], ctx)}")
    if "suggested_label" in p:
        out_console.print(f"  suggested label: {label_text(p['suggested_label'], ctx)}")
    out_console.print(f"  {doc['score_label']} (the ranking's score): {doc['score']:.4g}")
    if doc["kind"] == "label":
        out_console.print("  flagged: " + ("yes, one of the estimated wrong labels" if doc["flagged"] else "no, ranked only"))
    if p.get("fix_value"):
        out_console.print(f"  {fix_value_text(p['fix_value'])}")
    for k, v in p.items():
        if k not in ("why", "suggested_label", "why_total_abs_influence", "probs", "loo_probs", "fix_value"):
            shown = f"{v:.4g}" if isinstance(v, float) else v
            out_console.print(f"  {SCORE_LABELS.get(k, k.replace('_', ' '))} ({k}): {shown}")
    words = {"helpful": "supports the given label", "harmful": "argues against it", "nearest": "nearest in input"}
    for kind, rows in (doc.get("why") or {}).items():
        listed = ", ".join(
            f"{r['locator']} ({r['label_name']}{', flagged' if r['flagged'] else ''}, "
            + (f"{r['share']:.1f}%" if r["share"] is not None else f"{r['influence']:+.3g}") + ")"
            for r in rows[:5]
        )
        out_console.print(f"  {kind} ({words.get(kind, kind)}): {listed}")
    if doc.get("kind") == "label" and not doc.get("why"):
        out_console.print("  why: not computed for this finding (the label check explains its flagged findings, at most --why-top)")
    dec = doc["decision"]
    out_console.print(
        "  decision: none" if dec is None else
        f"  decision: {dec['decision']}" + (f" -> {label_text(dec['new_label'], ctx)}" if dec["new_label"] is not None else "")
        + f" by {dec['reviewer']} (version {dec['version']})"
    )  # fmt: skip
    for e in doc["history"]:
        extra = f" -> {label_text(e['label'], ctx)}" if e["label"] is not None else ""
        out_console.print(f"    {e['at'][:19]}  {e['reviewer'] or '-'}: {e['decision']}{extra}" + (f"  ({e['note']})" if e["note"] else ""))


def fix_value_text(fix: dict) -> str:
    """A label finding's `fix_value` in one line: the predicted change of the test loss and of
    the accuracy (in percentage points) for relabelling to the suggestion and for removing."""

    def part(name: str) -> str:
        v = fix.get(name) or {}
        loss, acc = v.get("test_loss"), v.get("test_accuracy")
        loss_text = "?" if loss is None else f"{loss:+.2g}"
        acc_text = "?" if acc is None else f"{100 * acc:+.2f} pp"
        return f"{name} → test loss {loss_text}, accuracy {acc_text}"

    return f"fixing it: {part('relabel')}; {part('remove')} (predicted on {fix.get('evaluated_on', '?')})"


@app.command("export")
@user_errors
def export(
    audit_id: int,
    out: Annotated[Path, typer.Option("--out", help="labels.csv or labels.json")],
    manifest: Annotated[bool, typer.Option("--manifest", help="Write only the relabel manifest: path, old label, new label, reviewer, time")] = False,
    corrected_tree: Annotated[Path | None, typer.Option("--corrected-tree", help="ImageFolder data sets: also write a corrected copy of the folder tree here")] = None,
    json_output: JsonOption = False,
) -> None:
    """Every example with original label, decision, corrected label, class names and file,
    ready to train on; or (--manifest) just the examples whose label changes."""
    from auditor.findings_view import (
        MANIFEST_COLUMNS,
        export_rows,
        manifest_rows,
        write_corrected_tree,
        write_export,
    )
    from auditor.store import open_store

    check_out_path(out)
    sessions = open_store()
    with sessions() as s:
        rows = export_rows(s, audit_id)
        moved = None
        if corrected_tree is not None:
            moved = write_corrected_tree(s, audit_id, rows, corrected_tree)
    decided = sum(1 for r in rows if r["decision"])
    written = manifest_rows(rows) if manifest else rows
    write_export(written, out, MANIFEST_COLUMNS if manifest else None)
    doc = {"out": str(out), "rows": len(written), "decided": decided}
    if corrected_tree is not None:
        doc.update(corrected_tree=str(corrected_tree), moved=moved)
    if json_output:
        print_json(doc)
        return
    what = "relabelled examples" if manifest else f"rows ({decided} decided)"
    out_console.print(f"wrote {len(written)} {what} to {out}")
    if corrected_tree is not None:
        out_console.print(f"wrote the corrected folder tree to {corrected_tree} ({moved} files moved to another class)")
