"""One entry point for every adapter: `load_examples(path, format=None, ...)`."""

from __future__ import annotations

from pathlib import Path

from auditor.data.base import Examples
from auditor.data.options import DEFAULT_OPTIONS, DataOptions
from auditor.errors import DataError

FORMATS = ("imagefolder", "npz", "csv")


def sniff_format(path: Path) -> str:
    """The adapter for `path`: a folder is an ImageFolder, otherwise the suffix decides."""
    if path.is_dir():
        return "imagefolder"
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return "npz"
    if suffix in (".csv", ".tsv"):
        return "csv"
    raise DataError(
        f"{path}: cannot tell the format from the suffix {suffix or '(none)'}; "
        f"pass --format ({'|'.join(FORMATS)})"
    )


def load_examples(
    path: str | Path,
    format: str | None = None,
    label_column: str | None = None,
    group_column: str | None = None,
    resize: tuple[int, int] | None = None,
    lazy: bool | None = None,
    options: DataOptions = DEFAULT_OPTIONS,
) -> Examples:
    """Read a dataset from disk with stable per-example keys.

    `label_column`/`group_column` apply to CSV, `resize` (H, W) to ImageFolder; giving one to a
    format that has no use for it is an error rather than silently ignored. `lazy` (default:
    by size, `options.stream_bytes`) keeps images and .npz arrays on disk, read in batches.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    format = format or sniff_format(path)
    if format not in FORMATS:
        raise DataError(f"unknown format {format!r}: use one of {', '.join(FORMATS)}")
    if format != "csv" and (label_column is not None or group_column is not None):
        raise DataError(f"--label-column and --group-column apply to CSV files, not {format}")
    if format != "imagefolder" and resize is not None:
        raise DataError(f"--resize applies to image folders, not {format}")
    if format == "npz":
        from auditor.data.npz import load_npz

        return load_npz(path, lazy=lazy, options=options)
    if format == "csv":
        from auditor.data.csv import load_csv

        return load_csv(path, label_column=label_column, group_column=group_column)
    from auditor.data.imagefolder import load_imagefolder

    return load_imagefolder(path, resize=resize, lazy=lazy, options=options)
