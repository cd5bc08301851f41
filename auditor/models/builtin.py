"""Built-in classifiers: multinomial logistic regression, a small MLP and a small CNN.

Input scaling lives inside the model (an `Affine` layer with fixed buffers), so the model takes
the stored values as they are (pixel values 0..255, raw feature values). That keeps gradients
with respect to the input in the units of the data, which the training-set attack needs to
respect the 8-bit representation. Activations are smooth (tanh) so Hessians are well defined.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from auditor.errors import ModelError
from auditor.factories import BUILTIN_MODELS

MODEL_NAMES = BUILTIN_MODELS


class Affine(nn.Module):
    """y = (x - shift) / scale with fixed (non-trainable) statistics of the training data."""

    def __init__(self, shift: Tensor, scale: Tensor) -> None:
        super().__init__()
        self.register_buffer("shift", shift)
        self.register_buffer("scale", scale)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.shift) / self.scale


class AddChannel(nn.Module):
    """(B, H, W) grey images -> (B, 1, H, W); leaves (B, C, H, W) alone."""

    def forward(self, x: Tensor) -> Tensor:
        return x.unsqueeze(1) if x.dim() == 3 else x


def input_scaling(x: np.ndarray, is_image: bool) -> Affine:
    """Images: divide by 255. Features: standardise with the training set's mean and std."""
    if is_image:
        return Affine(torch.zeros(()), torch.tensor(255.0))
    flat = x.reshape(x.shape[0], -1).astype(np.float64)
    mean = flat.mean(0)
    std = flat.std(0)
    std[std < 1e-12] = 1.0
    return Affine(torch.from_numpy(mean), torch.from_numpy(std))


def build_model(
    name: str,
    x: np.ndarray,
    num_classes: int,
    is_image: bool,
    hidden: int = 32,
    seed: int = 0,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """A fresh, seeded model for inputs shaped like `x[0]` and `num_classes` classes.

    dtype: float64 for logreg and mlp (small; validated against exact retraining), float32 for
    the cnn (sized for real images, where float64 convolutions are several times slower on CPU
    and GPUs; `validate` and the attack's retrain check still run it in float64)."""
    dtype = dtype or (torch.float32 if name == "cnn" else torch.float64)
    torch.manual_seed(seed)
    shape = tuple(x.shape[1:])
    d = int(np.prod(shape))
    scaling = input_scaling(x, is_image)
    if name == "logreg":
        model = nn.Sequential(nn.Flatten(), scaling, nn.Linear(d, num_classes))
    elif name == "mlp":
        model = nn.Sequential(
            nn.Flatten(), scaling, nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, num_classes)
        )
    elif name == "cnn":
        if len(shape) not in (2, 3):
            raise ModelError(f"the cnn needs image inputs (H, W) or (C, H, W); got shape {shape}")
        channels = 1 if len(shape) == 2 else shape[0]
        model = nn.Sequential(
            scaling,
            AddChannel(),
            nn.Conv2d(channels, 8, 3, padding=1),
            nn.Tanh(),
            nn.AvgPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.Tanh(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(64, num_classes),
        )
    else:
        raise ModelError(
            f"unknown model {name!r}; choose {', '.join(MODEL_NAMES)} or MODULE:FACTORY"
        )
    return model.to(dtype)
