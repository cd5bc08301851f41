"""`auditor review rerank AUDIT`: re-rank what is left of an audit's queue by the decisions made."""

from __future__ import annotations

from typing import Annotated

import typer

from auditor.cli.common import out_console, print_json, styled, user_errors

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


@user_errors
def rerank_command(
    audit_id: Annotated[int, typer.Argument(help="A succeeded label-check audit")],
    json_output: JsonOption = False,
) -> None:
    """Re-rank the undecided findings of an audit with a calibration fitted on its decisions
    (decided findings keep their place); refused in one line with too few decisions."""
    from auditor.rerank import rerank
    from auditor.store import open_store

    sessions = open_store()
    with sessions() as s, s.begin():
        record = rerank(s, audit_id)
    if json_output:
        print_json({"audit_id": audit_id, "rerank": record})
        return
    out_console.print(styled(f"audit {audit_id}: queue re-ranked: {record['reason']}"))
