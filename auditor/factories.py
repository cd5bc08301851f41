"""Which model factories an audit may call: the built-in models, factories an administrator
registered, and, for a run in this process only, an explicit `MODULE:FACTORY`.

Why: `--model MODULE:FACTORY` imports a module and calls a function. On a user's own machine
(`audit run`, embedded) that is their code, run by them. On a shared worker it is code chosen by
whoever can enqueue an audit: `os:system` or `os:abort` would run there. So an audit bound for a
worker (enqueued, scheduled, or any audit a worker picks up) names a registered factory, and the
worker checks again before it imports anything.

Registering, either way:
- a Python entry point in the group `auditor.models` of an installed package
  (`[project.entry-points."auditor.models"] small_cnn = "team_models:small_cnn"`);
- the setting AUDITOR_MODEL_FACTORIES: comma-separated `MODULE:FACTORY` or `NAME=MODULE:FACTORY`.
An audit may then say `--model small_cnn` (the name) or `--model team_models:small_cnn`.

The setting's list comes from the entry point that read the settings: it wraps the work in
`listed_factories(settings.model_factories)` (as `local_models` marks a run here), so this module
never reads the environment and model code deep in an analysis needs no settings argument.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from importlib.metadata import entry_points

from auditor.config import ENV_MODEL_FACTORIES
from auditor.errors import ModelError

ENTRY_POINT_GROUP = "auditor.models"
BUILTIN_MODELS = ("logreg", "mlp", "cnn")  # auditor.models.builtin builds these
_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
# True while an audit runs in the process of the person who started it (see `local_models`).
_LOCAL: ContextVar[bool] = ContextVar("auditor_local_models", default=False)
# The factories AUDITOR_MODEL_FACTORIES lists, as the entry point read them (see `listed_factories`).
_LISTED: ContextVar[tuple[str, ...]] = ContextVar("auditor_listed_factories", default=())


@contextmanager
def listed_factories(items: tuple[str, ...]) -> Iterator[None]:
    """Within this block the factories `items` names (`Settings.model_factories`: MODULE:FACTORY
    or NAME=MODULE:FACTORY) are registered, besides the entry points. Outside any such block
    only entry points are."""
    token = _LISTED.set(tuple(items))
    try:
        yield
    finally:
        _LISTED.reset(token)


@contextmanager
def local_models() -> Iterator[None]:
    """Within this block explicit MODULE:FACTORY targets may be called: the audit runs here, for
    the person who typed the command. Outside it (a worker) only registered factories are."""
    token = _LOCAL.set(True)
    try:
        yield
    finally:
        _LOCAL.reset(token)


def running_locally() -> bool:
    return _LOCAL.get()


def registered_factories() -> dict[str, str]:
    """name -> 'module:function' for every registered factory (entry points, then the setting's
    list given to `listed_factories`; a factory listed without a name is known by its target)."""
    out: dict[str, str] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        out[ep.name] = ep.value.replace(" ", "")
    for item in _LISTED.get():
        name, _, target = item.rpartition("=")
        out[name or target] = target
    return out


def check_target(target: str) -> None:
    """A well-formed MODULE:FACTORY outside the standard library (`os:system`, `sys:exit`,
    `builtins:input` are functions, not model factories, even in a local run)."""
    if not _TARGET.match(target):
        raise ModelError(f"model {target!r} is not MODULE:FACTORY (for example team_models:small_cnn)")
    top = target.split(":")[0].split(".")[0]
    if top in sys.stdlib_module_names or top in ("builtins", "auditor", "workers", "torch"):
        raise ModelError(
            f"model {target} names a function of {top!r}, not a model factory; give your own "
            "module's factory (MODULE:FACTORY returning a torch.nn.Module)"
        )


def resolve_factory(spec: str, *, local: bool) -> str:
    """The `module:function` to call for a user model `spec` (a registered name or a target).

    `local` True: the audit runs in this process, started by the person typing the command, so an
    explicit, unregistered target is theirs to run. Otherwise only registered factories pass."""
    registered = registered_factories()
    if spec in registered:
        target = registered[spec]
        check_target(target)
        return target
    if ":" not in spec:
        known = ", ".join(sorted(registered)) or "none registered"
        raise ModelError(
            f"model {spec!r} is neither a built-in model nor a registered factory ({known})"
        )
    check_target(spec)
    if local or spec in registered.values():
        return spec
    raise ModelError(
        f"model {spec} is not a registered factory, and workers run only registered ones: register "
        f"it as an entry point in the group {ENTRY_POINT_GROUP!r} or in {ENV_MODEL_FACTORIES} "
        "(README: what a worker will run), or run the audit here with `auditor audit run`"
    )
