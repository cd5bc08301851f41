"""`validate`'s settings are declared once (`auditor.analyses.validate_settings`), like an audit
kind's: its options are generated from the declarations, and a value is judged by the one
declared check, whether it comes from the CLI or from a config built in code."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import pytest
import typer
from typer.core import TyperOption
from typer.testing import CliRunner

from auditor.analyses.settings import cli_fields, default_of, flag_name, setting
from auditor.analyses.validate_settings import (
    VALIDATE_SETTINGS,
    LDSConfig,
    ValidationConfig,
    parse_validate,
)
from auditor.cli.audit_options import with_settings_options
from auditor.cli.main import app
from auditor.data.bundled import write_npz
from auditor.errors import AuditorError
from tests.helpers import cli, digits


def _validate_options() -> dict[str, TyperOption]:
    command = typer.main.get_command(app)
    ctx = command.make_context("auditor", ["--help"], resilient_parsing=True)
    validate = command.get_command(ctx, "validate")  # type: ignore[attr-defined]
    return {p.name: p for p in validate.params if isinstance(p, TyperOption)}


def test_every_declared_validate_setting_is_an_option_with_its_default_and_help() -> None:
    options = _validate_options()
    declared = [
        (f, cls)
        for cls in VALIDATE_SETTINGS
        for f, _ in cli_fields(cls)
        if f.name not in ("model", "solver")
    ]
    assert {f.name for f, _ in declared} == {
        "metric", "test_index", "retrains", "subsets", "test_points", "sweep_damping", "dampings",
    }  # fmt: skip
    for f, _ in declared:
        option = options[f.name]
        assert option.opts == ["--" + flag_name(f)]
        assert option.default == default_of(f) and option.help == f.metadata["help"]
    assert options["sweep_damping"].secondary_opts == []  # a switch: no --no-sweep-damping
    # model and solver options are the audit kinds' declarations, as before
    assert {"model", "solver", "damping", "train", "lissa_scale"} <= set(options)


def test_a_field_added_to_a_declaration_becomes_an_option_that_reaches_the_command() -> None:
    @dataclass
    class Wider(LDSConfig):
        bootstrap: int = setting(0, "lds: bootstrap the LDS this many times", check=None)

    seen: dict[str, Any] = {}
    sub = typer.Typer()

    @sub.command()
    @with_settings_options((Wider,), before="flag")
    def go(
        flag: Annotated[bool, typer.Option()] = False, settings: dict[str, Any] | None = None
    ) -> None:
        seen.update(settings or {})

    runner = CliRunner()
    assert "--bootstrap" in runner.invoke(sub, ["--help"]).stdout
    result = runner.invoke(sub, ["--bootstrap", "3", "--subsets", "7"])
    assert result.exit_code == 0, result.stdout
    assert seen["bootstrap"] == 3 and seen["subsets"] == 7 and seen["test_points"] == 50


@pytest.mark.parametrize(
    ("args", "config", "message"),
    [
        (
            ["--retrains", "0"],
            lambda: ValidationConfig(retrains=0),
            "--retrains must be a whole number >= 1, got 0",
        ),
        (
            ["--metric", "lds", "--subsets", "2"],
            lambda: LDSConfig(subsets=2),
            "--subsets must be at least 3, got 2",
        ),
        (
            ["--metric", "lds", "--dampings", "1,-1"],
            lambda: LDSConfig(dampings=[1.0, -1.0]),
            "--dampings must be finite numbers >= 0, got",
        ),
    ],
)
def test_a_bad_value_is_refused_in_one_line_by_the_one_declared_check(
    tmp_path: Path, args: list[str], config: Any, message: str
) -> None:
    path = write_npz(digits(40), tmp_path / "d.npz")
    bad = cli("validate", str(path), *args, ok=False)
    assert bad.exit_code == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    with pytest.raises(AuditorError, match=message.split(",")[0]):  # the same check, in code
        config().check()


def test_validate_options_parse_into_the_metric_config_with_the_model_seed() -> None:
    metric, cfg = parse_validate(
        {"metric": "lds", "model": {"name": "logreg", "seed": 4}, "sweep_damping": True}
    )
    assert metric == "lds" and isinstance(cfg, LDSConfig) and cfg.seed == 4
    assert cfg.dampings == [0.0, 0.0001, 0.001, 0.01, 0.1, 1.0]  # --sweep-damping's default sweep
    metric, cfg = parse_validate({"retrains": "5"})
    assert metric == "loo" and isinstance(cfg, ValidationConfig) and cfg.retrains == 5
    with pytest.raises(AuditorError, match="need --metric lds"):
        parse_validate({"dampings": "0.1"})
