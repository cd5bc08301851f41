"""Entry point of the `auditor` command: joins one Typer app per command group."""

from __future__ import annotations

import sys
import warnings
from typing import Any

import click
import typer
from typer.core import TyperGroup

from auditor.cli import artifacts, audit, dataset, db, findings, review, schedule, user
from auditor.cli.audit_diff import diff_command
from auditor.cli.common import err_console, error_line
from auditor.cli.demo import demo_command
from auditor.cli.report import report_command
from auditor.cli.rerank import rerank_command
from auditor.cli.serve import serve_command
from auditor.cli.validate import validate_command
from auditor.cli.verify import verify_command
from auditor.cli.worker import worker_command

# Raised inside torch itself when vmap first imports some of its submodules; nothing of ours uses
# torch.jit, and a user cannot act on it (the test suite ignores it the same way).
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)

try:  # typer 0.2x vendors click as typer._click; older ones raise click's own exceptions
    from typer._click import exceptions as _vendored
except ImportError:  # pragma: no cover
    _vendored = click.exceptions
ABORT = (click.exceptions.Abort, typer.Abort)
CLICK_ERRORS = (click.ClickException, _vendored.ClickException)
# `auditor audit` with nothing after it: shown as help, not as an error line
SHOW_AS_IS = tuple(m.NoArgsIsHelpError for m in (click.exceptions, _vendored) if hasattr(m, "NoArgsIsHelpError"))


class OneLineErrors(TyperGroup):
    """The root command, with every usage error (unknown option, a value of the wrong type, a
    missing argument) as one line on stderr and exit code 2, like every other error here, instead
    of click's usage box: scripts and people read the same single line."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except ABORT:
            err_console.print(error_line("aborted"), soft_wrap=True)
            sys.exit(1)
        except SHOW_AS_IS as exc:  # `auditor audit` with nothing after it: the help, as help
            exc.show()
            sys.exit(exc.exit_code)
        except CLICK_ERRORS as exc:
            hint = f" (see `{exc.ctx.command_path} --help`)" if getattr(exc, "ctx", None) else ""
            err_console.print(error_line(exc.format_message() + hint), soft_wrap=True)
            sys.exit(exc.exit_code)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    cls=OneLineErrors,
    no_args_is_help=True,
    help="Audit ML training sets with influence functions: find mislabelled examples, explain "
    "predictions, diagnose domain mismatch, probe training-set attacks.",
    pretty_exceptions_enable=False,
)
app.add_typer(db.app, name="db")
app.add_typer(dataset.app, name="dataset")
app.add_typer(audit.app, name="audit")
app.add_typer(findings.app, name="findings")
app.add_typer(review.app, name="review")
app.add_typer(schedule.app, name="schedule")
app.add_typer(user.app, name="user")
app.add_typer(artifacts.app, name="artifacts")
app.command("beat")(schedule.beat_command)
audit.app.command("diff")(diff_command)
review.app.command("rerank")(rerank_command)
audit.app.command("verify")(verify_command)
app.command("validate")(validate_command)
app.command("demo")(demo_command)
app.command("worker")(worker_command)
app.command("report")(report_command)
app.command("serve")(serve_command)

if __name__ == "__main__":  # pragma: no cover
    app()
