"""`auditor demo`: the first thing to run after installing."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from auditor.cli.common import out_console, print_json, styled, user_errors
from auditor.cli.progress import progress_bar


@user_errors
def demo_command(
    fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Fraction of labels to flip")
    ] = 0.1,
    model: Annotated[str, typer.Option(help="logreg | mlp | cnn")] = "logreg",
    seed: Annotated[int, typer.Option(help="Seed for the flips and training")] = 0,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout")] = False,
) -> None:
    """Flip a fraction of sklearn's digits labels, run a label-check audit, and show how many
    flips the top of the review queue catches (vs ranking by self-influence and training loss)."""
    from auditor.config import get_settings
    from auditor.demo import run_demo
    from auditor.findings_view import context_for, finding_doc, label_text
    from auditor.store import audits as audit_store
    from auditor.store import findings as finding_store
    from auditor.store import open_store

    settings = get_settings()
    sessions = open_store(settings.database_url)
    with progress_bar("demo label-check", enabled=True) as bar:
        result = run_demo(sessions, fraction, model, seed, echo=bar, settings=settings)
    with sessions() as s:
        rows = finding_store.list_findings(s, result.audit_id, top=10)
        ctx = context_for(s, result.audit_id, rows)
        top = [finding_doc(f, ctx) for f in rows]
        summary = audit_store.get_audit(s, result.audit_id).summary or {}
        ranked_by = summary.get("rank_by", "score")
        estimate = summary.get("estimate")
        flagged_rows = {f.example_index for f in finding_store.list_findings(s, result.audit_id, kind="label", flagged=True)}
    flipped = set(__import__("json").loads(result.truth_path.read_text())["flipped_indices"])
    doc = {
        "audit_id": result.audit_id,
        "status": result.status,
        "error": result.error,
        "n": result.n,
        "flipped": result.flipped,
        "recall": {f"{k:.0%}": v for k, v in result.recall.items()},
        "recall_by_loss": {f"{k:.0%}": v for k, v in result.recall_loss.items()},
        "recall_by_self_influence": {
            f"{k:.0%}": v for k, v in result.recall_self_influence.items()
        },
        "truth": str(result.truth_path),
        "rank_by": ranked_by,
        "estimate": estimate,
        # the flagged set against the planted flips: how good the review workload is
        "flagged_planted": len(flagged_rows & flipped),
        "top": [{**d, "flipped": d["example_index"] in flipped} for d in top],
    }
    if json_output:
        print_json(doc)
    elif result.status != "succeeded":
        out_console.print(styled((f"demo audit {result.audit_id} {result.status}: ", "red"), result.error or ""))
    else:
        t = Table("rank", "finding", "example", "label", "suggested", ranked_by, "planted flip?")
        for d in doc["top"]:
            t.add_row(str(d["rank"]), str(d["id"]), d["locator"], label_text(d["label"], ctx),
                      label_text(d["payload"]["suggested_label"], ctx), f"{d['score']:.3g}", "yes" if d["flipped"] else "")
        out_console.print(t)
        r = doc["recall"]
        out_console.print(
            f"{result.flipped} of {result.n} labels were flipped. Checking the top 10% of the queue "
            f"(by {ranked_by}) finds {r['10%']:.0%} of them (5%: {r['5%']:.0%}, 20%: {r['20%']:.0%}, "
            f"30%: {r['30%']:.0%}); by self-influence: {doc['recall_by_self_influence']['10%']:.0%}, "
            f"by training loss: {doc['recall_by_loss']['10%']:.0%} at 10%."
        )
        if estimate:
            from auditor.analyses.label_noise import estimate_text

            out_console.print(
                f"{estimate_text(estimate)} ({doc['flagged_planted']} of them planted flips; "
                f"{result.flipped} were planted).",
                markup=False,
            )
        out_console.print(
            f"next: `auditor review next {result.audit_id}`, "
            f"`auditor report {result.audit_id} --out report.html --truth {result.truth_path}`, "
            f"or in a browser: `auditor user add NAME --role reviewer` then `auditor serve` and open "
            f"http://127.0.0.1:8000/audits/{result.audit_id}"
        )
    if result.status != "succeeded":
        raise typer.Exit(1)
