"""`auditor report AUDIT --out report.html`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from auditor.cli.common import check_out_path, out_console, print_json, user_errors, write_text_file


@user_errors
def report_command(
    audit_id: int,
    out: Annotated[Path, typer.Option("--out", help="Where to write the HTML file")] = Path("report.html"),
    truth: Annotated[Path | None, typer.Option(help="JSON with the indices of known wrong labels (the demo writes one)")] = None,
    top: Annotated[int, typer.Option(min=1, help="Thumbnails of the top N flagged examples")] = 40,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout")] = False,
) -> None:
    """Write one self-contained HTML report (thumbnails, histograms, recall curve, galleries)."""
    from auditor.config import get_settings
    from auditor.report.html import build_report
    from auditor.store import open_store

    check_out_path(out)
    settings = get_settings()
    sessions = open_store(settings.database_url)
    with sessions() as s:
        page = build_report(s, audit_id, truth, top, settings=settings)
    write_text_file(out, page)
    if json_output:
        print_json({"out": str(out), "bytes": len(page)})
    else:
        out_console.print(f"wrote {out} ({len(page) // 1024} KiB)")
