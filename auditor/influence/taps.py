"""Per-layer inputs and output gradients of a batch, read with hooks instead of per-example
gradients.

Why: for a Linear or Conv2d layer the gradient of example i is G_i = ds_i^T a_i (its output
gradients times its unfolded inputs). Kronecker-factored curvature (EK-FAC) only ever needs G_i in
its eigenbasis, Q_S^T G_i Q_A = (ds_i Q_S)^T (a_i Q_A), which for a Linear layer is an outer
product of two small vectors. Forming G_i as one flat p-vector per example (what
`torch.func.vmap(grad(...))` does) and rotating it costs out * in * (out + in) per example and
layer; reading a_i and ds_i from one ordinary forward and backward pass and rotating the factors
costs out * in. On the team CNN of bench/user_model.py that is the difference between minutes and
seconds.

`tap` runs one forward and backward pass of a batch and returns every watched layer's inputs
(unfolded for convolutions, with a column of ones for the bias) and output gradients, per
example: each row of the summed loss's output gradient is that example's own, because examples do
not interact in eval mode (BatchNorm uses its running statistics).

`jvp_outputs` pushes a per-example change of each watched layer's output through the rest of the
network in forward mode: with the change a_i V_i^T of a parameter step V_i, it gives the first-order
change of the model's outputs, f(x_i; theta + V_i) - f(x_i; theta), without forming V_i as a flat
vector.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn
from torch.func import functional_call

from auditor.errors import ModelError
from auditor.influence.model import FunctionalModel


@dataclass
class Watched:
    """A Linear or Conv2d layer whose inputs and output gradients are read."""

    module: nn.Module
    bias: bool  # whether its bias counts (then inputs get a column of ones)


@dataclass
class Tapped:
    """One batch: the model's outputs and labels, and per watched layer (B, T, in) inputs and
    (B, T, out) output gradients (T: positions, 1 for a Linear layer on flat inputs)."""

    logits: Tensor
    labels: Tensor
    losses: Tensor
    inputs: list[Tensor]
    grads: list[Tensor]


def unfold_inputs(layer: Watched, a: Tensor) -> Tensor:
    """A layer's input as (B, T, in): im2col patches for a convolution; ones appended for a bias."""
    mod = layer.module
    if isinstance(mod, nn.Conv2d):
        patches = nn.functional.unfold(
            a, mod.kernel_size, dilation=mod.dilation, padding=mod.padding, stride=mod.stride
        )  # (B, C*k*k, T)
        a = patches.transpose(1, 2)
    else:
        a = a.reshape(a.shape[0], -1, a.shape[-1])
    if layer.bias:
        a = torch.cat([a, torch.ones(*a.shape[:2], 1, dtype=a.dtype, device=a.device)], 2)
    return a


def output_rows(layer: Watched, ds: Tensor) -> Tensor:
    """A layer's output (or output gradient) as (B, T, out)."""
    if isinstance(layer.module, nn.Conv2d):
        return ds.flatten(2).transpose(1, 2)
    return ds.reshape(ds.shape[0], -1, ds.shape[-1])


def _state(fm: FunctionalModel) -> dict[str, Tensor]:
    state = dict(fm.frozen)
    state.update(fm.params)
    return state


def tap(
    fm: FunctionalModel,
    layers: list[Watched],
    x: Tensor,
    labels: Tensor | Callable[[Tensor], Tensor],
    first_row: int = 0,
    autocast: torch.dtype | None = None,
) -> Tapped:
    """Forward and backward one batch, reading each watched layer's inputs and output gradients.

    `labels` are the targets, or a function of the (detached) logits that draws them (the true
    Fisher samples labels from the model's own predictions). A NaN or infinite loss fails with the
    example's row (`first_row` + its position). With `autocast` (torch.bfloat16 or float16) the
    forward and backward run in that precision (mixed precision: matmuls and convolutions in low
    precision, losses and reductions in float32) and what is read is returned in the model's dtype.
    """
    acts: dict[int, Tensor] = {}
    outs: dict[int, Tensor] = {}

    def hook_for(i: int):
        def hook(mod, inputs, output):
            acts[i] = inputs[0].detach()
            if not output.requires_grad:  # nothing upstream is differentiated: start the graph here
                output = output.detach().requires_grad_(True)
            outs[i] = output
            return output

        return hook

    handles = [layer.module.register_forward_hook(hook_for(i)) for i, layer in enumerate(layers)]
    try:
        with torch.enable_grad(), torch.autocast(
            x.device.type, dtype=autocast or torch.float32, enabled=autocast is not None
        ):
            logits = functional_call(fm.module, _state(fm), (x,)).to(fm.dtype)
            y = labels(logits.detach()) if callable(labels) else labels
            losses = fm.loss_fn(logits, y)
            if not torch.isfinite(losses).all():
                bad = first_row + int((~torch.isfinite(losses)).nonzero()[0])
                raise ModelError(
                    f"the loss of example {bad} is NaN or infinite; check the input values and the "
                    "model weights (a diverged training run produces this)"
                )
            grads = torch.autograd.grad(losses.sum(), [outs[i] for i in range(len(layers))])
    finally:
        for h in handles:
            h.remove()
    return Tapped(
        logits=logits.detach(),
        labels=y,
        losses=losses.detach(),
        inputs=[unfold_inputs(layer, acts[i].to(fm.dtype)) for i, layer in enumerate(layers)],
        grads=[output_rows(layer, g.detach().to(fm.dtype)) for layer, g in zip(layers, grads, strict=True)],
    )


def jvp_outputs(
    fm: FunctionalModel, layers: list[Watched], x: Tensor, changes: list[Tensor]
) -> tuple[Tensor, Tensor]:
    """(f(x), d f(x)) where d f is the forward-mode response to adding `changes[l]` (B, T, out) to
    watched layer l's output, all layers at once: the per-example directional derivative of the
    outputs along a per-example parameter step whose output change at layer l is `changes[l]`."""

    def hook_for(i: int):
        def hook(mod, inputs, output):
            change = changes[i]
            if isinstance(mod, nn.Conv2d):
                change = change.transpose(1, 2).reshape(output.shape)
            else:
                change = change.reshape(output.shape)
            return output + fwAD.make_dual(torch.zeros_like(output), change)

        return hook

    handles = [layer.module.register_forward_hook(hook_for(i)) for i, layer in enumerate(layers)]
    try:
        with torch.no_grad(), fwAD.dual_level():
            out = functional_call(fm.module, _state(fm), (x,))
            primal, tangent = fwAD.unpack_dual(out)
            if tangent is None:  # no watched layer reaches the outputs
                tangent = torch.zeros_like(primal)
            return primal.clone(), tangent.clone()
    finally:
        for h in handles:
            h.remove()
