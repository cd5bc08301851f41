"""Safe loading of users' models: `MODULE:FACTORY` builds the module, weights come only from
safetensors or `torch.load(weights_only=True)`.

Why so strict: a pickled checkpoint can run arbitrary code when loaded, and audits run on shared
workers. Anything that needs pickle execution is refused with a message that says how to save
the weights safely instead.
"""

from __future__ import annotations

import importlib
import inspect
import pickle
from pathlib import Path

import torch
from torch import nn

from auditor.errors import ModelError
from auditor.factories import resolve_factory, running_locally


def import_factory(spec: str):
    """A registered factory name or 'package.module:function' -> the callable (only registered
    factories outside a local run: `auditor.models.registry`)."""
    target = resolve_factory(spec, local=running_locally())
    mod_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ModelError(f"cannot import {mod_name!r} for model {spec!r}: {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelError(f"{mod_name!r} has no callable {attr!r}")
    return factory


def build_user_model(spec: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Call the factory, passing `input_shape` / `num_classes` only if it takes them."""
    factory = import_factory(spec)
    params = inspect.signature(factory).parameters
    kwargs = {k: v for k, v in (("input_shape", input_shape), ("num_classes", num_classes)) if k in params}
    try:
        module = factory(**kwargs)
    except (Exception, SystemExit) as exc:  # a factory that fails, or that calls sys.exit()
        what = f"{type(exc).__name__}: {exc}".rstrip(": ")
        raise ModelError(f"model factory {spec} failed: {what.splitlines()[0] if what else type(exc).__name__}") from None
    if not isinstance(module, nn.Module):
        raise ModelError(f"{spec} returned {type(module).__name__}, not a torch.nn.Module")
    return module


def load_weights(module: nn.Module, path: str | Path) -> None:
    """Load a state dict from .safetensors or a weights-only torch file; refuse pickles."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise ModelError(f"{path} is not a valid safetensors file: {exc}") from None
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise ModelError(
                f"{path} needs pickle code execution to load, which auditor refuses; save "
                "`model.state_dict()` with safetensors or torch.save of a plain state dict"
            ) from None
        except (RuntimeError, EOFError, OSError) as exc:
            raise ModelError(f"cannot read weights from {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path} does not hold a state dict of tensors")
    ref = module.state_dict()
    try:
        module.load_state_dict({k: v.to(ref[k].dtype) if k in ref else v for k, v in state.items()})
    except RuntimeError as exc:
        raise ModelError(f"weights in {path} do not fit the model: {str(exc).splitlines()[1:2] or exc}") from None
