"""Per-example gradients g_i = d L(z_i, theta) / d theta, streamed in batches.

`torch.func.vmap(grad(...))` gives all gradients of a batch in one vectorised call. Gradients
are yielded batch by batch so that memory stays flat in n: a caller that only needs dot products
(self-influence, train x test scores) never holds the n x p matrix.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.func import grad, vmap

from auditor.errors import ModelError
from auditor.influence.model import FunctionalModel

# Per-example gradients held at once: B x p numbers. A batch is cut to fit this, so a large model
# (ResNet-18: 11M parameters, 44 MB per example in float32) streams a few rows at a time instead
# of asking for tens of gigabytes.
GRADIENT_BYTES = 256 * 2**20


def batch_rows(fm: FunctionalModel, batch_size: int) -> int:
    """`batch_size`, cut so that a batch of per-example gradients fits GRADIENT_BYTES."""
    per_row = fm.num_params * torch.finfo(fm.dtype).bits // 8
    return max(1, min(batch_size, GRADIENT_BYTES // max(per_row, 1)))


def _check_finite(g: Tensor, start: int) -> None:
    if not torch.isfinite(g).all():
        bad = start + int((~torch.isfinite(g)).any(1).nonzero()[0])
        raise ModelError(
            f"the loss gradient of example {bad} is NaN or infinite; check the input values "
            "and the model weights (a diverged training run produces this)"
        )


def iter_gradients(
    fm: FunctionalModel, x: Tensor, y: Tensor, batch_size: int = 256
) -> Iterator[tuple[int, Tensor]]:
    """Yield (start, G) with G (B, p) the per-example loss gradients of rows start..start+B."""
    theta = fm.flat_params()
    per_example = vmap(grad(fm.example_loss), in_dims=(None, 0, 0))
    batch_size = batch_rows(fm, batch_size)
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size].to(device=fm.device, dtype=fm.dtype)
        yb = y[start : start + batch_size].to(fm.device)
        g = per_example(theta, xb, yb).detach()
        _check_finite(g, start)
        yield start, g


def gradients(fm: FunctionalModel, x: Tensor, y: Tensor, batch_size: int = 256) -> Tensor:
    """All per-example gradients as an (n, p) matrix; only for n * p that fits in memory."""
    return torch.cat([g for _, g in iter_gradients(fm, x, y, batch_size)], 0)


def example_losses(fm: FunctionalModel, x: Tensor, y: Tensor, batch_size: int = 1024) -> Tensor:
    """Per-example losses (n,), checked for NaN."""
    theta = fm.flat_params()
    out = []
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size].to(device=fm.device, dtype=fm.dtype)
            out.append(fm.losses(theta, xb, y[start : start + batch_size].to(fm.device)))
    losses = torch.cat(out)
    if not torch.isfinite(losses).all():
        bad = int((~torch.isfinite(losses)).nonzero()[0])
        raise ModelError(f"the loss of example {bad} is NaN or infinite")
    return losses
