"""The keys of stored artifacts (trained weights, curvature factors): sha256 of everything an
artifact depends on, so that a changed model, data set or setting simply misses
(`auditor.artifacts` stores them by these keys)."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import torch
from torch import nn

from auditor.analyses.settings import ModelSpec

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


def weights_key(
    spec: ModelSpec, train: object, module: nn.Module, data_key: str, classes: int
) -> str:
    """The key of weights trained by auditor's recipe `train` (a `TrainConfig`) from `module`'s
    starting weights on the examples whose content hash is `data_key`."""
    return artifact_key({
        "kind": "weights", "model": {k: v for k, v in spec.to_dict().items() if k != "device"},
        "train": dataclasses.asdict(train), "start": weights_hash(module),
        "architecture": repr(module), "data": data_key, "classes": classes,
    })  # fmt: skip


def curvature_key(
    module: nn.Module, counted: list[str], solver: str, options: dict, damping: float | None,
    prefer_undamped: bool, weight_decay: float, data_key: str, n: int, dtype: torch.dtype,
) -> str:  # fmt: skip
    """The key of curvature factors: the weights they were fitted at, which parameters count, the
    solver with its options and damping, and the data."""
    return artifact_key({
        "kind": "curvature", "weights": weights_hash(module), "architecture": repr(module),
        "counted": counted, "solver": solver, "options": options, "damping": damping,
        "prefer_undamped": prefer_undamped, "weight_decay": weight_decay,
        "data": data_key, "n": n, "dtype": str(dtype),
    })  # fmt: skip
