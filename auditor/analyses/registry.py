"""Every audit kind, declared once: its name, whether it needs a test set, its hooks for a
sharded run (`auditor.analyses.sharding`; none: it cannot be sharded), its settings dataclass
(each field with default, help and check) and its run function.

The runner, the schedules, the CLI (`audit run|enqueue`, `schedule add`) and the workers all read
this table; nothing else lists the kinds. The run functions live in the analysis modules, which
import torch, so they are imported only when an audit runs; this module stays light enough for
`auditor --help`.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from auditor.analyses.base import AnalysisInput, AnalysisResult
from auditor.analyses.settings import (
    NON_NEGATIVE_INT,
    POSITIVE_INT,
    SOLVER_OPTIONS,
    Check,
    Declared,
    ModelSpec,
    SolverSpec,
    between,
    cli_fields,
    option_key,
    parse_settings,
    positive_number,
    setting,
)
from auditor.analyses.sharding import ShardHooks
from auditor.errors import AuditorError, DataError, ModelError
from auditor.factories import BUILTIN_MODELS, registered_factories, resolve_factory

# ---- the settings of each kind ------------------------------------------------------------------
RANK_BY = ("auto", "loo-margin", "self-influence", "loss", "margin", "combined", "value")
SELECT = ("pert", "up")
OBJECTIVES = ("loss", "margin")


@dataclass
class LabelCheckConfig(Declared):
    """Settings of a label check (paper 5.4); see `auditor.analyses.label_check`."""

    model: ModelSpec = field(default_factory=ModelSpec)
    solver: SolverSpec = field(default_factory=SolverSpec)
    rank_by: str = setting(
        "auto",
        "Ranking: auto (margin, or self-influence when the model fits every label) | margin | "
        "loo-margin | self-influence | loss | combined | value (predicted test-loss reduction of relabelling)",
        choices=RANK_BY,
    )
    shards: int = setting(1, "Split the scoring over N workers (same result)", check=POSITIVE_INT)
    why_top: int = setting(
        1000,
        "Say why for every flagged example, at most N (best-ranked first): its most helpful and "
        "most harmful training examples by influence, and its nearest in input space (0: none)",
        check=NON_NEGATIVE_INT,
    )
    # (index, count): score only rows i with i % count == index; set by the shard runner
    shard: list[int] | None = setting(None, "This shard's (index, count)", cli=False)


@dataclass
class ExplainConfig(Declared):
    """Which test points to explain and how many training points to list per kind.

    Test points: `test_indices` if given; else with `errors` the misclassified ones (highest loss
    first); else the highest-loss ones. `max_tests` caps the last two choices.
    """

    model: ModelSpec = field(default_factory=ModelSpec)
    solver: SolverSpec = field(default_factory=SolverSpec)
    test_indices: list[int] | None = setting(None, "Test rows to explain, comma-separated")
    errors: bool = setting(False, "Explain the misclassified test points")
    max_tests: int = setting(10, "Test points to explain at most", check=POSITIVE_INT)
    top: int = setting(10, "Training examples per list", check=POSITIVE_INT)


@dataclass
class DomainMismatchConfig(Declared):
    """Which test predictions count as the errors, and how many rows to report.

    `error_quantile` q in (0, 1), when given, picks the test points whose loss is at or above the
    q-quantile and overrides `top_errors`. `top` limits the example and feature rows; every group
    is reported.
    """

    model: ModelSpec = field(default_factory=ModelSpec)
    solver: SolverSpec = field(default_factory=SolverSpec)
    top_errors: int = setting(20, "How many worst test points", check=POSITIVE_INT)
    error_quantile: float | None = setting(
        None, "Test points at or above this loss quantile (overrides --top-errors)", check=between(0, 1)
    )
    top: int = setting(20, "Training examples and features per list", check=POSITIVE_INT)


@dataclass
class AttackConfig(Declared):
    """Settings of an attack audit (see `auditor.analyses.attack` for units and semantics).

    targets: how many target test points, when `target_indices` is not given: the correctly
      classified test points with the smallest margin (logit of the label minus the best other).
    frozen: "features" (default: retrain only the last layer), None or "none" (retrain all
      parameters), or comma-separated parameter names/prefixes to keep fixed.
    objective: "loss" (the paper): the target's test loss; "margin": the runner-up class's logit
      minus the label's, which spends the whole budget on the one class that can overtake.
    retrain_check: retrain on the poisoned set to decide `flipped` (without it, nothing is
      claimed: flipped is None and only the first-order prediction is reported).
    """

    model: ModelSpec = field(default_factory=ModelSpec)
    solver: SolverSpec = field(default_factory=SolverSpec)
    targets: int = setting(5, "Number of target test points", check=POSITIVE_INT)
    target_indices: list[int] | None = setting(None, "Target test rows, comma-separated")
    budget: int = setting(1, "Training images to perturb per target", check=POSITIVE_INT)
    step: float = setting(0.02, "Step size in grey levels per iteration", check=positive_number("grey levels"))
    iterations: int = setting(100, "Sign-ascent iterations", check=Check(lambda v: v >= 0, ">= 0"))
    frozen: str | None = setting(
        "features", "Parameters kept fixed: features (retrain the last layer) | none | names"
    )
    select: str = setting("pert", "Which images to perturb: pert (largest I_pert) | up (largest I_up)", choices=SELECT)
    objective: str = setting("loss", "What the perturbation ascends: loss | margin", choices=OBJECTIVES)
    retrain_check: bool = setting(True, "Retrain on the poisoned set to verify each flip")

    def __post_init__(self) -> None:
        if self.frozen in ("none", ""):
            self.frozen = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class VerifyConfig(Declared):
    """Settings of a verification (`auditor audit verify AUDIT`; see `auditor.analyses.verify`):
    the label check it verifies and its model, the labels its standing decisions give, and what
    influence predicted for them. `auditor.verification.request_verification` writes all of them
    from the store, so none is a CLI option of `audit run|enqueue`."""

    model: ModelSpec = field(default_factory=ModelSpec)  # the source audit's model, as it was
    audit: int | None = setting(None, "The label-check audit whose decisions are applied", cli=False)
    train_fn: str | None = setting(
        None, "MODULE:FUNCTION that retrains the model (registered, as --train-fn of validate)", cli=False
    )
    corrections: dict = setting({}, "Example row -> its label with the decisions applied", cli=False)
    applied: dict = setting({}, "How many decisions of each kind were applied", cli=False)
    predicted_change: dict | None = setting(None, "Influence's predicted change for these corrections", cli=False)
    test_name: str | None = setting(None, "The test set's name, for the report", cli=False)
    holdout: float = setting(0.2, "Held-out fraction of training rows without a test set", check=between(0, 1), cli=False)


def check_verify(settings: VerifyConfig, local: bool) -> None:
    """A verification names its source audit, and its model has a way to be retrained: auditor's
    recipe, or a registered `--train-fn` (a `--no-train` team model has no recipe)."""
    if settings.audit is None:
        raise AuditorError("verify audits are made by `auditor audit verify AUDIT`, which names the label check")
    if settings.train_fn:
        resolve_factory(settings.train_fn, local=local)
    elif not settings.model.train and not settings.model.train_fn:
        raise ModelError(
            f"audit {settings.audit} scored a team's trained model (--no-train), which auditor has no recipe "
            "to retrain: pass --train-fn MODULE:FUNCTION (registered) to retrain it with the team's training"
        )


# ---- the kinds ----------------------------------------------------------------------------------
def _imported(path: str) -> Any:
    """The attribute a "module:attribute" path names, imported now."""
    module, attribute = path.split(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class AuditKind:
    name: str
    help: str
    settings: type
    run_path: str  # "module:function", imported when an audit of this kind runs
    needs_test: bool = False
    check: Callable[[Any, bool], None] | None = None  # the kind's own refusals: (settings, local)
    # "module:attribute" of the kind's `sharding.ShardHooks`, imported when a sharded audit runs;
    # None: the kind cannot be sharded. A shardable kind's settings declare `shards`.
    shard_hooks: str | None = None

    @property
    def shardable(self) -> bool:
        return self.shard_hooks is not None

    def parse(self, params: Mapping[str, Any]) -> Any:
        """This kind's settings from an audit's params, every value checked."""
        return parse_settings(self.settings, params)

    def run(self, inp: AnalysisInput) -> AnalysisResult:
        return _imported(self.run_path)(inp)

    def sharding(self) -> ShardHooks:
        """The kind's hooks for a sharded run (`auditor.analyses.sharding`)."""
        if self.shard_hooks is None:
            shardable = ", ".join(k.name for k in KINDS.values() if k.shardable)
            raise AuditorError(f"{self.name} audits cannot be sharded; only {shardable}")
        return _imported(self.shard_hooks)

    def shard_count(self, params: Mapping[str, Any]) -> int:
        return self.parse(params).shards if self.shardable else 1


KINDS: dict[str, AuditKind] = {
    k.name: k
    for k in (
        AuditKind(
            "label-check",
            "Rank training examples so reviewers check likely-wrong labels first (paper 5.4).",
            LabelCheckConfig,
            "auditor.analyses.label_check:run",
            shard_hooks="auditor.analyses.label_check:SHARD_HOOKS",
        ),
        AuditKind(
            "explain",
            "The most helpful and most harmful training examples for test predictions (5.1).",
            ExplainConfig,
            "auditor.analyses.explain:run",
            needs_test=True,
        ),
        AuditKind(
            "domain-mismatch",
            "Training examples, features and groups behind the worst test errors (5.3).",
            DomainMismatchConfig,
            "auditor.analyses.domain_mismatch:run",
            needs_test=True,
        ),
        AuditKind(
            "attack",
            "Perturb training images within their 8-bit values to flip test predictions (5.2).",
            AttackConfig,
            "auditor.analyses.attack:run",
            needs_test=True,
        ),
        AuditKind(
            "verify",
            "Retrain with a label check's decisions applied: test loss and accuracy before and after.",
            VerifyConfig,
            "auditor.analyses.verify:run",
            check=check_verify,
        ),
    )
}


def get_kind(name: str) -> AuditKind:
    if name not in KINDS:
        raise AuditorError(f"unknown audit kind {name!r}; choose one of {', '.join(KINDS)}")
    return KINDS[name]


def get_analysis(name: str) -> Callable[[AnalysisInput], AnalysisResult]:
    """The `run(AnalysisInput) -> AnalysisResult` function of an audit kind."""
    return get_kind(name).run


def check_request(
    kind: str, params: Mapping[str, Any], test_name: str | None, *, local: bool = False
) -> AuditKind:
    """Refuse, before anything is stored, an unknown kind, a missing test set, a bad setting, or a
    model factory the audit may not call: `local` False (enqueued, scheduled) allows only
    registered factories (`auditor.models.registry`); True (run here) also an explicit
    MODULE:FACTORY, which must then be importable."""
    spec = get_kind(kind)
    if spec.needs_test and not test_name:
        raise DataError(f"{kind} audits need a test set: pass --test DATASET")
    settings = spec.parse(params)
    if spec.check is not None:
        spec.check(settings, local)
    model = getattr(settings, "model", None)
    if model is not None and not model.train and not model.weights:
        raise ModelError("--no-train scores a trained model as it is: give its weights with --weights FILE")
    if model is not None and model.name in BUILTIN_MODELS and model.name in registered_factories():
        raise ModelError(
            f"model {model.name!r} is both a built-in model and a registered factory name; the built-in "
            "wins, so register the factory under another name"
        )
    if model is not None and model.train_fn:
        resolve_factory(model.train_fn, local=local)
    if model is not None and model.name not in BUILTIN_MODELS:
        target = resolve_factory(model.name, local=local)
        if local:
            module = target.partition(":")[0]
            try:
                found = importlib.util.find_spec(module)
            except (ImportError, ValueError):
                found = None
            if found is None:
                raise ModelError(f"cannot import {module!r} for model {model.name!r}: no such module on sys.path")
    return spec


# ---- options -> params --------------------------------------------------------------------------
def kind_fields() -> dict[str, list[str]]:
    """Each kind-specific setting the CLI offers -> the kinds that declare it."""
    out: dict[str, list[str]] = {}
    for kind in KINDS.values():
        for f, _ in cli_fields(kind.settings):
            out.setdefault(f.name, []).append(kind.name)
    return out


def spec_params(options: Mapping[str, Any]) -> dict[str, Any]:
    """{"model": {...}, "solver": {...}} for the CLI's model and solver option values."""
    doc: dict[str, Any] = {
        key: {f.name: options[option_key(f)] for f, _ in cli_fields(cls)}
        for key, cls in (("model", ModelSpec), ("solver", SolverSpec))
    }
    solver_options = {
        key: options[flag] for flag, (key, _, _) in SOLVER_OPTIONS.items() if options.get(flag) is not None
    }
    if solver_options:
        doc["solver"]["options"] = solver_options
    return doc


def params_from_options(kind: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The params JSON an audit of `kind` records for the CLI's option values (keyed by
    `option_key`).

    Model and solver settings are recorded nested with their values (defaults included), solver
    flags (SOLVER_OPTIONS) in the solver's `options` when given, and the kind's own settings flat
    when given (None: not given, the declared default applies when the audit runs). A setting of
    another kind is an error rather than silently ignored.
    """
    spec = get_kind(kind)
    doc = spec_params(options)
    own = {f.name for f, _ in cli_fields(spec.settings)}
    for name, kinds in kind_fields().items():
        if options.get(name) is None:
            continue
        if name not in own:
            flag = "--" + name.replace("_", "-")
            raise AuditorError(f"{flag} applies to {' and '.join(kinds)} audits, not {kind}")
        doc[name] = options[name]
    return doc
