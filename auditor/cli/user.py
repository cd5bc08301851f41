"""`auditor user ...`: who may sign in to the review app and decide."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from auditor.cli.common import out_console, print_json, user_errors

app = typer.Typer(no_args_is_help=True, help="Users of the review app: add, list, passwd, role, remove.")
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
RoleOption = Annotated[
    str, typer.Option("--role", help="viewer (reads) | reviewer (also decides) | admin (also manages users)")
]


def _password(password: str | None) -> str:
    if password is not None:
        return password
    return typer.prompt("password", hide_input=True, confirmation_prompt=True)


@app.command("add")
@user_errors
def add(
    name: str,
    role: RoleOption = "reviewer",
    password: Annotated[str | None, typer.Option(help="Password (prompted, hidden, when not given)")] = None,
    json_output: JsonOption = False,
) -> None:
    """Register a user. Every decision is recorded under the user who made it."""
    from auditor.auth import add_user, check_role
    from auditor.datasets import check_name
    from auditor.store import open_store

    check_name(name, "user")
    check_role(role)  # before the prompt: a typo in --role should not cost a password
    secret = _password(password)
    sessions = open_store()
    with sessions() as s, s.begin():
        user = add_user(s, name, role, secret)
        doc = {"id": user.id, "name": user.name, "role": user.role}
    if json_output:
        print_json(doc)
    else:
        out_console.print(f"added {role} {name!r}")


@app.command("list")
@user_errors
def list_(json_output: JsonOption = False) -> None:
    """Registered users and their roles."""
    from auditor.auth import list_users
    from auditor.store import open_store

    with open_store()() as s:
        docs = [{"id": u.id, "name": u.name, "role": u.role, "created_at": u.created_at.isoformat()} for u in list_users(s)]
    if json_output:
        print_json(docs)
        return
    table = Table("name", "role", "added")
    for d in docs:
        table.add_row(d["name"], d["role"], d["created_at"][:19])
    out_console.print(table)


@app.command("passwd")
@user_errors
def passwd(
    name: str,
    password: Annotated[str | None, typer.Option(help="New password (prompted when not given)")] = None,
) -> None:
    """Set a user's password; the user's API tokens and signed-in browsers stop working."""
    from auditor.auth import set_password
    from auditor.store import open_store

    secret = _password(password)
    with open_store()() as s, s.begin():
        set_password(s, name, secret)
    out_console.print(f"password of {name!r} changed")


@app.command("role")
@user_errors
def role(
    name: str,
    new_role: Annotated[str, typer.Argument(metavar="ROLE", help="viewer | reviewer | admin")],
) -> None:
    """Change a user's role; the user's API tokens and signed-in browsers stop working, so they
    sign in again under the new role."""
    from auditor.auth import check_role, set_role
    from auditor.store import open_store

    check_role(new_role)
    with open_store()() as s, s.begin():
        set_role(s, name, new_role)
    out_console.print(f"{name!r} is now a {new_role}")


@app.command("remove")
@user_errors
def remove(name: str) -> None:
    """Remove a user; their past decisions stay in the history under their name, their API
    tokens and signed-in browsers stop working, and their id is never given to another user."""
    from auditor.auth import remove_user
    from auditor.store import open_store

    with open_store()() as s, s.begin():
        remove_user(s, name)
    out_console.print(f"removed {name!r}")
