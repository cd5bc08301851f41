"""Turn what a user typed (a path, or a registered dataset name) into `Examples`."""

from __future__ import annotations

from pathlib import Path

from auditor.config import Settings
from auditor.data.base import Examples
from auditor.data.load import load_examples
from auditor.data.options import DataOptions
from auditor.errors import DataError


def resolve_examples(ref: str, settings: Settings) -> Examples:
    """A path on disk is read directly (no database needed); anything else is a dataset name,
    loaded from the source recorded in the store (`settings.database_url`)."""
    data = DataOptions.from_settings(settings)
    path = Path(ref).expanduser()
    if path.exists():
        return load_examples(path, options=data)
    if any(sep in ref for sep in ("/", "\\")) or path.suffix:
        raise DataError(f"{ref}: no such file or folder")
    from auditor.store import datasets as dataset_store
    from auditor.store import open_store

    sessions = open_store(settings.database_url)
    with sessions() as s:
        ds = dataset_store.get_dataset(s, ref)
        return load_dataset_source(ds, data=data)


def read_source(path: str | Path, format: str, options: dict | None, *, data: DataOptions) -> Examples:
    """Read a data source with the reader options stored beside a dataset (label/group column,
    resize), so `dataset add`, re-scans and audits all read a source the same way; `data` says
    how (stream or load, decode workers)."""
    opts = dict(options or {})
    resize = opts.get("resize")
    return load_examples(
        path,
        format=format,
        label_column=opts.get("label_column"),
        group_column=opts.get("group_column"),
        resize=(int(resize[0]), int(resize[1])) if resize else None,
        options=data,
    )


def load_dataset_source(ds, *, data: DataOptions) -> Examples:
    """Read a registered dataset from its recorded source path and options."""
    return read_source(ds.source_path, ds.format, ds.options, data=data)
