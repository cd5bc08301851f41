"""NPZ adapter: `x` (N, ...) uint8 images or numeric features, `y` (N,) integer labels.

Optional arrays: `class_names` (C,) strings, `groups` (N,) of anything printable (e.g. the source
site, for domain-mismatch audits). Pickled object arrays are refused: loading them would run code.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from auditor.data.base import MAX_CLASSES, Examples
from auditor.data.keys import example_keys
from auditor.data.options import DEFAULT_OPTIONS, DataOptions
from auditor.errors import DataError


def check_labels(y: np.ndarray, where: str) -> np.ndarray:
    """Labels as int64, or `DataError` for floats with fractions, strings, negatives, NaN."""
    if y.ndim != 1:
        raise DataError(f"{where}: labels must be one-dimensional, got shape {y.shape}")
    if y.dtype == np.bool_:
        return y.astype(np.int64)
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)):
            raise DataError(f"{where}: labels contain NaN or infinity")
        if not np.all(y == np.round(y)):
            raise DataError(f"{where}: labels must be integers, got fractional values")
    elif not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where}: labels must be integers, got dtype {y.dtype}")
    labels = y.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise DataError(f"{where}: labels must be >= 0, found {int(labels.min())}")
    if labels.size and labels.max() >= MAX_CLASSES:
        row = int(labels.argmax())
        raise DataError(
            f"{where}: label {int(labels.max())} in row {row} is not a class index (labels are 0..K-1 "
            f"with K <= {MAX_CLASSES})"
        )
    return labels


def check_features(x: np.ndarray, where: str) -> tuple[np.ndarray, bool]:
    """(array, is_image): uint8 with >= 2 dims per example stays images; numbers become float32."""
    if x.dtype == np.uint8 and x.ndim >= 3:
        return np.ascontiguousarray(x), True
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise DataError(f"{where}: x must be numeric, got dtype {x.dtype}")
    if np.issubdtype(x.dtype, np.complexfloating):
        raise DataError(f"{where}: x must be real-valued, got dtype {x.dtype}")
    features = x.astype(np.float32)
    if x.ndim == 1:
        features = features.reshape(-1, 1)
    _check_finite(features, where)
    return np.ascontiguousarray(features), False


def _check_finite(x, where: str) -> None:
    """Float features, in memory or read in place, must hold no NaN or infinity."""
    from auditor.data.lazy import first_nonfinite_row

    bad = first_nonfinite_row(x)
    if bad is not None:
        raise DataError(f"{where}: x contains NaN or infinity (first in row {bad})")


def _lazy_x(path: Path, where: str, lazy: bool | None, stream_bytes: int):
    """`x` read in place (uncompressed uint8 images or float32 features, larger than
    `stream_bytes` unless `lazy` says), else None. Float rows are checked for NaN in
    chunks, with the check `check_features` applies to an array in memory."""
    if lazy is False:
        return None
    from auditor.data.lazy import npz_member

    member = npz_member(path, "x")
    if member is None:
        return None
    images = member.dtype == np.uint8 and member.ndim >= 3
    if not (images or (member.dtype == np.float32 and member.ndim == 2)):
        return None
    if lazy is None and member.nbytes <= stream_bytes:
        return None
    if not images:
        _check_finite(member, where)
    return member, images


def _array(archive: np.lib.npyio.NpzFile, name: str, where: str) -> np.ndarray:
    """The member `name` as an array. numpy hands back the raw bytes of a member that is not
    a .npy file (no `.npy` suffix, or no .npy header), which every later step would trip
    over with a traceback; refuse it here, naming the member."""
    value = archive[name]
    if not isinstance(value, np.ndarray):
        raise DataError(f"{where}: member {name!r} is not a .npy array (write the file with numpy.savez)")
    return value


def load_npz(
    path: str | Path, lazy: bool | None = None, options: DataOptions = DEFAULT_OPTIONS
) -> Examples:
    """Read and validate an .npz file; every problem is a one-line `DataError` naming the file.

    `x` stored uncompressed (`np.savez`, not `savez_compressed`) and larger than
    `options.stream_bytes` (or with `lazy`) stays on disk and is read in batches
    (`auditor.data.lazy.NpyMember`); a compressed one is loaded whole."""
    path = Path(path)
    where = str(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{where}: no such file") from None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{where}: not a readable .npz file ({exc})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(
            f"{where}: expected an .npz archive with arrays x and y, got a single array"
        )
    with archive:
        missing = [name for name in ("x", "y") if name not in archive.files]
        if missing:
            have = ", ".join(archive.files) or "nothing"
            raise DataError(f"{where}: missing array {' and '.join(missing)} (file has {have})")
        try:
            in_place = _lazy_x(path, where, lazy, options.stream_bytes)
            x = in_place[0] if in_place else _array(archive, "x", where)
            y = _array(archive, "y", where)
            class_names = _array(archive, "class_names", where) if "class_names" in archive.files else None
            groups = _array(archive, "groups", where) if "groups" in archive.files else None
        except ValueError as exc:  # object arrays need pickle, which is refused
            raise DataError(f"{where}: cannot read arrays without pickle ({exc})") from None
    if len(y) == 0:
        raise DataError(f"{where}: the dataset is empty")
    if x.shape[:1] != y.shape[:1]:
        raise DataError(f"{where}: x has {x.shape[0]} rows but y has {y.shape[0]} labels")
    labels = check_labels(y, where)
    features, is_image = in_place if in_place else check_features(x, where)
    if groups is not None and groups.shape != (len(labels),):
        raise DataError(f"{where}: groups must have shape ({len(labels)},), got {groups.shape}")
    names = [str(name) for name in class_names.tolist()] if class_names is not None else None
    if names is not None and int(labels.max()) >= len(names):
        raise DataError(
            f"{where}: label {int(labels.max())} has no entry in class_names ({len(names)} names)"
        )
    return Examples(
        x=features,
        y=labels,
        keys=example_keys(features, labels),
        source=str(path.resolve()),
        is_image=is_image,
        groups=groups,
        class_names=names,
    )
