"""A functional view of an `nn.Module` plus its loss, restricted to the parameters that count.

Influence needs derivatives of the training objective with respect to a chosen parameter
subset (all of them, or only the top layer as in the paper's Inception experiment). Everything
downstream works on one flat vector theta in R^p, so this module owns the mapping between that
vector and the module's named tensors, and nothing else in the engine touches `nn.Module` state.

The training objective is  R(theta) = 1/n sum_i w_i L(z_i, theta) + (weight_decay / 2) ||theta||^2
(weights w_i default to 1), which is what `auditor.models` minimises, so H = d^2 R / d theta^2 is
the Hessian of what was actually trained.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call

from auditor.errors import DataError, ModelError

# per-example loss: (logits (B, C), targets (B,)) -> (B,)
LossFn = Callable[[Tensor, Tensor], Tensor]


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-example multinomial cross-entropy (the loss of every built-in classifier)."""
    return nn.functional.cross_entropy(logits, targets, reduction="none")


def select_parameters(module: nn.Module, which: str | Sequence[str] = "all") -> list[str]:
    """Names of the parameters that count for influence.

    `which` is "all", "last" (the parameters of the last submodule that owns any, e.g. the final
    Linear layer: the paper's top-layer setting), or a list of names / name prefixes.
    """
    names = [n for n, p in module.named_parameters()]
    if not names:
        raise ModelError("the model has no parameters")
    if which == "all":
        return names
    if which == "last":
        owners = [
            m_name
            for m_name, m in module.named_modules()
            if any(True for _ in m.parameters(recurse=False))
        ]
        last = owners[-1]
        prefix = f"{last}." if last else ""
        return [n for n in names if n.startswith(prefix) and "." not in n[len(prefix) :]]
    if isinstance(which, str):
        which = [which]
    chosen = [n for n in names if any(n == w or n.startswith(w.rstrip(".") + ".") for w in which)]
    if not chosen:
        raise ModelError(f"no parameter matches {list(which)}; the model has {names}")
    return chosen


@dataclass
class FunctionalModel:
    """`module` evaluated functionally in the counted parameters `names`.

    The module is put in eval mode (influence is defined for a fixed function: dropout off,
    batch-norm statistics frozen) and its parameters are detached and copied, so later training
    of the module does not change this view.
    """

    module: nn.Module
    names: list[str]
    weight_decay: float = 0.0
    loss_fn: LossFn = cross_entropy
    params: dict[str, Tensor] = field(init=False)
    frozen: dict[str, Tensor] = field(init=False)

    def __post_init__(self) -> None:
        self.module.eval()
        state = dict(self.module.named_parameters())
        state.update(dict(self.module.named_buffers()))
        self.params = {n: state[n].detach().clone() for n in self.names}
        self.frozen = {n: t.detach() for n, t in state.items() if n not in self.params}
        self.shapes = [self.params[n].shape for n in self.names]
        self.numels = [self.params[n].numel() for n in self.names]

    @classmethod
    def from_module(
        cls,
        module: nn.Module,
        which: str | Sequence[str] = "all",
        weight_decay: float = 0.0,
        loss_fn: LossFn = cross_entropy,
    ) -> FunctionalModel:
        return cls(module, select_parameters(module, which), weight_decay, loss_fn)

    # ---- flat <-> named ------------------------------------------------------------------
    @property
    def num_params(self) -> int:
        return sum(self.numels)

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.params.values())).dtype

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

    def flat_params(self) -> Tensor:
        return torch.cat([self.params[n].reshape(-1) for n in self.names])

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        parts = torch.split(flat, self.numels, dim=-1)
        return {
            n: t.reshape(*flat.shape[:-1], *s) for n, t, s in zip(self.names, parts, self.shapes, strict=True)
        }

    def flatten(self, named: dict[str, Tensor]) -> Tensor:
        """Concatenate named tensors (each possibly with leading batch dims) into flat vectors."""
        first = named[self.names[0]]
        lead = first.shape[: first.dim() - len(self.shapes[0])]
        return torch.cat([named[n].reshape(*lead, -1) for n in self.names], dim=-1)

    # ---- evaluation ----------------------------------------------------------------------
    def forward(self, flat: Tensor, x: Tensor) -> Tensor:
        state = dict(self.frozen)
        state.update(self.unflatten(flat))
        return functional_call(self.module, state, (x,))

    def losses(self, flat: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """Per-example losses (B,) at parameters `flat`."""
        return self.loss_fn(self.forward(flat, x), y)

    def example_loss(self, flat: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """Loss of one example (no batch dim): the function per-example gradients differentiate."""
        return self.losses(flat, x.unsqueeze(0), y.unsqueeze(0))[0]

    def regulariser(self, flat: Tensor) -> Tensor:
        return 0.5 * self.weight_decay * (flat * flat).sum()

    def check_inputs(self, x: Tensor, y: Tensor) -> None:
        """Fail with one line when data does not fit the model (shape, label range, NaN)."""
        if x.shape[0] != y.shape[0]:
            raise DataError(f"x has {x.shape[0]} rows but y has {y.shape[0]}")
        if hasattr(x, "nonfinite_row"):  # Rows: checked on the stored values, a chunk at a time
            bad_row = x.nonfinite_row()
            if bad_row is not None:
                raise DataError(f"example {bad_row} contains NaN or infinite values")
        elif x.is_floating_point() and not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x.reshape(x.shape[0], -1))).any(1).nonzero()[0])
            raise DataError(f"example {bad} contains NaN or infinite values")
        try:
            with torch.no_grad():
                out = self.forward(self.flat_params(), x[:2].to(self.dtype))
        except RuntimeError as exc:
            raise DataError(
                f"inputs of shape {tuple(x.shape[1:])} do not fit the model: {str(exc).splitlines()[0]}"
            ) from None
        if y.numel():
            lo, hi = int(y.min()), int(y.max())
            if lo < 0 or hi >= out.shape[-1]:
                raise DataError(
                    f"labels must be in [0, {out.shape[-1] - 1}] for this model; found {lo if lo < 0 else hi}"
                )
