"""ImageFolder adapter: `root/<class>/<image>` as in torchvision, decoded to one uint8 array, or
for large sets (`DataOptions.stream_bytes`) scanned once and then read from the files a batch at a time.

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
from auditor.data.lazy import RootGuard, as_stored, decode
from auditor.data.options import DEFAULT_OPTIONS, DataOptions
from auditor.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


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
    """The class names and (file, label) of every image, in sorted order; a file that links
    outside `root` is refused here, before any path (whole load, scan) opens it."""
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
    guard = RootGuard(root)
    for path, _ in files:
        guard.check(path)
    return classes, files


def _odd_size(path: Path, shape: tuple[int, ...], first: Path, first_shape: tuple[int, ...]) -> DataError:
    return DataError(
        f"{path}: image is {shape[1]}x{shape[0]} but {first.name} is {first_shape[1]}x{first_shape[0]}; pass --resize HxW"
    )


def load_imagefolder(
    root: str | Path,
    resize: tuple[int, int] | None = None,
    lazy: bool | None = None,
    options: DataOptions = DEFAULT_OPTIONS,
) -> Examples:
    """Every image under `root/<class>/` with integer labels: decoded into one uint8 array, or,
    with `lazy` (default: when the decoded images would exceed `options.stream_bytes`), read from
    their files when an analysis asks for them (`auditor.data.lazy.ImageFiles`, decoded by
    `options.decode_workers()` processes)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder of class sub-folders")
    classes, files = _image_files(root)
    y = np.array([label for _, label in files], dtype=np.int64)
    if lazy is None:
        lazy = len(files) * decode(files[0][0], resize).size > options.stream_bytes
    common = dict(source=str(root.resolve()), is_image=True, class_names=classes)
    names = [str(path.relative_to(root)) for path, _ in files]
    if lazy:
        x, keys = _scan_lazily(root, names, y, resize, options.decode_workers())
        return Examples(x=x, y=y, keys=keys, extra={"files": names}, **common)  # type: ignore[arg-type]
    arrays: list[np.ndarray] = []
    for path, _ in files:
        array = decode(path, resize)
        if arrays and array.shape[:2] != arrays[0].shape[:2]:
            raise _odd_size(path, array.shape, files[0][0], arrays[0].shape)
        arrays.append(array)
    # mixed grayscale and colour: colour wins, grayscale images repeat their one channel
    color = any(a.ndim == 3 for a in arrays)
    x = np.stack([as_stored(a, color) for a in arrays])
    return Examples(x=x, y=y, keys=example_keys(x, y), extra={"files": names}, **common)  # type: ignore[arg-type]


class _Probe:
    """What the scan keeps of each image: its size, whether it is colour, and its key as it
    would be stored on its own (grayscale (H, W) or colour (3, H, W)). Decoded in DataLoader
    workers; the pixels never come back to the scanning process."""

    def __init__(self, root: Path, names: list[str], labels: list[int], resize: tuple[int, int] | None) -> None:
        self.root, self.names, self.labels, self.resize = root, names, labels, resize

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> tuple | str:
        from auditor.data.keys import example_key

        try:
            array = decode(self.root / self.names[i], self.resize)
        except DataError as exc:
            return str(exc)
        color = array.ndim == 3
        return (array.shape[:2], color, example_key(as_stored(array, color), self.labels[i]))


def _scan_lazily(
    root: Path, names: list[str], y: np.ndarray, resize: tuple[int, int] | None, workers: int
):
    """One decoding pass (in `workers` processes) for sizes and keys; returns (ImageFiles, keys)."""
    from torch.utils.data import DataLoader

    from auditor.data.keys import example_key, unique_keys
    from auditor.data.lazy import ImageFiles

    labels = y.tolist()
    probe = _Probe(root, names, labels, resize)
    scanners = workers if len(names) > 256 else 0
    loader = DataLoader(probe, batch_size=256, num_workers=scanners, collate_fn=list)  # type: ignore[arg-type]
    sizes: list = []
    colors: list[bool] = []
    raw: list[str] = []
    for items in loader:
        for item in items:
            if isinstance(item, str):
                raise DataError(item)
            size, color, key = item
            if sizes and tuple(size) != tuple(sizes[0]):
                path = root / names[len(sizes)]
                raise _odd_size(path, tuple(size), root / names[0], tuple(sizes[0]))
            sizes.append(size)
            colors.append(color)
            raw.append(key)
    color = any(colors)
    if color and not all(colors):  # mixed: grayscale images are stored as three equal channels
        for i in (i for i, c in enumerate(colors) if not c):
            raw[i] = example_key(as_stored(decode(root / names[i], resize), True), labels[i])
    h, w = sizes[0]
    row_shape = (3, h, w) if color else (h, w)
    return ImageFiles(root, names, row_shape, color, resize, workers), unique_keys(raw)
