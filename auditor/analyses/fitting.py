"""What every analysis does first: turn `Examples` + a model spec into a trained model and
tensors (`fit_model`), ready for influence queries (`Fitted.influence`).

Kept apart from the analyses so that label-check, explain, domain-mismatch, attack and validate
all train (or load) the model the same way, with the same settings recorded in audit params.
Trained weights are kept between audits under `artifact_keys.weights_key`; which solver and how
its curvature is fitted or loaded are `solver_choice` and `curvature`.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor, nn

from auditor.analyses.artifact_keys import weights_key
from auditor.analyses.base import FitCache
from auditor.analyses.curvature import coverage, fit_curvature
from auditor.analyses.settings import ModelSpec, SolverSpec
from auditor.analyses.solver_choice import build_solver
from auditor.data.base import Examples
from auditor.data.keys import content_hash
from auditor.errors import DataError, ModelError
from auditor.influence import FunctionalModel, InfluenceModel
from auditor.influence.rows import Rows
from auditor.models import MODEL_NAMES, TrainConfig, build_model, train
from auditor.models.device import resolve_device
from auditor.models.loading import build_user_model, load_weights
from auditor.progress import Progress

log = logging.getLogger(__name__)

__all__ = ["Fitted", "as_tensors", "build_module", "fit_model", "rows_of", "train_config"]


def _state_tensors(module: nn.Module) -> dict[str, Tensor]:
    # cloned: safetensors refuses tensors that share memory (tied weights)
    return {k: v.detach().cpu().clone().contiguous() for k, v in module.state_dict().items()}


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
    predicted: Tensor | None = (
        None  # classes the model predicts for x, once `predictions()` computed them
    )
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
        which = (
            self.spec.params if self.spec.params in ("all", "last") else self.spec.params.split(",")
        )
        return FunctionalModel.from_module(self.module, which, weight_decay=self.spec.l2)

    def influence(
        self, solver: SolverSpec, *, few_solves: bool, fm: FunctionalModel | None = None
    ) -> InfluenceModel:
        """Fit the curvature of `fm` (default: the counted parameters of `spec.params`) with the
        solver `solver` names, `auto` and automatic damping resolved (`solver_choice`), or load it
        as stored by an earlier audit (`curvature`), and record in `curvature` what was fitted and
        why."""
        # trained here by auditor's recipe, to a minimum: no damping if PD (a team's --train-fn
        # makes no such promise, so its models get automatic damping like --no-train ones)
        prefer_undamped = self.spec.train and not self.spec.train_fn
        choice = build_solver(
            solver,
            fm or self.functional(),
            self.x,
            self.y,
            few_solves=few_solves,
            prefer_undamped=prefer_undamped,
        )
        cache = self.cache if solver.reuse else None
        fitted = fit_curvature(
            choice, self.x, self.y, module=self.module, data_key=self.data_key, cache=cache
        )
        self.curvature = {
            **fitted.influence.solver.describe(),
            "solver_reason": choice.reason,
            "parameters": coverage(self.module, choice.fm.names),
            "dtype": str(choice.fm.dtype).replace("torch.", ""),
            "device": str(self.device),
            "reused": fitted.reused,
        }
        if fitted.key:
            self.curvature["artifact"] = fitted.key
        return fitted.influence

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
        module, x = (
            copy.deepcopy(self.module).to(torch.float64),
            self.x.to(torch.float64),
        )  # Rows too
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


def rows_of(
    examples: Examples, dtype: torch.dtype, device: torch.device | str
) -> tuple[Rows, Tensor]:
    """The examples as `Rows` over their stored values (no float copy) and the labels."""
    if len(examples) == 0:
        raise DataError(f"dataset {examples.source or ''} has no examples".replace("  ", " "))
    from auditor.data.lazy import LazyArray

    stored = (
        examples.x
        if isinstance(examples.x, LazyArray)
        else torch.from_numpy(np.ascontiguousarray(examples.x))
    )
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
        raise ModelError(
            f"model {name} gives NaN or infinite outputs for example {int(bad.nonzero()[0])}; check its weights"
        )


def train_with(target: str, module: nn.Module, x: Tensor, y: Tensor) -> dict:
    """Train `module` in place with the user's own function (`--train-fn MODULE:FUNCTION`,
    registered like factories: `auditor.factories`). Its failures are one line."""
    from auditor.models.loading import import_factory

    fn = import_factory(target)
    module.train()
    try:
        fn(module, x, y)
    except (Exception, SystemExit) as exc:
        raise ModelError(
            f"training function {target} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None
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
        raise ModelError(
            "--no-train scores a trained model as it is: give its weights with --weights FILE"
        )
    if spec.name in MODEL_NAMES:
        module = build_model(
            spec.name, examples.x, k, examples.is_image, hidden=spec.hidden, seed=spec.seed
        )
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
        raise ModelError(
            f"model {spec.name} has {dtype} parameters; influence needs floating point"
        )
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
                classes = num_classes or examples.num_classes
                key = weights_key(spec, train_config(spec), module, data_key, classes)
            stored = cache.load("weights", key) if key and cache is not None else None
            if stored is not None and _load_trained(module, stored[0]):
                info.update(stored[1].get("train_info", {}), reused=True)
            else:
                info.update(
                    train(module, x, y, train_config(spec), progress=progress), reused=False
                )
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
