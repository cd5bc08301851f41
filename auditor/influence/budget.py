"""How much memory a dense curvature may take, read from the machine and the device.

The exact solver holds the p x p Hessian and its eigenvectors; whether that is reasonable depends
on the memory the process can actually use (RAM on a CPU worker, free GPU memory on a GPU
worker), not on a fixed parameter count.
"""

from __future__ import annotations

import os

import torch

# The share of the free memory a dense curvature may use: the rest is for the data, the model,
# per-example gradients and whatever else runs on the machine.
DENSE_SHARE = 0.25


def available_bytes(device: torch.device | str = "cpu") -> int:
    """Free memory on `device`: MemAvailable for the CPU, the driver's free bytes for CUDA."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def dense_budget(device: torch.device | str = "cpu") -> int:
    """Bytes a dense p x p curvature (matrix, eigenvectors, workspace) may take on `device`."""
    return int(DENSE_SHARE * available_bytes(device))


def dense_bytes(p: int) -> int:
    """Memory of the exact solve: the Hessian, its eigenvectors and eigh's workspace in float64."""
    return 3 * p * p * 8
