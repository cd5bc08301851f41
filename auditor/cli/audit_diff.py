"""`auditor audit diff A B`: newly flagged, no longer flagged and settled examples."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from auditor.cli.common import out_console, print_json, user_errors


@user_errors
def diff_command(
    audit_a: Annotated[int, typer.Argument(help="The earlier audit")],
    audit_b: Annotated[int, typer.Argument(help="The later audit (same dataset and kind)")],
    top: Annotated[
        str,
        typer.Option(
            help="Flagged = this top share of each audit's findings (10%) or a count (50)"
        ),
    ] = "10%",
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON document on stdout.")
    ] = False,
) -> None:
    """Compare what two audits of one dataset flag: newly flagged in B, no longer flagged, settled.

    An example is flagged when its finding ranks within the top --top of its audit's findings
    (per finding kind); for a label check, the share of examples a reviewer would check first.
    """
    from auditor.audit_diff import diff_audits
    from auditor.store import open_store

    with open_store()() as s:
        doc = diff_audits(s, audit_a, audit_b, top)
    if json_output:
        print_json(doc)
        return
    a, b = doc["a"], doc["b"]
    out_console.print(
        f"audit {a['id']} -> {b['id']} ({b['kind']} on {b['dataset']}), flagged = top {doc['top']}: "
        f"{len(doc['newly_flagged'])} newly flagged, {len(doc['no_longer_flagged'])} no longer, "
        f"{doc['still_flagged']} still flagged, {len(doc['settled'])} settled"
    )
    _table("newly flagged in B", doc["newly_flagged"], "rank_in_a")
    _table("no longer flagged", doc["no_longer_flagged"], "rank_in_b")


def _table(title: str, rows: list[dict[str, Any]], other: str) -> None:
    if not rows:
        return
    table = Table(
        "finding", "example", "label", "rank", other.replace("_", " "), "settled", title=title
    )
    for r in rows:
        other_rank = (
            r[other] if r[other] is not None else ("gone" if r.get("in_b") is False else "new")
        )
        table.add_row(
            str(r["finding_id"]),
            str(r["example_index"]),
            str(r["label"]),
            str(r["rank"]),
            str(other_rank),
            r["settled"] or "",
        )
    out_console.print(table)
