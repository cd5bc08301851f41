"""What every analysis does first: turn `Examples` + a model spec into a trained model and tensors.

Kept apart from the analyses so that label-check, explain, domain-mismatch, attack and validate
all train (or load) the model the same way, with the same settings recorded in audit params.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import inspect
import json
import logging
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor, nn

from auditor.analyses.base import AnalysisInput, FitCache
from auditor.analyses.settings import ModelSpec, SolverSpec
from auditor.data.base import Examples, check_test_set
from auditor.data.keys import content_hash
from auditor.errors import DataError, ModelError
from auditor.influence import FunctionalModel, InfluenceModel, make_solver
from auditor.influence.budget import dense_budget, dense_bytes
from auditor.influence.ekfac import kfac_parameters
from auditor.influence.factory import SOLVER_CLASSES
from auditor.influence.grads import example_losses
from auditor.influence.hvp import hvp, last_linear, last_linear_hessian
from auditor.influence.rows import Rows
from auditor.models import MODEL_NAMES, TrainConfig, build_model, train
from auditor.models.device import resolve_device
from auditor.models.loading import build_user_model, load_weights
from auditor.progress import Progress

log = logging.getLogger(__name__)
# Bumped when what a stored artifact means changes (training recipe, factor layout), so older
# artifacts are never taken for current ones.
ARTIFACT_VERSION = 1


def weights_hash(module: nn.Module) -> str:
    """sha256 of a module's parameters and buffers (names, dtypes, shapes, values)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def artifact_key(parts: dict) -> str:
    """The key of a stored artifact: sha256 of everything it depends on, as canonical JSON."""
    text = json.dumps({"version": ARTIFACT_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _state_tensors(module: nn.Module) -> dict[str, Tensor]:
    # cloned: safetensors refuses tensors that share memory (tied weights)
    return {k: v.detach().cpu().clone().contiguous() for k, v in module.state_dict().items()}

__all__ = ["Fitted", "ModelSpec", "SolverSpec", "TestSetup", "choose_solver", "fit_for_test", "fit_model"]

# `--solver auto` takes the exact solver while the Hessian fits the device's memory budget and
# building it takes at most this long (estimated from a timed HVP on the data); EK-FAC (or CG)
# otherwise. Time matters as much as memory: the exact CNN Hessian on 1,000 28x28 images fits in
# 90 MB but takes half an hour on two cores.
EXACT_SECONDS = 60.0


def estimate_exact_seconds(fm: FunctionalModel, x: Tensor, y: Tensor, probes: int = 16) -> float:
    """Seconds for the exact solve: building the Hessian (the closed form for a final Linear layer,
    timed on a few rows, or p HVPs over all n rows, from one timed HVP block) and its
    eigendecomposition (p^3, from one timed smaller `eigh`)."""
    p = fm.num_params
    if last_linear(fm, x) is not None:
        rows = min(x.shape[0], 256)
        start = time.perf_counter()
        last_linear_hessian(fm, x[:rows], y[:rows])
        build = (time.perf_counter() - start) * x.shape[0] / rows
    else:
        rows = min(x.shape[0], 64)
        V = torch.zeros(min(probes, p), p, dtype=fm.dtype, device=fm.device)
        V[torch.arange(V.shape[0]), torch.arange(V.shape[0])] = 1.0
        hvp(fm, x[:2], y[:2], V[:2])  # warm-up: vmap traces the model once
        start = time.perf_counter()
        hvp(fm, x[:rows], y[:rows], V)
        per = (time.perf_counter() - start) / (V.shape[0] * rows)
        build = per * p * x.shape[0]
    m = min(p, 1000)
    A = torch.randn(m, m, dtype=torch.float64, device=fm.device)
    start = time.perf_counter()
    torch.linalg.eigh(A @ A.T)
    decompose = (time.perf_counter() - start) * (p / m) ** 3
    return build + decompose


def choose_solver(
    spec: SolverSpec, fm: FunctionalModel, x: Tensor, y: Tensor, *, few_solves: bool
) -> tuple[SolverSpec, str]:
    """`auto` made concrete, in one place for every analysis and `validate`, with the reason.

    Exact while the Hessian fits the device's memory budget and EXACT_SECONDS; otherwise EK-FAC
    when the model's counted layers are Linear/Conv2d (they always are after `kfac_parameters`
    unless none is), or CG for analyses that solve for a few test points only. Never refuses.
    """
    if spec.name != "auto":
        return spec, "requested"
    p = fm.num_params
    need, budget = dense_bytes(p), dense_budget(fm.device)
    if need > budget:
        why = f"the {p} x {p} Hessian needs {need / 2**30:.2f} GiB, over this device's budget of {budget / 2**30:.2f} GiB"
    else:
        seconds = estimate_exact_seconds(fm, x, y)
        if seconds <= EXACT_SECONDS:
            return replace(spec, name="direct"), (
                f"exact: the {p} x {p} Hessian takes {need / 2**20:.0f} MiB and about {seconds:.0f} s here"
            )
        why = f"the exact {p} x {p} Hessian would take about {seconds:.0f} s here (budget {EXACT_SECONDS:.0f} s)"
    if kfac_parameters(fm.module, fm.names):
        return replace(spec, name="ekfac"), f"EK-FAC: {why}"
    if few_solves:
        return replace(spec, name="cg"), f"CG: {why}, and the model has no Linear/Conv2d layer for EK-FAC"
    return replace(spec, name="arnoldi"), f"Arnoldi: {why}, and the model has no Linear/Conv2d layer for EK-FAC"


@dataclass
class Fitted:
    """A trained model with its data as tensors (on the model's device, in its dtype), ready for
    influence queries. `curvature` describes the last fitted curvature (for audit summaries)."""

    module: nn.Module
    spec: ModelSpec
    x: Tensor
    y: Tensor
    train_info: dict
    curvature: dict = field(default_factory=dict)
    predicted: Tensor | None = None  # classes the model predicts for x, once `predictions()` computed them
    data_key: str = ""  # content hash of the examples x, y came from (for stored artifacts)
    cache: FitCache | None = None

    def predictions(self) -> Tensor:
        """The predicted class of every training row (one pass over the data unless known)."""
        if self.predicted is None:
            self.predicted = self.predict_proba(self.x).argmax(1)
        return self.predicted

    @property
    def device(self) -> torch.device:
        return self.x.device

    def functional(self) -> FunctionalModel:
        which = self.spec.params if self.spec.params in ("all", "last") else self.spec.params.split(",")
        return FunctionalModel.from_module(self.module, which, weight_decay=self.spec.l2)

    def influence(
        self, solver: SolverSpec, *, few_solves: bool, fm: FunctionalModel | None = None
    ) -> InfluenceModel:
        """Fit the curvature of `fm` (default: the counted parameters of `spec.params`) with the
        solver `solver` names, `auto` and automatic damping resolved, and record in `curvature`
        what was fitted and why."""
        fm = fm or self.functional()
        chosen, why = choose_solver(solver, fm, self.x, self.y, few_solves=few_solves)
        counted = fm.names
        if chosen.name == "ekfac":
            counted = kfac_parameters(fm.module, fm.names)
            if not counted:
                raise ModelError("ekfac needs Linear or Conv2d layers among the counted parameters; use --solver cg")
            if counted != fm.names:
                fm = FunctionalModel(fm.module, counted, fm.weight_decay, fm.loss_fn)
        options = chosen.options
        if solver.name == "auto":  # options meant for a solver auto did not pick do not apply
            accepted = inspect.signature(SOLVER_CLASSES[chosen.name]).parameters
            options = {k: v for k, v in options.items() if k in accepted}
        engine = make_solver(chosen.name, chosen.damping, **options)
        # trained here by auditor's recipe, to a minimum: no damping if PD (a team's --train-fn
        # makes no such promise, so its models get automatic damping like --no-train ones)
        engine.prefer_undamped = self.spec.train and not self.spec.train_fn
        cache = self.cache if (solver.reuse and engine.storable and self.data_key) else None
        key = ""
        if cache is not None:
            key = artifact_key({
                "kind": "curvature", "weights": weights_hash(self.module), "architecture": repr(self.module),
                "counted": counted, "solver": chosen.name, "options": options, "damping": chosen.damping,
                "prefer_undamped": engine.prefer_undamped, "weight_decay": fm.weight_decay,
                "data": self.data_key, "n": int(self.x.shape[0]), "dtype": str(fm.dtype),
            })  # fmt: skip
        reused = self._load_factors(cache, key, engine, fm) if cache is not None else False
        if reused:
            inf = InfluenceModel(fm, engine)
            inf.n = int(self.x.shape[0])
        else:
            inf = InfluenceModel(fm, engine).fit(self.x, self.y)
            if cache is not None:
                tensors, meta = engine.factors()
                cache.save("curvature", key, tensors, meta)
        described = engine.describe()
        self.curvature = {
            **described,
            "solver_reason": why,
            "parameters": self._coverage(counted),
            "dtype": str(fm.dtype).replace("torch.", ""),
            "device": str(self.device),
            "reused": reused,
        }
        if cache is not None:
            self.curvature["artifact"] = key
        return inf

    @staticmethod
    def _load_factors(cache: FitCache, key: str, engine, fm: FunctionalModel) -> bool:
        """Load stored factors into `engine`; False (fit instead) when none or they do not fit."""
        from auditor.errors import SolverError

        stored = cache.load("curvature", key)
        if stored is None:
            return False
        try:
            engine.load_factors(fm, *stored)
        except (SolverError, KeyError, TypeError, ValueError) as exc:
            log.warning("stored curvature %s is unusable (%s); fitting it again", key[:12], exc)
            return False
        return True

    def _coverage(self, counted: list[str]) -> dict:
        """Which parameters the curvature covers and how the rest are treated (for the summary)."""
        sizes = {n: p.numel() for n, p in self.module.named_parameters()}
        fixed = [n for n in sizes if n not in set(counted)]
        doc = {
            "counted": sum(sizes[n] for n in counted),
            "total": sum(sizes.values()),
            "counted_tensors": len(counted),
        }
        if fixed:
            doc["held_fixed"] = fixed if len(fixed) <= 12 else fixed[:12] + [f"... {len(fixed) - 12} more"]
            doc["held_fixed_note"] = (
                "held at their trained values: influence is taken with respect to the counted "
                "parameters only (for EK-FAC, the Linear/Conv2d weights; BatchNorm and other "
                "parameters are fixed)"
            )
        return doc

    def tensor(self, x: np.ndarray) -> Tensor:
        return torch.as_tensor(np.asarray(x), dtype=self.x.dtype, device=self.device)

    def predict_proba(self, x: Tensor, batch_size: int = 4096) -> Tensor:
        with torch.no_grad():
            out = [
                torch.softmax(self.module(x[i : i + batch_size].to(self.device, self.x.dtype)), -1)
                for i in range(0, x.shape[0], batch_size)
            ]
        return torch.cat(out) if out else torch.empty(0, device=self.device)

    def as_float64(self) -> Fitted:
        """The same model and data in float64: for validation against retraining and the attack's
        retrain check, which need tolerances float32 cannot reach.

        A team's model whose `forward` fixes its own input dtype (`x.float() / 255`) cannot run in
        float64; it stays in its own dtype, and the retrains with it (float32 tolerances)."""
        if self.x.dtype == torch.float64:
            return self
        module, x = copy.deepcopy(self.module).to(torch.float64), self.x.to(torch.float64)  # Rows too
        try:
            with torch.no_grad():
                module(x[:2])
        except RuntimeError:  # "Input type (float) and bias type (double) should be the same"
            return self
        return replace(self, module=module, x=x)


def as_tensors(
    examples: Examples, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    if len(examples) == 0:
        raise DataError(f"dataset {examples.source or ''} has no examples".replace("  ", " "))
    x = torch.as_tensor(np.asarray(examples.x), dtype=dtype).to(device)
    y = torch.as_tensor(np.asarray(examples.y), dtype=torch.long).to(device)
    return x, y


def rows_of(examples: Examples, dtype: torch.dtype, device: torch.device | str) -> tuple[Rows, Tensor]:
    """The examples as `Rows` over their stored values (no float copy) and the labels."""
    if len(examples) == 0:
        raise DataError(f"dataset {examples.source or ''} has no examples".replace("  ", " "))
    from auditor.data.lazy import LazyArray

    stored = examples.x if isinstance(examples.x, LazyArray) else torch.from_numpy(np.ascontiguousarray(examples.x))
    y = torch.as_tensor(np.asarray(examples.y), dtype=torch.long).to(device)
    return Rows(stored, dtype, device), y


def train_config(spec: ModelSpec) -> TrainConfig:
    """The training recipe: full-batch L-BFGS for the convex and small models; for the cnn,
    minibatch Adam first (full-batch L-BFGS alone stalls on it), then a short L-BFGS polish."""
    adam = spec.adam_epochs if spec.adam_epochs is not None else (60 if spec.name == "cnn" else 0)
    max_iter = spec.max_iter if spec.max_iter is not None else (100 if adam > 0 else 2000)
    return TrainConfig(weight_decay=spec.l2, max_iter=max_iter, adam_epochs=adam, seed=spec.seed)


def check_outputs(module: nn.Module, x: Tensor, name: str, rows: int = 1024) -> None:
    """One line naming the first example whose outputs are NaN or infinite (a diverged or broken
    model), before any curvature is fitted on it. Only the first `rows` examples: a whole pass
    here cost a fifth of a second audit's time (BENCHMARKS.md), and every later pass refuses a
    NaN or infinite loss with its example's row anyway."""
    module.eval()
    with torch.no_grad():
        out = module(x[0:rows])
    bad = ~torch.isfinite(out.reshape(out.shape[0], -1)).all(1)
    if bad.any():
        raise ModelError(f"model {name} gives NaN or infinite outputs for example {int(bad.nonzero()[0])}; check its weights")


def train_with(target: str, module: nn.Module, x: Tensor, y: Tensor) -> dict:
    """Train `module` in place with the user's own function (`--train-fn MODULE:FUNCTION`,
    registered like factories: `auditor.factories`). Its failures are one line."""
    from auditor.models.loading import import_factory

    fn = import_factory(target)
    module.train()
    try:
        fn(module, x, y)
    except (Exception, SystemExit) as exc:
        raise ModelError(f"training function {target} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    module.eval()
    if not all(torch.isfinite(p).all() for p in module.parameters()):
        raise ModelError(f"training function {target} left NaN or infinite weights")
    return {"trained_by": target}


def build_module(
    examples: Examples, spec: ModelSpec, num_classes: int | None = None
) -> tuple[nn.Module, torch.device]:
    """The model `spec` describes, built (or the user's factory called), with its weights loaded
    and on its device; untrained. Cheap, so `audit run` calls it before it creates the audit:
    a factory that fails, weights that are missing or unsafe, a device that is not there are
    refused before anything is stored."""
    k = num_classes or examples.num_classes
    device = resolve_device(spec.device)
    if not spec.train and not spec.weights:
        raise ModelError("--no-train scores a trained model as it is: give its weights with --weights FILE")
    if spec.name in MODEL_NAMES:
        module = build_model(spec.name, examples.x, k, examples.is_image, hidden=spec.hidden, seed=spec.seed)
    else:
        torch.manual_seed(spec.seed)
        module = build_user_model(spec.name, tuple(examples.x.shape[1:]), k)
    if spec.weights:
        load_weights(module, spec.weights)
    return module.to(device), device


def fit_model(
    examples: Examples,
    spec: ModelSpec,
    num_classes: int | None = None,
    progress: Progress | None = None,
    cache: FitCache | None = None,
    reuse: bool = True,
    lazy_rows: bool = False,
) -> Fitted:
    """Build (or load) and train the model described by `spec` on `examples`.

    A user's model keeps its own dtype (float32, typically) and the data follow it; built-in
    models are float64 (small, and validated against exact retraining). With `spec.train` False
    the weights are used exactly as given. `progress` receives training progress in [0, 1].

    With a `cache` (and `reuse`), a model trained by auditor's recipe on the same examples with
    the same settings and starting weights is loaded instead of trained again, and the curvature
    `Fitted.influence` fits is kept for the next audit of the same weights and data. A team's
    --train-fn is always called (its code may change under the same name).

    With `lazy_rows`, the examples stay in their stored dtype (uint8 pixels), or on disk, and
    are converted a batch at a time (`Rows`), so no step holds all n of them as floats (training
    here holds at most its L-BFGS rows, `TrainConfig.max_lbfgs_rows`); for callers whose every use
    of `Fitted.x` slices it. A team's --train-fn gets the whole float tensor (its code may need it)."""
    module, device = build_module(examples, spec, num_classes)
    data_key = content_hash(examples.keys)
    params = list(module.parameters())
    if not params:
        raise ModelError(f"model {spec.name} has no parameters")
    dtype = params[0].dtype
    if not dtype.is_floating_point:
        raise ModelError(f"model {spec.name} has {dtype} parameters; influence needs floating point")
    if lazy_rows and not (spec.train and spec.train_fn):  # a team's --train-fn gets a whole tensor
        x, y = rows_of(examples, dtype, device)
    else:
        x, y = as_tensors(examples, dtype, device)
    fm = FunctionalModel.from_module(module, "all")
    fm.check_inputs(x, y)
    if not spec.train:
        check_outputs(module, x, spec.name)
    info: dict = {"trained": spec.train}
    if spec.train:
        if spec.train_fn:
            info.update(train_with(spec.train_fn, module, x, y))
        else:
            key = ""
            if cache is not None and reuse:
                key = artifact_key({
                    "kind": "weights", "model": {k: v for k, v in spec.to_dict().items() if k != "device"},
                    "train": dataclasses.asdict(train_config(spec)), "start": weights_hash(module),
                    "architecture": repr(module), "data": data_key, "classes": num_classes or examples.num_classes,
                })  # fmt: skip
            stored = cache.load("weights", key) if key and cache is not None else None
            if stored is not None and _load_trained(module, stored[0]):
                info.update(stored[1].get("train_info", {}), reused=True)
            else:
                info.update(train(module, x, y, train_config(spec), progress=progress), reused=False)
                if key and cache is not None:
                    cache.save("weights", key, _state_tensors(module), {"train_info": info})
    module.eval()
    return Fitted(module, spec, x, y, info, data_key=data_key, cache=cache if reuse else None)


def _load_trained(module: nn.Module, tensors: dict[str, Tensor]) -> bool:
    try:
        module.load_state_dict(tensors)  # copied into the module's own tensors, on its device
    except (RuntimeError, KeyError) as exc:
        log.warning("stored trained weights do not fit the model (%s); training again", exc)
        return False
    return True


@dataclass
class TestSetup:
    """A trained model with fitted curvature and the test set as tensors with their losses:
    the common start of every analysis that asks questions about test predictions."""

    fitted: Fitted
    influence: InfluenceModel
    x_test: Tensor
    y_test: Tensor
    test_loss: Tensor


def require_test_set(train: Examples, test: Examples | None, analysis: str) -> Examples:
    """The test set, checked against the training set with one-line errors.

    The model is built from the training set, so a test set of another shape or with labels the
    model cannot output would fail deep inside torch with a message nobody can act on.
    """
    if test is None or len(test) == 0:
        raise DataError(f"{analysis} needs a non-empty test set (--test DATASET)")
    check_test_set(train, test)
    return test


def fit_for_test(inp: AnalysisInput, model: ModelSpec, solver: SolverSpec, analysis: str) -> TestSetup:
    """Check the test set, train on `inp.train`, fit the solver, and score the test set."""
    train, progress = inp.train, inp.progress
    test = require_test_set(train, inp.test, analysis)
    progress(0.0, "training the model")
    fitted = fit_model(
        train, model, num_classes=train.num_classes, progress=lambda f, m: progress(0.25 * f, m),
        cache=inp.cache, reuse=solver.reuse, lazy_rows=True,
    )  # fmt: skip
    progress(0.25, "fitting the curvature")
    influence = fitted.influence(solver, few_solves=True)
    x_test, y_test = as_tensors(test, fitted.x.dtype, fitted.device)
    return TestSetup(fitted, influence, x_test, y_test, example_losses(influence.fm, x_test, y_test))
