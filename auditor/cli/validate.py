"""`auditor validate`: influence predictions against real leave-one-out retraining."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from auditor.cli.common import err_console, print_json, user_errors
from auditor.cli.progress import progress_bar


@user_errors
def validate_command(
    dataset: Annotated[str, typer.Argument(help="An .npz/.csv path or image folder, or a registered dataset name")],
    test: Annotated[str | None, typer.Option(help="Test set (path or name); default: hold out 20% of DATASET")] = None,
    model: Annotated[str, typer.Option(help="logreg | mlp | cnn | MODULE:FACTORY")] = "logreg",
    weights: Annotated[str | None, typer.Option(help="Weights for MODULE:FACTORY (.safetensors or weights-only .pt)")] = None,
    solver: Annotated[str, typer.Option(help="direct | cg | lissa | arnoldi | ekfac")] = "direct",
    damping: Annotated[float, typer.Option(help="Damping lambda added to the Hessian")] = 0.0,
    lissa_scale: Annotated[float | None, typer.Option(help="LiSSA scale (default: 1.5 x estimated top eigenvalue)")] = None,
    lissa_depth: Annotated[int | None, typer.Option(help="LiSSA recursion depth (default: from the spectrum)")] = None,
    weight_decay: Annotated[float, typer.Option(help="L2 regularisation used in training")] = 0.01,
    test_index: Annotated[int | None, typer.Option(help="Test point to explain (default: a misclassified one)")] = None,
    retrains: Annotated[int, typer.Option(help="How many leave-one-out retrains (the K most influential points)")] = 30,
    plot: Annotated[Path | None, typer.Option(help="Write a predicted-vs-actual scatter plot (PNG) here")] = None,
    seed: Annotated[int, typer.Option(help="Seed for training and the held-out split")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout")] = False,
) -> None:
    """Predict the change in a test point's loss from removing each of the K most influential
    training points, retrain without each, and report Pearson and Spearman r."""
    from auditor.analyses.common import ModelSpec, SolverSpec
    from auditor.analyses.settings import SOLVER_OPTIONS
    from auditor.analyses.validate import ValidationConfig, scatter_plot, validate
    from auditor.resolve import resolve_examples

    given = {"lissa_scale": lissa_scale, "lissa_depth": lissa_depth}
    solver_options = {SOLVER_OPTIONS[k][0]: v for k, v in given.items() if v is not None}
    train_set = resolve_examples(dataset)
    test_set = resolve_examples(test) if test else None
    cfg = ValidationConfig(
        model=ModelSpec(name=model, weights=weights, weight_decay=weight_decay, seed=seed),
        solver=SolverSpec(name=solver, damping=damping, options=solver_options),
        test_index=test_index,
        retrains=retrains,
        seed=seed,
    )
    with progress_bar("validate", enabled=True) as progress:
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
