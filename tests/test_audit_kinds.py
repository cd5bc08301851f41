"""Each audit kind is declared once (`auditor.analyses.registry`), and every front door follows
the declaration: the params parser, the options of `audit run`, `audit enqueue` and
`schedule add`, and the params the CLI records."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import typer
from typer.core import TyperOption
from typer.testing import CliRunner

from auditor.analyses.base import AnalysisInput
from auditor.analyses.explain import run as explain
from auditor.analyses.registry import KINDS, check_request, get_kind, params_from_options
from auditor.analyses.settings import ModelSpec, SolverSpec, cli_fields, default_of, parse_settings
from auditor.cli.audit_options import OPTION_NAMES
from auditor.cli.main import app
from auditor.data.base import Examples
from auditor.data.bundled import digits, write_npz
from auditor.errors import AuditorError, DataError
from auditor.store import audits as audit_store
from auditor.store import open_store
from auditor.store import schedules as schedule_store

runner = CliRunner()


def _options(*path: str) -> set[str]:
    command = typer.main.get_command(app)
    ctx = command.make_context("auditor", ["--help"], resilient_parsing=True)
    for name in path:
        command = command.get_command(ctx, name)  # type: ignore[attr-defined]
    return {p.name for p in command.params if isinstance(p, TyperOption)}


def test_run_enqueue_and_schedule_add_offer_the_same_audit_options() -> None:
    run, enqueue, schedule = _options("audit", "run"), _options("audit", "enqueue"), _options("schedule", "add")
    assert set(OPTION_NAMES) <= run and set(OPTION_NAMES) <= enqueue and set(OPTION_NAMES) <= schedule
    # the options schedules lacked before the declarations were shared
    assert {"lissa_scale", "lissa_depth", "shards"} <= schedule
    assert run == enqueue


def test_every_declared_setting_is_an_option_with_help() -> None:
    for kind in KINDS.values():
        for f, _ in cli_fields(kind.settings):
            if f.name in ("model", "solver"):
                continue
            assert f.name in OPTION_NAMES, (kind.name, f.name)
            assert f.metadata["help"], (kind.name, f.name)
    for cls in (ModelSpec, SolverSpec):
        for f, _ in cli_fields(cls):
            assert f.metadata["help"], f.name


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_params_the_cli_records_parse_back_to_the_declared_defaults(kind: str) -> None:
    spec = get_kind(kind)
    options = {name: None for name in OPTION_NAMES}
    for cls in (ModelSpec, SolverSpec):
        for f, _ in cli_fields(cls):
            key = (f.metadata.get("flag") or f.name).replace("-", "_")
            options[key] = default_of(f)
    params = params_from_options(kind, options)
    assert parse_settings(spec.settings, params) == spec.settings()
    assert parse_settings(spec.settings, {}) == spec.settings()


def test_a_setting_of_another_kind_is_refused_by_name() -> None:
    options = {name: None for name in OPTION_NAMES} | {
        "model": "logreg", "weights": None, "weight_decay": 0.01, "params": "all", "seed": 0,
        "solver": "auto", "damping": 0.0, "top": 3,
    }  # fmt: skip
    with pytest.raises(AuditorError, match="--top applies to explain and domain-mismatch audits, not label-check"):
        params_from_options("label-check", options)
    assert params_from_options("explain", options)["top"] == 3


def test_requests_are_checked_before_anything_is_stored() -> None:
    with pytest.raises(AuditorError, match="unknown audit kind"):
        check_request("label-chek", {}, None)
    with pytest.raises(DataError, match="need a test set"):
        check_request("explain", {}, None)
    with pytest.raises(AuditorError, match="--top must be a whole number >= 1"):
        check_request("explain", {"top": 0}, "t")
    assert check_request("attack", {"frozen": "none"}, "t").name == "attack"


def test_a_bad_setting_on_the_cli_is_one_line_and_creates_no_audit(tmp_path: Path) -> None:
    d = digits()
    path = write_npz(Examples(x=d.x[:60], y=d.y[:60], keys=d.keys[:60], is_image=True), tmp_path / "d.npz")
    assert runner.invoke(app, ["dataset", "add", "d", str(path)]).exit_code == 0
    for args in (
        ["audit", "run", "explain", "d", "--test", "d", "--top", "0"],
        ["audit", "run", "label-check", "d", "--top-errors", "3"],
        ["audit", "run", "label-check", "d", "--rank-by", "vibes"],
        ["schedule", "add", "d", "label-check", "--every", "1h", "--solver", "newton"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code != 0, args
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error:"), result.stderr
    with open_store()() as s:
        assert audit_store.list_audits(s) == [] and schedule_store.list_schedules(s) == []


def test_auto_solver_in_params_runs_any_kind_not_only_from_the_cli() -> None:
    """A params JSON written by a script with "solver": "auto" (explain once failed on it)."""
    d = digits()
    train, test = d.subset(slice(0, 120)), d.subset(slice(1000, 1010))
    result = explain(AnalysisInput(train, test, {"solver": "auto", "test_indices": [0], "top": 2}))
    assert result.summary["solver"]["solver"] == "direct"
    assert {f.kind for f in result.findings} == {"helpful:t0", "harmful:t0", "neighbour:t0"}


def test_schedule_add_records_the_same_params_as_audit_run_would(tmp_path: Path) -> None:
    d = digits()
    path = write_npz(Examples(x=d.x[:60], y=d.y[:60], keys=d.keys[:60], is_image=True), tmp_path / "d.npz")
    runner.invoke(app, ["dataset", "add", "d", str(path)])
    args = ["--shards", "2", "--lissa-depth", "50", "--solver", "lissa", "--rank-by", "loss"]
    added = runner.invoke(app, ["schedule", "add", "d", "label-check", "--every", "1h", "--json", *args])
    assert added.exit_code == 0, added.stderr
    params = json.loads(added.stdout)["schedule"]["params"]
    assert params["shards"] == 2 and params["rank_by"] == "loss"
    assert params["solver"] == {"name": "lissa", "damping": None, "reuse": True, "options": {"depth": 50}}  # damping: automatic
    cfg = get_kind("label-check").parse(params)
    assert (cfg.shards, cfg.solver.options, cfg.rank_by) == (2, {"depth": 50}, "loss")


def test_settings_dataclasses_declare_help_for_every_field() -> None:
    for kind in KINDS.values():
        for f in dataclasses.fields(kind.settings):
            if f.name not in ("model", "solver"):
                assert f.metadata.get("help"), (kind.name, f.name)


def test_null_in_params_means_not_given() -> None:
    """As the CLI records an option left out; older label checks accepted "rank_by": null."""
    from auditor.analyses.registry import ExplainConfig, LabelCheckConfig

    assert LabelCheckConfig.from_params({"rank_by": None}).rank_by == "auto"
    assert ExplainConfig.from_params({"top": None, "test_indices": None}).top == 10
