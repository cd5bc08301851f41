"""Turn what a user typed (a path, or a registered dataset name) into `Examples`."""

from __future__ import annotations

from pathlib import Path

from auditor.data.base import Examples
from auditor.data.load import load_examples
from auditor.errors import DataError


def resolve_examples(ref: str) -> Examples:
    """A path on disk is read directly (no database needed); anything else is a dataset name,
    loaded from the source recorded in the store."""
    path = Path(ref).expanduser()
    if path.exists():
        return load_examples(path)
    if any(sep in ref for sep in ("/", "\\")) or path.suffix:
        raise DataError(f"{ref}: no such file or folder")
    from auditor.store import open_store, repo

    sessions = open_store()
    with sessions() as s:
        ds = repo.get_dataset(s, ref)
        return load_dataset_source(ds)


def load_dataset_source(ds) -> Examples:
    """Read a registered dataset from its recorded source path and options."""
    opts = dict(ds.options or {})
    return load_examples(
        ds.source_path,
        format=ds.format,
        label_column=opts.get("label_column"),
        group_column=opts.get("group_column"),
        resize=tuple(opts["resize"]) if opts.get("resize") else None,
    )
