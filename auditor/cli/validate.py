"""`auditor validate`: influence predictions against real leave-one-out retraining."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from auditor.cli.audit_options import with_model_options
from auditor.cli.common import err_console, print_json, user_errors
from auditor.cli.progress import progress_bar


@user_errors
@with_model_options
def validate_command(
    dataset: Annotated[str, typer.Argument(help="An .npz/.csv path or image folder, or a registered dataset name")],
    test: Annotated[str | None, typer.Option(help="Test set (path or name); default: hold out 20% of DATASET")] = None,
    test_index: Annotated[int | None, typer.Option(help="Test point to explain (default: a misclassified one)")] = None,
    retrains: Annotated[int, typer.Option(help="How many leave-one-out retrains (the K most influential points)")] = 30,
    plot: Annotated[Path | None, typer.Option(help="Write a predicted-vs-actual scatter plot (PNG) here")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout")] = False,
    audit: dict[str, Any] | None = None,
) -> None:
    """Predict the change in a test point's loss from removing each of the K most influential
    training points, retrain without each, and report Pearson and Spearman r.

    Takes the model and solver options of `auditor audit run` (the same declarations)."""
    from auditor.analyses.registry import spec_params
    from auditor.analyses.settings import parse_specs
    from auditor.analyses.validate import ValidationConfig, scatter_plot, validate
    from auditor.resolve import resolve_examples

    model, solver = parse_specs(spec_params(audit or {}))
    train_set = resolve_examples(dataset)
    test_set = resolve_examples(test) if test else None
    cfg = ValidationConfig(model=model, solver=solver, test_index=test_index, retrains=retrains, seed=model.seed)
    from auditor.factories import local_models

    # validate runs here, for the person who typed it: an explicit MODULE:FACTORY is their code
    with progress_bar("validate", enabled=True) as progress, local_models():
        report = validate(train_set, test_set, cfg, progress)
    if plot is not None:
        scatter_plot(report, plot)
    if as_json:
        doc = {
            "pearson": report.pearson,
            "spearman": report.spearman,
            "retrains": report.retrains,
            "solver": report.solver,
            "model": report.model,
            "damping": report.damping,
            "test_index": report.test_index,
            "plot": str(plot) if plot else None,
            "points": [
                {"train_index": i, "predicted": p, "actual": a}
                for i, p, a in zip(report.train_indices, report.predicted, report.actual, strict=True)
            ],
        }
        print_json(doc)
        return
    err_console.print(
        f"test point {report.test_index} (label {report.test_label}, predicted {report.test_pred}, "
        f"loss {report.test_loss:.3f}); {report.retrains} leave-one-out retrains"
    )
    typer.echo(
        f"{report.model} / {report.solver} (damping {report.damping:g}): "
        f"Pearson r = {report.pearson:.4f}, Spearman r = {report.spearman:.4f}"
    )
    if plot is not None:
        typer.echo(f"scatter plot: {plot}")
