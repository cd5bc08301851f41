"""`auditor report AUDIT --out report.html`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from auditor.cli.common import out_console, print_json, user_errors


@user_errors
def report_command(
    audit_id: int,
    out: Annotated[Path, typer.Option("--out", help="Where to write the HTML file")] = Path("report.html"),
    truth: Annotated[Path | None, typer.Option(help="JSON with the indices of known wrong labels (the demo writes one)")] = None,
    top: Annotated[int, typer.Option(help="Thumbnails of the top N flagged examples")] = 40,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout")] = False,
) -> None:
    """Write one self-contained HTML report (thumbnails, histograms, recall curve, galleries)."""
    from auditor.report.html import build_report
    from auditor.store import open_store

    sessions = open_store()
    with sessions() as s:
        page = build_report(s, audit_id, truth, top)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    if json_output:
        print_json({"out": str(out), "bytes": len(page)})
    else:
        out_console.print(f"wrote {out} ({len(page) // 1024} KiB)")
