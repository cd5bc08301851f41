"""Where training and influence run: `--device auto|cpu|cuda[:N]`.

`auto` is the worker's GPU when torch sees one (each `auditor worker` process is given one GPU
through CUDA_VISIBLE_DEVICES), else the CPU. A device that does not exist is a one-line error
before any work starts, not a CUDA traceback halfway through an audit.
"""

from __future__ import annotations

import torch

from auditor.errors import ModelError


def resolve_device(name: str | None = "auto") -> torch.device:
    text = (name or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ModelError(f"--device must be auto, cpu, cuda or cuda:N; got {name!r}") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ModelError(f"--device {name!r}: only cpu and cuda devices are supported")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = device.index or 0
    if index >= count:
        have = f"{count} CUDA device(s)" if count else "no CUDA device"
        raise ModelError(f"--device {name!r} does not exist: this machine has {have}; use --device auto or cpu")
    return torch.device("cuda", index)
