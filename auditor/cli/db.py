"""`auditor db ...` commands: schema migrations.

An embedded SQLite database upgrades itself on first use; PostgreSQL needs `auditor db upgrade`
once per release, run by whoever operates the service.
"""

from __future__ import annotations

from typing import Annotated

import typer

from auditor.cli.common import out_console, print_json, user_errors
from auditor.config import get_settings
from auditor.store.db import check_connection, make_engine, redact
from auditor.store.migrate import current_revision, head_revision, upgrade

app = typer.Typer(no_args_is_help=True, help="Database schema: upgrade, show the revision.")

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]


@app.command("upgrade")
@user_errors
def upgrade_command(json_output: JsonOption = False) -> None:
    """Create or upgrade the schema of the configured database to the newest revision."""
    url = get_settings().database_url
    revision = upgrade(url)
    if json_output:
        print_json({"database": redact(url), "revision": revision, "head": head_revision()})
    else:
        out_console.print(f"database {redact(url)} is at revision {revision} (head)")


@app.command("current")
@user_errors
def current_command(json_output: JsonOption = False) -> None:
    """Show the configured database's schema revision and whether it is current."""
    url = get_settings().database_url
    engine = make_engine(url)
    try:
        check_connection(engine)
        current = current_revision(engine)
    finally:
        engine.dispose()
    head = head_revision()
    doc = {
        "database": redact(url),
        "revision": current,
        "head": head,
        "up_to_date": current == head,
    }
    if json_output:
        print_json(doc)
    elif current == head:
        out_console.print(f"database {redact(url)} is at revision {current} (head)")
    else:
        out_console.print(
            f"database {redact(url)} is at revision {current or 'none'}, head is {head}: "
            "run `auditor db upgrade`"
        )
