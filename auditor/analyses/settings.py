"""Audit settings, declared once: each field carries its default, its help text and its check.

Every front door derives from these declarations: the params parser (`parse_settings`, used by
the runner for params JSON written by the CLI, a schedule or a script), the CLI options of
`audit run`, `audit enqueue` and `schedule add`, and the params JSON the CLI records. So a new
audit option is one field here (kronfluence's argument dataclasses are the model).

Params arrive as the JSON an audit row stores: nested ({"model": {...}, "solver": {...}}) when
built by the CLI, flat ({"model": "logreg", "damping": 0.01}) when written by hand or by older
schedules; both parse the same. Every bad value is a one-line `AuditorError` naming the setting.

This module imports no torch: `auditor --help` and the CLI's option parsing stay fast.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from auditor.errors import AuditorError

T = TypeVar("T")


# ---- declaring a setting ----------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    """A condition on a setting's value and how to say it: "--top must be <says>, got 0"."""

    ok: Callable[[Any], bool]
    says: str


def at_least(low: float) -> Check:
    return Check(lambda v: v >= low, f"a whole number >= {low:g}")


def between(low: float, high: float) -> Check:
    return Check(lambda v: low < v < high, f"between {low:g} and {high:g}")


def positive_number(unit: str = "") -> Check:
    return Check(lambda v: v > 0, f"a positive number{' of ' + unit if unit else ''}")


POSITIVE_INT = at_least(1)
NON_NEGATIVE_INT = at_least(0)


def setting(
    default: Any,
    help: str,
    *,
    check: Check | None = None,
    choices: tuple[str, ...] | None = None,
    cli: bool = True,
    flag: str | None = None,
    negatable: bool = True,
) -> Any:
    """A dataclass field with the metadata the parser and the CLI read.

    cli: whether the CLI offers it (False for settings only scripts and other code set).
    flag: the CLI flag when it is not the field name with dashes (`--model` for ModelSpec.name).
    negatable: for a true/false setting, whether the CLI offers `--no-FLAG` as well (False: a
      switch, `--sweep-damping`).
    """
    meta = {"help": help, "check": check, "choices": choices, "cli": cli, "flag": flag, "negatable": negatable}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def flag_name(f: dataclasses.Field) -> str:
    """The CLI flag of a field, without dashes: `rank_by` -> `rank-by`."""
    return f.metadata.get("flag") or f.name.replace("_", "-")


def option_key(f: dataclasses.Field) -> str:
    """The name the CLI passes a field's value under: its flag with underscores."""
    return flag_name(f).replace("-", "_")


class Declared:
    """Base of settings dataclasses: `from_params` parses audit params into one; `check` refuses,
    with the same declared checks, values set in code (a script building a config directly)."""

    @classmethod
    def from_params(cls: type[T], params: Mapping[str, Any]) -> T:
        return parse_settings(cls, params)

    def check(self) -> None:
        """Every declared check on the values as they are (`check_values`); subclasses add the
        rules that tie settings together."""
        check_values(self)


# ---- the settings every audit kind shares -----------------------------------------------------
MODEL_HELP = "logreg | mlp | cnn | MODULE:FACTORY"


@dataclass
class ModelSpec(Declared):
    """How to get the model: a built-in name or MODULE:FACTORY, optional weights, training."""

    name: str = setting("logreg", MODEL_HELP, flag="model")
    weights: str | None = setting(None, "Weights file (.safetensors or weights-only .pt)")
    weight_decay: float | None = setting(
        None,
        "L2 regularisation of the training objective (default: 0.01 when auditor trains the model; "
        "0 with --no-train or --train-fn, where the team's own regulariser is unknown and damping "
        "takes its place)",
        check=Check(lambda v: v >= 0, "a number >= 0"),
    )
    params: str = setting(
        "all", "Parameters that count: all | last | comma-separated prefixes", flag="params"
    )
    train: bool = setting(
        True,
        "Train the model on the data set (--no-train: score the --weights as they are, the "
        "trained model a team already has)",
    )
    train_fn: str | None = setting(
        None,
        "MODULE:FUNCTION that trains a user model: called as FUNCTION(module, x, y) instead of "
        "auditor's recipe (registered like model factories; validate --metric lds retrains with it)",
    )
    device: str = setting("auto", "Where training and influence run: auto (the GPU if any) | cpu | cuda[:N]")
    max_iter: int | None = setting(
        None, "Full-batch L-BFGS steps at most (default: 2000; 100 after Adam)", check=POSITIVE_INT, cli=False
    )
    adam_epochs: int | None = setting(
        None, "Minibatch Adam epochs before L-BFGS, fewer when progress stalls (default: 60 for the cnn, else 0)", check=at_least(0), cli=False
    )
    seed: int = setting(
        0, "Training seed", check=Check(lambda v: 0 <= v < 2**63, "a whole number from 0 to 2**63 - 1")
    )
    hidden: int = setting(32, "Hidden units of the built-in mlp", check=POSITIVE_INT, cli=False)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def l2(self) -> float:
        """The weight decay in effect (see `weight_decay`): auditor's recipe uses 0.01; for a
        model trained elsewhere (--no-train) or by the team's --train-fn the regulariser is
        unknown, so 0 unless given."""
        if self.weight_decay is not None:
            return self.weight_decay
        return 0.01 if self.train and not self.train_fn else 0.0


SOLVER_NAMES = ("auto", "direct", "cg", "lissa", "arnoldi", "ekfac")


@dataclass
class SolverSpec(Declared):
    """Which inverse-Hessian solver, its damping, and solver-specific options."""

    name: str = setting(
        "auto",
        "auto | direct | cg | lissa | arnoldi | ekfac (auto: exact while the Hessian fits the device's "
        "memory and about a minute, else EK-FAC or CG; the audit summary says which and why)",
        choices=SOLVER_NAMES,
        flag="solver",
    )
    damping: float | None = setting(
        None,
        "Damping lambda added to the Hessian (default: automatic; none for a model trained here to a "
        "minimum, else 0.1 x the curvature's mean eigenvalue; the audit summary says which and why)",
        check=Check(lambda v: v >= 0, "a number >= 0"),
    )
    options: dict = setting({}, "Solver-specific options (see SOLVER_OPTIONS)", cli=False)
    reuse: bool = setting(
        True,
        "Reuse the trained model and curvature factors of an earlier audit of the same model, data "
        "and settings (--no-reuse: fit them again; `auditor artifacts list|prune`)",
    )


# Solver options the CLI offers as flags, recorded in the solver's `options` when given:
# flag name -> (options key, type, help). The ones solver errors name.
SOLVER_OPTIONS: dict[str, tuple[str, type, str]] = {
    "lissa_scale": ("scale", float, "LiSSA scale (default: 1.5 x estimated top eigenvalue)"),
    "lissa_depth": ("depth", int, "LiSSA recursion depth (default: from the spectrum)"),
    "ekfac_fit_rows": (
        "fit_rows",
        int,
        "EK-FAC: fit the factors on at most this many rows, a seeded random sample (default 100000); "
        "every row is still scored",
    ),
    "ekfac_precision": (
        "precision",
        str,
        "EK-FAC: float32 | bfloat16 | float16 for the forward and backward passes (mixed precision, "
        "for GPUs; default float32)",
    ),
}

# ModelSpec fields that may also be given as flat top-level params. "name" comes from
# params["model"] as a string; "train" and "params" are left out on purpose: at the top level
# those names are too likely to mean something else (a dataset, the audit's params).
_FLAT_MODEL_KEYS = tuple(f.name for f in fields(ModelSpec) if f.name not in ("name", "train", "params"))
_SPECS = {"model": ModelSpec, "solver": SolverSpec}


# ---- parsing params ---------------------------------------------------------------------------
def parse_settings(cls: type[T], params: Mapping[str, Any]) -> T:
    """An instance of the settings dataclass `cls` from audit params, every value checked.

    Keys `cls` does not declare are ignored (params of another kind, or of an older version).
    """
    if not isinstance(params, Mapping):
        raise AuditorError(f"audit params must be a JSON object, got {params!r}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.name in _SPECS and hints[f.name] is _SPECS[f.name]:
            kwargs[f.name] = _parse_spec(f.name, params)
        elif f.name in params:
            kwargs[f.name] = coerce(f, hints[f.name], params[f.name])
    return cls(**kwargs)


def parse_specs(params: Mapping[str, Any]) -> tuple[ModelSpec, SolverSpec]:
    """ModelSpec and SolverSpec from audit params, nested or flat.

    Accepts {"model": {...ModelSpec fields}, "solver": {...SolverSpec fields}} as well as the flat
    form: {"model": "logreg", "weights": ..., "solver": "cg", "damping": 0.01}.
    """
    return _parse_spec("model", params), _parse_spec("solver", params)


def _parse_spec(key: str, params: Mapping[str, Any]) -> Any:
    value = params.get(key)
    if value is None:
        given: dict[str, Any] = {}
    elif isinstance(value, str):
        given = {"name": value}
    elif isinstance(value, Mapping):
        given = dict(value)
    else:
        raise AuditorError(f"{key} must be a name or a mapping of settings, got {value!r}")
    flat = _FLAT_MODEL_KEYS if key == "model" else ("damping",)
    for name in flat:
        if name in params and name not in given:
            given[name] = params[name]
    if key == "solver" and "solver_options" in params and "options" not in given:
        given["options"] = params["solver_options"]
    cls = _SPECS[key]
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(given) - known)
    try:
        if unknown:
            raise AuditorError(f"unknown {key} setting {unknown[0]!r}; known: {', '.join(sorted(known))}")
        return parse_settings(cls, given)
    except AuditorError as exc:
        raise AuditorError(f"bad model or solver setting: {exc}") from None


def coerce(f: dataclasses.Field, hint: Any, value: Any) -> Any:
    """`value` as the declared type of field `f`, checked; a one-line error naming the setting
    as a CLI flag and, where it differs, as the params key a script writes."""
    name = "--" + flag_name(f)
    key = f" (params key {f.name!r})" if name[2:] != f.name else ""
    optional, base = _unwrap_optional(hint)
    if value is None:  # null means "not given", as the CLI records an option left out
        return None if optional else default_of(f)
    try:
        out = _convert(base, value)
    except (TypeError, ValueError) as exc:
        raise AuditorError(f"{name} must be {exc}, got {value!r}{key}") from None
    check_value(f, out, value)
    return out


def check_value(f: dataclasses.Field, value: Any, given: Any = None) -> None:
    """The declared choices and check of field `f` on a converted `value`: the one place a
    setting's value is judged, for params (`coerce`) and for configs built in code
    (`check_values`). `given` is what the user wrote, for the message (default: `value`)."""
    name = "--" + flag_name(f)
    key = f" (params key {f.name!r})" if name[2:] != f.name else ""
    given = value if given is None else given
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise AuditorError(f"{name} must be one of {', '.join(choices)}; got {given!r}{key}")
    check: Check | None = f.metadata.get("check")
    if check is not None and not check.ok(value):
        raise AuditorError(f"{name} must be {check.says}, got {given!r}{key}")


def check_values(settings: Any) -> None:
    """`check_value` on every declared field of a settings instance (nested specs included);
    None means "not given" and is not checked."""
    for f in fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, Declared):
            check_values(value)
        elif value is not None and "check" in f.metadata:
            check_value(f, value)


def _unwrap_optional(hint: Any) -> tuple[bool, Any]:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return True, rest[0]
    return False, hint


def _convert(base: Any, value: Any) -> Any:
    """Convert or raise ValueError("<what it must be>")."""
    if base is bool:
        text = str(value).strip().lower()
        if isinstance(value, str) and text in ("true", "1", "yes", "false", "0", "no"):
            return text in ("true", "1", "yes")
        if isinstance(value, (bool, int)) and value in (0, 1):
            return bool(value)
        raise ValueError("true or false")
    if base is int:
        if isinstance(value, bool):
            raise ValueError("a whole number")
        if isinstance(value, str):
            value = value.strip()
        try:
            out = int(value)
        except (TypeError, ValueError):
            raise ValueError("a whole number") from None
        if isinstance(value, float) and value != out:
            raise ValueError("a whole number")
        return out
    if base is float:
        if isinstance(value, bool):
            raise ValueError("a number")
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise ValueError("a number") from None
        if not math.isfinite(out):
            raise ValueError("a finite number")
        return out
    if base is str:
        if not isinstance(value, str):
            raise ValueError("text")
        return value
    if typing.get_origin(base) is list and typing.get_args(base) == (float,):
        # comma-separated numbers; blanks between commas are skipped ("0,,1"), and what the
        # numbers may be (finite, >= 0) is the setting's check
        items = [v for v in value.split(",") if v.strip()] if isinstance(value, str) else value
        if isinstance(items, (int, float)) and not isinstance(items, bool):
            items = [items]
        try:
            if not isinstance(items, (list, tuple)) or any(isinstance(v, bool) for v in items):
                raise ValueError
            return [float(v) for v in items]
        except (TypeError, ValueError):
            raise ValueError("comma-separated numbers") from None
    if typing.get_origin(base) is list:
        items = value.split(",") if isinstance(value, str) else value
        if isinstance(items, (int, float)) and not isinstance(items, bool):
            items = [items]
        if not isinstance(items, (list, tuple)):
            raise ValueError("a list of whole numbers")
        return [_convert(int, item) for item in items]
    if typing.get_origin(base) is dict or base is dict:
        if not isinstance(value, Mapping):
            raise ValueError("a mapping")
        return dict(value)
    raise TypeError(f"settings of type {base!r} are not supported")  # a declaration bug


def cli_fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    """(field, type hint) of each setting of `cls` the CLI offers, in declaration order."""
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in fields(cls) if f.metadata.get("cli", False)]


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None
