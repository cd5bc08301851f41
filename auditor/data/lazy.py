"""Data sets read from disk a batch at a time instead of loaded whole.

Half a million 28x28 images are 0.4 GB as bytes; 50,000 at 224x224 are 7.5 GB, and a float copy
of either is four times that. A lazy array stands where `Examples.x` is an array: it knows its
shape and dtype, and reading rows (an index, a slice, a list) decodes only those rows. The
analyses read through `auditor.influence.rows.Rows`, which asks `batches()` for a sequential pass,
so what is held at any moment is a batch, not the data set.

- `ImageFiles`: the files of an ImageFolder, decoded on demand; sequential passes go through a
  `torch.utils.data.DataLoader` whose worker processes decode the next batches while the model
  runs on this one.
- `NpyMember`: an array stored uncompressed inside an .npz (what `np.savez` writes), read with
  positioned reads. Not `np.memmap`: every page a memory map touches counts in the process's
  resident memory until the kernel drops it, so a pass over a 3 GB array shows a 3 GB process.

Both keep numpy's semantics for what they return (a fresh array), and `take(rows)` makes a view
of some rows (a shard) without reading them.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from auditor.errors import DataError

BATCH = 256  # rows per decoded batch in a sequential pass
GRAYSCALE_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}  # PIL modes stored as (H, W)


class LazyArray:
    """Rows of a stored array, read when asked for. Subclasses implement `_read(rows)` for
    positions in the underlying source; `index` maps this view's rows onto them (a `take`)."""

    dtype: np.dtype
    row_shape: tuple[int, ...]
    total: int
    index: np.ndarray | None = None

    # --- what numpy-minded callers use -------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.row_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.row_shape)

    @property
    def nbytes(self) -> int:
        return len(self) * int(np.prod(self.row_shape)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.total if self.index is None else len(self.index)

    def _positions(self, key: Any) -> np.ndarray | int:
        if isinstance(key, (int, np.integer)):
            i = int(key)
            if not -len(self) <= i < len(self):
                raise IndexError(f"row {i} is out of range for {len(self)} rows")
            i %= len(self)
            return i if self.index is None else int(self.index[i])
        if isinstance(key, slice):  # the common case, a batch of a pass: no index of all n rows
            view = np.arange(*key.indices(len(self)))
        else:  # lists, index arrays, boolean masks
            view = np.arange(len(self))[key]
        return view if self.index is None else self.index[view]

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):  # x[rows, ...]: rows first, the rest on what they give
            rows = self[key[0]]
            return rows[key[1:]] if isinstance(key[0], (int, np.integer)) else rows[(slice(None), *key[1:])]
        pos = self._positions(key)
        if isinstance(pos, int):
            return self._read(np.array([pos]))[0]
        return self._read(np.asarray(pos, dtype=np.int64))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """The whole array in memory, for the steps that still need every row at once (a team's
        --train-fn, `validate`, the attack), which held it before lazy reading existed anyway."""
        out = np.concatenate([b for b in self.batches(0, len(self), 4096)]) if len(self) else self._read(np.zeros(0, np.int64))
        return out if dtype is None else out.astype(dtype)

    def __iter__(self) -> Iterator[np.ndarray]:
        for batch in self.batches(0, len(self), BATCH):
            yield from batch

    def take(self, rows: Any) -> LazyArray:
        """A view of `rows` that reads nothing until asked."""
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__)
        view.index = np.atleast_1d(np.asarray(self._positions(rows), dtype=np.int64))
        return view

    def batches(self, start: int, stop: int, size: int) -> Iterator[np.ndarray]:
        """Rows start..stop in order, `size` at a time (a sequential pass)."""
        for a in range(start, stop, size):
            yield self[a : min(a + size, stop)]

    def _read(self, positions: np.ndarray) -> np.ndarray:
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def decode(path: Path, resize: tuple[int, int] | None) -> np.ndarray:
    """(H, W) uint8 for grayscale images, (H, W, 3) for colour; `DataError` naming the file when
    it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            gray = image.mode in GRAYSCALE_MODES
            converted = image.convert("L" if gray else "RGB")
            if resize is not None:
                converted = converted.resize((resize[1], resize[0]), Image.Resampling.BILINEAR)
            return np.asarray(converted, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: image is gone (moved or deleted since the data set was scanned)") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: cannot decode image ({reason})") from None


class RootGuard:
    """Refuses image files that resolve outside the data set folder (a symlink, or a link in a
    class folder, pointing elsewhere): the scan, a streamed pass, a whole load and the review
    app's pictures would otherwise read and serve whatever the link names, e.g. files only the
    server may read. One check for every path that opens a file, so they cannot disagree.

    Cheap per file: each folder is resolved once (cached), and a file is resolved only when it
    is itself a symlink (one lstat), instead of a full resolve (~80 us) per image."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self._folders: dict[Path, Path] = {}

    def check(self, path: Path) -> None:
        """`DataError` naming `path` when it does not resolve inside the root."""
        folder = self._folders.get(path.parent)
        if folder is None:
            folder = self._folders.setdefault(path.parent, path.parent.resolve())
        real = path.resolve() if path.is_symlink() else folder / path.name
        if not real.is_relative_to(self.root):
            raise DataError(
                f"{path}: links to {real}, outside the data set folder {self.root}; "
                "copy the file into the folder or register a folder that holds it"
            )


def as_stored(array: np.ndarray, color: bool) -> np.ndarray:
    """One decoded image in the data set's layout: (H, W) when every image is grayscale, else
    channel-first (3, H, W) with grayscale images repeating their one channel."""
    if not color:
        return array
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return np.ascontiguousarray(array.transpose(2, 0, 1))


class _Failed:
    """A decode error carried out of a DataLoader worker as a value, so the user gets the
    one-line `DataError` with the file's path, not a worker traceback."""

    def __init__(self, message: str) -> None:
        self.message = message


class _FileDataset:
    """`torch.utils.data.Dataset` protocol over some files of an `ImageFiles` (picklable: paths
    and settings, no open files)."""

    def __init__(self, files: ImageFiles, positions: np.ndarray) -> None:
        self.files, self.positions = files, positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> np.ndarray | _Failed:
        try:
            return self.files.decode_one(int(self.positions[i]))
        except DataError as exc:
            return _Failed(str(exc))


class ImageFiles(LazyArray):
    """The images of an ImageFolder, decoded when read. Every image must decode to `row_shape`
    (the scan checked that; a file changed since then is an error naming it). `workers`
    processes decode ahead in a sequential pass (`DataOptions.decode_workers()` of the load)."""

    def __init__(
        self, root: Path, files: list[str], row_shape: tuple[int, ...], color: bool, resize: tuple[int, int] | None,
        workers: int = 0,
    ) -> None:  # fmt: skip
        self.root, self.files, self.row_shape = root, files, tuple(row_shape)
        self.color, self.resize, self.workers = color, resize, workers
        self.dtype = np.dtype(np.uint8)
        self.total = len(files)
        self.index = None
        self.largest_decode = 0  # most images decoded for one request (tests bound memory with it)
        self.guard = RootGuard(root)  # a file swapped for a link after the scan is refused too

    def decode_one(self, position: int) -> np.ndarray:
        path = self.root / self.files[position]
        self.guard.check(path)
        array = as_stored(decode(path, self.resize), self.color)
        if array.shape != self.row_shape:
            raise DataError(
                f"{path}: image is now {array.shape} but the data set's images are {self.row_shape}; "
                "it changed since the scan: run `auditor dataset scan`"
            )
        return array

    def _read(self, positions: np.ndarray) -> np.ndarray:
        self.largest_decode = max(self.largest_decode, len(positions))
        out = np.empty((len(positions), *self.row_shape), dtype=np.uint8)
        for j, p in enumerate(positions.tolist()):
            out[j] = self.decode_one(p)
        return out

    def batches(self, start: int, stop: int, size: int) -> Iterator[np.ndarray]:
        """A sequential pass; with data workers, a DataLoader decodes ahead in other processes."""
        workers = self.workers
        positions = np.arange(start, min(stop, len(self)))
        if self.index is not None:
            positions = self.index[positions]
        if workers == 0 or len(positions) <= size:
            yield from super().batches(start, stop, size)
            return
        from torch.utils.data import DataLoader

        loader = DataLoader(
            _FileDataset(self, positions), batch_size=size, num_workers=workers,  # type: ignore[arg-type]
            collate_fn=list, prefetch_factor=2, persistent_workers=False,  # stacked here, after the check
        )  # fmt: skip
        for items in loader:
            self.largest_decode = max(self.largest_decode, len(items))
            for item in items:
                if isinstance(item, _Failed):
                    raise DataError(item.message)
            yield np.stack(items)


# --------------------------------------------------------------------------------------------
# Arrays inside an .npz
# --------------------------------------------------------------------------------------------


class NpyMember(LazyArray):
    """An array stored uncompressed in a zip archive (.npz), read row ranges at a time."""

    def __init__(self, path: Path, offset: int, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        self.path, self.offset, self.dtype = path, offset, np.dtype(dtype)
        self.total, self.row_shape = int(shape[0]), tuple(int(s) for s in shape[1:])
        self.index = None
        self.row_bytes = int(np.prod(self.row_shape)) * self.dtype.itemsize

    def _read(self, positions: np.ndarray) -> np.ndarray:
        out = np.empty((len(positions), *self.row_shape), dtype=self.dtype)
        flat = out.reshape(len(positions), -1).view(np.uint8) if len(positions) else None
        starts = np.flatnonzero(np.diff(positions) != 1) + 1  # one read per run of consecutive rows
        with open(self.path, "rb") as fh:
            for j, k in zip([0, *starts.tolist()], [*starts.tolist(), len(positions)], strict=True):
                if j == k:
                    continue
                want = (k - j) * self.row_bytes
                data = os.pread(fh.fileno(), want, self.offset + int(positions[j]) * self.row_bytes)
                if len(data) != want:
                    raise DataError(f"{self.path}: file is shorter than its array header says (truncated?)")
                assert flat is not None
                flat[j:k] = np.frombuffer(data, dtype=np.uint8).reshape(k - j, -1)
        return out


def npz_member(path: Path, name: str) -> NpyMember | None:
    """`name`.npy inside the archive as a lazy array, or None when it cannot be read in place
    (compressed, object dtype, Fortran order): the caller loads it into memory instead."""
    with zipfile.ZipFile(path) as archive:
        try:
            info = archive.getinfo(f"{name}.npy")
        except KeyError:
            return None
        if info.compress_type != zipfile.ZIP_STORED:
            return None
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)
        if local[:4] != b"PK\x03\x04":
            return None
        name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
        start = info.header_offset + 30 + name_len + extra_len
        fh.seek(start)
        try:
            version = np.lib.format.read_magic(fh)
            fmt = np.lib.format
            header = fmt.read_array_header_1_0(fh) if version == (1, 0) else fmt.read_array_header_2_0(fh)
        except (ValueError, OSError):
            return None
        shape, fortran, dtype = header
        if fortran or dtype.hasobject or len(shape) == 0 or dtype.byteorder == ">":
            return None
        return NpyMember(path, fh.tell(), dtype, tuple(shape))


def chunks(x: Any, size: int = 8192) -> Iterator[tuple[int, np.ndarray]]:
    """(start, rows) over `x` in order, `size` rows at a time, lazy or not."""
    if isinstance(x, LazyArray):
        start = 0
        for block in x.batches(0, len(x), size):
            yield start, block
            start += len(block)
        return
    for start in range(0, len(x), size):
        yield start, x[start : start + size]


def column_moments(x: Any, size: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and standard deviation (population) of `x` flattened per row, read
    `size` rows at a time in float64, lazy or not: the spreads that standardise features."""
    n, total, squares = 0, 0.0, 0.0
    for _, block in chunks(x, size):
        a = block.reshape(len(block), -1).astype(np.float64)
        n, total, squares = n + len(a), total + a.sum(0), squares + (a * a).sum(0)
    mean = total / n
    return mean, np.sqrt(np.maximum(squares / n - mean * mean, 0.0))


def first_nonfinite_row(x: Any, size: int = 65536) -> int | None:
    """The first row of float `x` holding NaN or infinity, read `size` rows at a time."""
    for start, block in chunks(x, size):
        bad = ~np.isfinite(block.reshape(len(block), -1)).all(1)
        if bad.any():
            return start + int(bad.argmax())
    return None

