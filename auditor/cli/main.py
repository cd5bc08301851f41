"""Entry point of the `auditor` command: joins one Typer app per command group."""

from __future__ import annotations

import typer

from auditor.cli import audit, dataset, db, findings, review, schedule
from auditor.cli.audit_diff import diff_command
from auditor.cli.demo import demo_command
from auditor.cli.report import report_command
from auditor.cli.validate import validate_command
from auditor.cli.worker import worker_command

app = typer.Typer(
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
app.command("beat")(schedule.beat_command)
audit.app.command("diff")(diff_command)
app.command("validate")(validate_command)
app.command("demo")(demo_command)
app.command("worker")(worker_command)
app.command("report")(report_command)

if __name__ == "__main__":  # pragma: no cover
    app()
