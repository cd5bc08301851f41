"""The examples behind findings, as PNG pictures for the pages.

A data set is read once from its source and kept (the last few, least recently used first out),
keyed by where it lives and when it last changed, so paging a queue does not re-read thousands
of files per thumbnail, and an edited data set is read again.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from pathlib import Path

from auditor.data.base import Examples
from auditor.data.options import DataOptions
from auditor.errors import DataError
from auditor.report.images import png_bytes
from auditor.resolve import load_dataset_source
from auditor.store.models import Dataset


class ExampleStore:
    """Data sets read (as `data` says) for the app's pictures, the last `keep` kept."""

    def __init__(self, data: DataOptions, keep: int = 2) -> None:
        self.data, self.keep = data, keep
        self._cache: OrderedDict[tuple, Examples] = OrderedDict()
        self._lock = threading.Lock()

    def _key(self, ds: Dataset) -> tuple:
        try:
            stamp = Path(ds.source_path).stat().st_mtime_ns
        except OSError as exc:
            raise DataError(f"cannot read data set {ds.name!r}: {ds.source_path}: {exc.strerror or exc}") from None
        return (ds.id, ds.source_path, repr(sorted((ds.options or {}).items())), stamp)

    def examples(self, ds: Dataset) -> Examples:
        key = self._key(ds)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        examples = load_dataset_source(ds, data=self.data)  # outside the lock: reading may take seconds
        with self._lock:
            self._cache[key] = examples
            while len(self._cache) > self.keep:
                self._cache.popitem(last=False)
        return examples

    def png(self, ds: Dataset, index: int, example_key: str | None = None, locator: str | None = None) -> bytes:
        """The example at `index` (found by `example_key` if rows moved) as PNG bytes.

        An ImageFolder example with a known file is read alone (a reviewer of a million images
        should not wait for all of them to be decoded); anything else reads the data set once.
        """
        if ds.format == "imagefolder" and locator and not locator.startswith("row "):
            single = _single_file(Path(ds.source_path), locator)
            if single is not None:
                return single
        examples = self.examples(ds)
        if not examples.is_image:
            raise DataError(f"data set {ds.name!r} holds feature rows, not images")
        i = index
        if example_key is not None and not (0 <= i < len(examples) and examples.keys[i] == example_key):
            try:
                i = examples.keys.index(example_key)
            except ValueError:
                raise DataError(f"example {example_key} is no longer in data set {ds.name!r}") from None
        if not 0 <= i < len(examples):
            raise DataError(f"data set {ds.name!r} has no example {index}")
        return png_bytes(examples.x[i])  # the browser scales it up (CSS, pixelated)


def _single_file(root: Path, locator: str) -> bytes | None:
    """The picture at root/locator re-encoded as PNG, or None (moved, unreadable: the whole set
    is read instead). A locator or link leading outside root is refused, naming the file, as the
    loaders refuse it (`auditor.data.lazy.RootGuard`): the whole set would serve it anyway."""
    from PIL import Image, UnidentifiedImageError

    try:
        path = (root / locator).resolve()
    except (OSError, RuntimeError):  # a link loop: unreadable
        return None
    if not path.is_relative_to(root.resolve()):
        raise DataError(f"{root / locator}: links to {path}, outside the data set folder {root.resolve()}")
    try:
        with Image.open(path) as im:
            im.load()
            buf = io.BytesIO()
            (im if im.mode in ("L", "RGB", "RGBA") else im.convert("RGB")).save(buf, format="PNG")
            return buf.getvalue()
    except (OSError, UnidentifiedImageError, ValueError):
        return None
