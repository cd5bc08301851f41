"""`auditor validate`: influence predictions against real leave-one-out retraining."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from auditor.cli.audit_options import with_model_options
from auditor.cli.common import err_console, print_json, user_errors
from auditor.cli.progress import progress_bar

METRICS = ("loo", "lds")


def _dampings(text: str | None) -> list[float] | None:
    if text is None:
        return None
    from auditor.errors import DataError

    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DataError(f"--dampings must be comma-separated numbers, got {text!r}") from None
    if not values or any(not (v >= 0) or v == float("inf") for v in values):
        raise DataError(f"--dampings must be finite numbers >= 0, got {text!r}")
    return values


DEFAULT_SWEEP = "0,0.0001,0.001,0.01,0.1,1"


@user_errors
@with_model_options
def validate_command(
    dataset: Annotated[str, typer.Argument(help="An .npz/.csv path or image folder, or a registered dataset name")],
    test: Annotated[str | None, typer.Option(help="Test set (path or name); default: hold out 20% of DATASET")] = None,
    metric: Annotated[str, typer.Option(help="loo: leave-one-out on the top K | lds: linear datamodeling score")] = "loo",
    test_index: Annotated[int | None, typer.Option(help="loo: test point to explain (default: a misclassified one)")] = None,
    retrains: Annotated[int, typer.Option(min=1, help="loo: how many leave-one-out retrains (the K most influential points)")] = 30,
    subsets: Annotated[int, typer.Option(min=3, help="lds: retrains on random half-subsets")] = 50,
    test_points: Annotated[int, typer.Option(min=1, help="lds: test points scored")] = 50,
    sweep_damping: Annotated[bool, typer.Option("--sweep-damping", help=f"lds: score each damping of --dampings (default {DEFAULT_SWEEP}) on the same retrains and pick the best")] = False,
    dampings: Annotated[str | None, typer.Option(help="lds: comma-separated dampings to sweep (implies --sweep-damping)")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a plot (PNG): loo scatter, or lds histogram")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout")] = False,
    audit: dict[str, Any] | None = None,
) -> None:
    """Check influence against retraining: leave-one-out on the K most influential training points
    of one test point (loo), or the linear datamodeling score over random half-subsets (lds).

    Takes the model and solver options of `auditor audit run` (the same declarations)."""
    from auditor.analyses.registry import spec_params
    from auditor.analyses.settings import parse_specs
    from auditor.config import get_settings
    from auditor.errors import DataError
    from auditor.factories import listed_factories, local_models
    from auditor.resolve import resolve_examples

    if metric not in METRICS:
        raise DataError(f"--metric must be one of {', '.join(METRICS)}, not {metric!r}")
    model, solver = parse_specs(spec_params(audit or {}))
    sweep = _dampings(dampings or (DEFAULT_SWEEP if sweep_damping else None))
    if sweep is not None and metric != "lds":
        raise DataError("--sweep-damping and --dampings need --metric lds")
    settings = get_settings()
    train_set = resolve_examples(dataset, settings)
    test_set = resolve_examples(test, settings) if test else None
    if metric == "lds":
        # paths as workers on a shared volume see them; registered names as they are
        refs = tuple(str(Path(r).resolve()) if r and Path(r).exists() else r for r in (dataset, test))
        _lds(train_set, test_set, model, solver, subsets, test_points, sweep, plot, as_json, refs, settings)
        return
    from auditor.analyses.validate import ValidationConfig, scatter_plot, validate

    cfg = ValidationConfig(model=model, solver=solver, test_index=test_index, retrains=retrains, seed=model.seed)
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


def _lds(train_set, test_set, model, solver, subsets, test_points, sweep, plot, as_json, refs, settings) -> None:
    """LDS; with a broker configured the retrains go to the workers, one task per subset (they
    must see the same data set: a registered name, or a path on a shared volume)."""

    from auditor.analyses.lds import LDSConfig, histogram_plot
    from auditor.lds_jobs import job, measure_lds

    cfg = LDSConfig(model=model, solver=solver, subsets=subsets, test_points=test_points, seed=model.seed, dampings=sweep)
    cfg.check()
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
