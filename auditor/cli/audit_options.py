"""The audit options of `audit run`, `audit enqueue` and `schedule add`, generated from the
settings the audit kinds declare (`auditor.analyses.registry`), so the three commands cannot
drift and a new setting is one field there.

Model and solver settings are offered with their defaults; a kind's own settings default to
"not given" (the kind's declared default applies when the audit runs, and `--help` shows it),
so defaults are written once.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from typing import Annotated, Any

import typer

from auditor.analyses.registry import KINDS, params_from_options
from auditor.analyses.settings import (
    SOLVER_OPTIONS,
    ModelSpec,
    SolverSpec,
    cli_fields,
    default_of,
    flag_name,
    option_key,
)

KIND_HELP = " | ".join(KINDS)
KINDS_DOC = "".join(f"\n\n{kind.name}: {kind.help}" for kind in KINDS.values())


def _cli_type(hint: Any) -> Any:
    """The type Typer parses a setting as: lists arrive comma-separated, as text."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if args else hint
    if typing.get_origin(base) is list:
        return str
    return base


def _spec_parameters() -> list[inspect.Parameter]:
    """Model and solver settings, with their declared defaults."""
    params = []
    for cls in (ModelSpec, SolverSpec):
        for f, hint in cli_fields(cls):
            params.append(_parameter(f, hint, default_of(f), f.metadata["help"]))
    for flag, (_, typ, help_text) in SOLVER_OPTIONS.items():
        params.append(_parameter(None, typ | None, None, help_text, name=flag))
    return params


def _kind_parameters() -> list[inspect.Parameter]:
    """Every kind's own settings, once each; a setting several kinds declare is one option whose
    help names each kind with its own default."""
    merged: dict[str, tuple[dataclasses.Field, Any, list[str]]] = {}
    for kind in KINDS.values():
        for f, hint in cli_fields(kind.settings):
            if f.name in ("model", "solver"):
                continue
            helps = merged.setdefault(f.name, (f, hint, []))[2]
            helps.append(f"{kind.name}: {f.metadata['help']} (default: {_show(default_of(f))})")
    return [_parameter(f, hint, None, "; ".join(helps)) for f, hint, helps in merged.values()]


def _show(value: Any) -> str:
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _parameter(
    f: dataclasses.Field | None, hint: Any, default: Any, help_text: str, name: str | None = None
) -> inspect.Parameter:
    name = name or option_key(f)
    flag = "--" + (flag_name(f) if f is not None else name.replace("_", "-"))
    typ = _cli_type(hint)
    if typ is bool:
        negatable = f is None or f.metadata.get("negatable", True)
        decls = [f"{flag}/--no-{flag[2:]}" if negatable else flag]
        annotation = Annotated[bool | None if default is None else bool, typer.Option(*decls, help=help_text)]
    else:
        optional = default is None
        annotation = Annotated[typ | None if optional else typ, typer.Option(flag, help=help_text)]
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


SPEC_PARAMETERS = _spec_parameters()
KIND_PARAMETERS = _kind_parameters()
OPTION_NAMES = tuple(p.name for p in SPEC_PARAMETERS + KIND_PARAMETERS)


def with_audit_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add every audit option to a Typer command; it receives them as `audit: dict` (keyed by
    option name), ready for `audit_params`."""
    return _with_options(command, SPEC_PARAMETERS + KIND_PARAMETERS)


def with_model_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the model and solver options (`validate`); the command receives them as `audit`,
    ready for `registry.spec_params`."""
    return _with_options(command, SPEC_PARAMETERS)


def settings_parameters(classes: tuple[type, ...]) -> list[inspect.Parameter]:
    """The CLI settings of each declared class (model and solver aside: `with_model_options`),
    with their declared defaults, once each, in declaration order."""
    seen: dict[str, inspect.Parameter] = {}
    for cls in classes:
        for f, hint in cli_fields(cls):
            if f.name not in ("model", "solver") and option_key(f) not in seen:
                seen[option_key(f)] = _parameter(f, hint, default_of(f), f.metadata["help"])
    return list(seen.values())


def with_settings_options(
    classes: tuple[type, ...], *, into: str = "settings", before: str | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add the options declared by `classes` (`settings_parameters`) to a Typer command, placed
    before its own parameter `before` (default: last); it receives their values as `into: dict`
    (keyed by option name), ready for the classes' parser (`validate_settings.parse_validate`)."""
    extra = settings_parameters(classes)
    return lambda command: _with_options(command, extra, into=into, before=before)


def _with_options(
    command: Callable[..., Any], extra: list[inspect.Parameter], *, into: str = "audit", before: str | None = None
) -> Callable[..., Any]:
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != into]
    names = [p.name for p in extra]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        values = {name: kwargs.pop(name) for name in names}
        return command(**{into: values}, **kwargs)

    at = next((i for i, p in enumerate(own) if p.name == before), len(own))
    # all keyword-only (Typer passes keywords; the order is the order of --help)
    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own[:at] + extra + own[at:]]
    wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    # evaluated annotations: Typer resolves them against this module, not the command's
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    del wrapper.__wrapped__
    return wrapper


def audit_params(kind: str, audit: dict[str, Any]) -> dict[str, Any]:
    """The params JSON for these option values (see `registry.params_from_options`)."""
    return params_from_options(kind, audit)
