"""`auditor review ...`: walk the queue of unsettled findings, best-ranked first, and decide."""

from __future__ import annotations

import getpass
import sys
from pathlib import Path
from typing import Annotated

import typer

from auditor.cli.common import (
    data_options,
    err_console,
    out_console,
    print_json,
    styled,
    user_errors,
)
from auditor.errors import AuditorError

app = typer.Typer(no_args_is_help=True, help="Review findings: next, decide, undo.")
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


PasswordFileOption = Annotated[
    Path | None,
    typer.Option(
        "--password-file",
        help="Once users exist: a file whose first line is the reviewer's password (for scripts; "
        "or $AUDITOR_REVIEWER_PASSWORD; on a terminal it is asked)",
    ),
]


def _identity(sessions, name: str | None, password_file: Path | None) -> tuple[str, int | None]:
    """(reviewer name, user id) a CLI decision is recorded under. With no users registered (a
    single-user install), the name as given, else $AUDITOR_REVIEWER, else the login name. Once
    users exist, the reviewer must be one who may decide and must prove it with their password
    (`--password-file`, $AUDITOR_REVIEWER_PASSWORD, or asked on a terminal): a name alone would
    let anyone with the CLI decide as anyone. Nothing is decided before this returns."""
    from auditor import auth
    from auditor.config import get_settings
    from auditor.datasets import check_lookup_name

    settings = get_settings()
    who = name or settings.reviewer or getpass.getuser()
    check_lookup_name(who, "reviewer")
    with sessions() as s:
        if not auth.has_users(s):
            return who, None
        recorded = auth.cli_reviewer(s, who)
    password = _password(who, password_file, settings.reviewer_password)  # no session held while asking
    # the web's sign-in: hashed with no transaction open, and failures count against the same
    # limits (address "cli"), so the CLI is no way around them
    try:
        signed = auth.sign_in(
            sessions, who, password, "cli", auth.LoginLimits.from_settings(settings), lambda s, u: ""
        )
    except auth.SignInLocked as exc:
        raise AuditorError(f"{exc}; nothing was decided") from None
    if signed is None:
        raise AuditorError(f"wrong password for reviewer {who!r}; nothing was decided")
    return recorded


def _password(who: str, password_file: Path | None, from_env: str | None) -> str:
    """The reviewer's password: the first line of `password_file`, else the environment's, else
    asked on a terminal; a one-line error when there is none (a script without a terminal)."""
    if password_file is not None:
        try:
            lines = password_file.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise AuditorError(f"cannot read --password-file {password_file}: {reason}") from None
        if not lines or not lines[0]:
            raise AuditorError(f"--password-file {password_file} is empty")
        return lines[0]
    if from_env is not None:
        return from_env
    if sys.stdin.isatty():
        return getpass.getpass(f"password for reviewer {who}: ")
    raise AuditorError(
        f"reviewer {who!r} must give their password once users exist: pass --password-file FILE "
        "or set AUDITOR_REVIEWER_PASSWORD (on a terminal it is asked)"
    )


def _decision(confirm: bool, relabel: str | None, dismiss: bool) -> str:
    chosen = [c for c in (confirm, relabel is not None, dismiss) if c]
    if len(chosen) != 1:
        raise AuditorError("choose exactly one of --confirm, --relabel L, --dismiss")
    return "confirmed" if confirm else "dismissed" if dismiss else "relabelled"


def _readable_examples(s, audit_id: int, purpose: str):
    """The data set an audit ran on, or None if it cannot be read (moved or deleted): review then
    goes on from the stored scores, and an integer label is taken as given."""
    from auditor.errors import DataError
    from auditor.findings_view import dataset_examples

    try:
        return dataset_examples(s, audit_id, data=data_options())[0]
    except DataError as exc:
        err_console.print(styled((f"cannot {purpose}: {exc}", "yellow")))
        return None


@app.command("decide")
@user_errors
def decide(
    finding_id: int,
    confirm: Annotated[bool, typer.Option("--confirm", help="The label is wrong; the suggested label is right")] = False,
    relabel: Annotated[str | None, typer.Option("--relabel", help="The label is wrong; this is the right one (class index or name)")] = None,
    dismiss: Annotated[bool, typer.Option("--dismiss", help="The label is right; keep it")] = False,
    note: Annotated[str | None, typer.Option(help="Free-text note")] = None,
    reviewer: Annotated[str | None, typer.Option(help="Reviewer name (default: $AUDITOR_REVIEWER or user)")] = None,
    version: Annotated[int | None, typer.Option(help="Change an existing decision of this version")] = None,
    password_file: PasswordFileOption = None,
    json_output: JsonOption = False,
) -> None:
    """Record a decision about the example behind a finding (for scripts)."""
    from auditor import reviewing
    from auditor.datasets import check_free_text
    from auditor.errors import Conflict
    from auditor.store import findings as finding_store
    from auditor.store import open_store

    decision = _decision(confirm, relabel, dismiss)
    if note is not None:  # argv bytes that are not UTF-8 arrive as lone surrogates
        check_free_text(note, "the note")
    sessions = open_store()
    who, user_id = _identity(sessions, reviewer, password_file)
    examples = None
    if relabel is not None:  # read before the transaction: reading a data set may take seconds
        with sessions() as s:
            audit_id = finding_store.get_finding(s, finding_id).audit_id
            examples = _readable_examples(s, audit_id, "check the label against the data set")
    try:
        with sessions() as s, s.begin():
            r = reviewing.decide(
                s, finding_id, decision, relabel, reviewer=who, user_id=user_id, note=note,
                expected_version=version, examples=examples,
            )  # fmt: skip
            new_label = r.new_label
            doc = {
                "finding_id": finding_id, "example_key": r.example_key, "decision": r.decision,
                "new_label": r.new_label, "reviewer": r.reviewer, "version": r.version,
            }  # fmt: skip
    except Conflict as exc:
        raise Conflict(f"{exc}{_version_hint(sessions, finding_id)}") from None
    if json_output:
        print_json(doc)
    else:
        out_console.print(f"finding {finding_id}: {decision}" + (f" -> {new_label}" if new_label is not None else ""))


@app.command("undo")
@user_errors
def undo(
    finding_id: int,
    reviewer: Annotated[str | None, typer.Option(help="Reviewer name (default: $AUDITOR_REVIEWER or user)")] = None,
    version: Annotated[int | None, typer.Option(help="Only if the standing decision is still this version")] = None,
    password_file: PasswordFileOption = None,
    json_output: JsonOption = False,
) -> None:
    """Withdraw the decision standing on the finding's example; the one before it (if any)
    stands again. The history keeps both."""
    from auditor import reviewing
    from auditor.store import open_store

    sessions = open_store()
    who, user_id = _identity(sessions, reviewer, password_file)
    with sessions() as s, s.begin():
        r = reviewing.undo(s, finding_id, reviewer=who, user_id=user_id, expected_version=version)
        doc = {"finding_id": finding_id, "decision": None if r is None else r.decision,
               "new_label": None if r is None else r.new_label, "version": None if r is None else r.version}  # fmt: skip
    if json_output:
        print_json(doc)
    else:
        out_console.print(f"finding {finding_id}: undone; standing now: {doc['decision'] or 'no decision'}")


def _version_hint(sessions, finding_id: int) -> str:
    """How to overwrite the decision that is there now (scripts can't see it otherwise)."""
    from auditor.store import audits as audit_store
    from auditor.store import findings as finding_store
    from auditor.store import reviews as review_store

    with sessions() as s:
        f = finding_store.get_finding(s, finding_id)
        review = review_store.get_review(s, audit_store.get_audit(s, f.audit_id).dataset_id, f.example_key)
    return f"; to change it, pass --version {review.version}" if review is not None else ""


@app.command("next")
@user_errors
def next_finding(
    audit_id: Annotated[int | None, typer.Argument(help="Audit to review (default: newest succeeded)")] = None,
    reviewer: Annotated[str | None, typer.Option(help="Reviewer name")] = None,
    password_file: PasswordFileOption = None,
    json_output: JsonOption = False,
) -> None:
    """Show the top unsettled finding and take a decision; repeat until you quit.

    With --json, print the next unsettled finding (or null) and exit.
    """
    from auditor import reviewing
    from auditor.cli.render import image_to_text
    from auditor.errors import Conflict
    from auditor.findings_view import context_for, finding_doc, label_text, load_example
    from auditor.store import open_store

    sessions = open_store()
    examples = None
    identity: tuple[str, int | None] | None = None  # proved at the first decision, once
    skipped: set[int] = set()
    draw = out_console.is_terminal  # half-block pictures mean nothing in a pipe or a file
    if not json_output and not draw:
        err_console.print(
            "stdout is not a terminal: examples are not drawn (open them in `auditor serve`; "
            "scripts use `auditor review next --json` and `review decide`)"
        )
    while True:
        with sessions() as s:
            # skip = later, within this session only
            f = reviewing.next_to_review(s, audit_id, exclude=skipped)
            if f is None:
                if json_output:
                    print_json(None)
                else:
                    out_console.print("nothing left to review")
                return
            ctx = context_for(s, f.audit_id, [f])
            doc = finding_doc(f, ctx)
            if json_output:
                print_json(doc)
                return
            if examples is None:  # read once; False: not readable, do not try again
                examples = _readable_examples(s, f.audit_id, "show examples") or False
            found = load_example(examples, f) if examples else None
        out_console.rule(f"finding {f.id}  rank {f.rank}  {doc['locator']}")
        if draw and found is not None and examples and examples.is_image:
            out_console.print(image_to_text(found[0]))
        p = doc["payload"]
        out_console.print(
            styled(
                "label ", (label_text(f.label, ctx), "bold"), "   suggested ", (label_text(p.get("suggested_label"), ctx), "bold"),
                f"   {doc.get('score_label', 'score')} {f.score:.4g}"
                f"   left-out prob. of given label {p.get('loo_prob_label', float('nan')):.3f}",
            )
        )
        answer = typer.prompt("[c]onfirm suggested / [r]elabel / [d]ismiss / [s]kip / [q]uit", default="s")
        answer = answer.strip().lower()[:1]
        if answer == "q":
            return
        if answer == "s":
            skipped.add(f.id)
            continue
        try:
            if answer == "c":
                decision, new_label = "confirmed", None
            elif answer == "d":
                decision, new_label = "dismissed", None
            elif answer == "r":
                new_label = typer.prompt("new label (class index or name)")
                decision = "relabelled"
            else:
                err_console.print("type c, r, d, s or q")
                continue
            identity = identity or _identity(sessions, reviewer, password_file)
            who, user_id = identity
            with sessions() as s, s.begin():
                reviewing.decide(
                    s, f.id, decision, new_label, reviewer=who, user_id=user_id, examples=examples or None
                )  # fmt: skip
        except (Conflict, AuditorError) as exc:
            err_console.print(styled((str(exc), "yellow")))
