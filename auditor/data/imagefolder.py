"""ImageFolder adapter: `root/<class>/<image>` as in torchvision, decoded to one uint8 array.

Classes are the sorted sub-folder names (torchvision's rule, so label ids match a model trained
with `torchvision.datasets.ImageFolder`); files are read in sorted order, so a re-scan of
unchanged files gives the same snapshot. Images come out as (N, H, W) when all are grayscale and
(N, 3, H, W), channel-first like torchvision tensors, otherwise.

All images must share a size; the first odd one is named in the error unless `resize=(H, W)` is
given, which resizes every image (bilinear) to that size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from auditor.data.base import Examples
from auditor.data.keys import example_keys
from auditor.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
GRAYSCALE_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def parse_resize(text: str) -> tuple[int, int]:
    """ "32x32" -> (32, 32): the `--resize HxW` option."""
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise DataError(f"cannot read size {text!r}: use HxW, e.g. 32x32") from None
    if height <= 0 or width <= 0:
        raise DataError(f"size {text!r} must be positive")
    return height, width


def _image_files(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class folders (expected {root}/<class>/<image>.png)")
    files = [
        (path, label)
        for label, name in enumerate(classes)
        for path in sorted((root / name).rglob("*"))
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not files:
        raise DataError(f"{root}: no images in the class folders ({', '.join(classes)})")
    return classes, files


def _decode(path: Path, resize: tuple[int, int] | None) -> np.ndarray:
    """(H, W) uint8 for grayscale images, (H, W, 3) for colour; `DataError` when unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            gray = image.mode in GRAYSCALE_MODES
            converted = image.convert("L" if gray else "RGB")
            if resize is not None:
                converted = converted.resize((resize[1], resize[0]), Image.Resampling.BILINEAR)
            return np.asarray(converted, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: cannot decode image ({reason})") from None


def load_imagefolder(root: str | Path, resize: tuple[int, int] | None = None) -> Examples:
    """Decode every image under `root/<class>/` into uint8 arrays with integer labels."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder of class sub-folders")
    classes, files = _image_files(root)
    arrays: list[np.ndarray] = []
    for path, _ in files:
        array = _decode(path, resize)
        if arrays and array.shape[:2] != arrays[0].shape[:2]:
            first = files[0][0]
            raise DataError(
                f"{path}: image is {array.shape[1]}x{array.shape[0]} but {first.name} is "
                f"{arrays[0].shape[1]}x{arrays[0].shape[0]}; pass --resize HxW"
            )
        arrays.append(array)
    if all(a.ndim == 2 for a in arrays):
        x = np.stack(arrays)
    else:
        # Mixed grayscale and colour: colour wins, grayscale images repeat their one channel.
        x = np.stack([np.repeat(a[:, :, None], 3, axis=2) if a.ndim == 2 else a for a in arrays])
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    y = np.array([label for _, label in files], dtype=np.int64)
    return Examples(
        x=x,
        y=y,
        keys=example_keys(x, y),
        source=str(root.resolve()),
        is_image=True,
        class_names=classes,
        extra={"files": [str(path.relative_to(root)) for path, _ in files]},
    )
