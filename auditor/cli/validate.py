"""`auditor validate`: influence predictions against real leave-one-out retraining."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from auditor.analyses.validate_settings import VALIDATE_SETTINGS, parse_validate
from auditor.cli.audit_options import with_model_options, with_settings_options
from auditor.cli.common import err_console, print_json, user_errors
from auditor.cli.progress import progress_bar


@user_errors
@with_model_options
@with_settings_options(VALIDATE_SETTINGS, into="options", before="plot")
def validate_command(
    dataset: Annotated[str, typer.Argument(help="An .npz/.csv path or image folder, or a registered dataset name")],
    test: Annotated[str | None, typer.Option(help="Test set (path or name); default: hold out 20% of DATASET")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a plot (PNG): loo scatter, or lds histogram")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout")] = False,
    options: dict[str, Any] | None = None,
    audit: dict[str, Any] | None = None,
) -> None:
    """Check influence against retraining: leave-one-out on the K most influential training points
    of one test point (loo), or the linear datamodeling score over random half-subsets (lds).

    Takes the model and solver options of `auditor audit run` (the same declarations)."""
    from auditor.analyses.registry import spec_params
    from auditor.config import get_settings
    from auditor.factories import listed_factories, local_models
    from auditor.resolve import resolve_examples

    metric, cfg = parse_validate({**spec_params(audit or {}), **(options or {})})
    settings = get_settings()
    train_set = resolve_examples(dataset, settings)
    test_set = resolve_examples(test, settings) if test else None
    if metric == "lds":
        # paths as workers on a shared volume see them; registered names as they are
        refs = tuple(str(Path(r).resolve()) if r and Path(r).exists() else r for r in (dataset, test))
        _lds(train_set, test_set, cfg, plot, as_json, refs, settings)
        return
    from auditor.analyses.validate import scatter_plot, validate

    # validate runs here, for the person who typed it: an explicit MODULE:FACTORY is their code
    with progress_bar("validate", enabled=True) as progress, listed_factories(settings.model_factories), local_models():
        report = validate(train_set, test_set, cfg, progress)
    if plot is not None:
        scatter_plot(report, plot)
    if as_json:
        doc = {
            "metric": "loo",
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


def _lds(train_set, test_set, cfg, plot, as_json, refs, settings) -> None:
    """LDS; with a broker configured the retrains go to the workers, one task per subset (they
    must see the same data set: a registered name, or a path on a shared volume)."""

    from auditor.analyses.lds import histogram_plot
    from auditor.lds_jobs import job, measure_lds

    outcomes_fn = None
    if not settings.embedded:
        from workers.dispatch import check_broker, lds_on_workers

        check_broker()
        outcomes_fn = lds_on_workers(job(refs[0], refs[1], cfg))
    with progress_bar("validate lds", enabled=True) as progress:
        report = measure_lds(train_set, test_set, cfg, refs[0], progress, settings=settings, outcomes_fn=outcomes_fn)
    if plot is not None:
        histogram_plot(report, plot)
    if as_json:
        print_json({**report.to_json(), "plot": str(plot) if plot else None, "recorded": bool(report.sweep)})
        return
    if report.sweep:
        for row in report.sweep:
            typer.echo(f"damping {row['damping']:<8g} LDS {row['lds']:.4f}")
        typer.echo(
            f"best damping {report.damping:g}: recorded; audits of this model on {refs[0]} use it unless "
            "given --damping"
        )
    typer.echo(
        f"{report.model} / {report.solver} (damping {report.damping:g}): LDS = {report.lds:.4f} over "
        f"{len(report.test_indices)} test points and {report.subsets} retrains on half-subsets"
    )
    if plot is not None:
        typer.echo(f"histogram: {plot}")
