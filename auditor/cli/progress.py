"""Progress bars on stderr for long work, as a `Progress` callback the analyses understand."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from auditor.analyses.base import Progress as ProgressFn
from auditor.cli.common import err_console


@contextmanager
def progress_bar(title: str, enabled: bool = True) -> Iterator[ProgressFn]:
    """Yield a callback(fraction, message) that drives one rich bar (or does nothing)."""
    if not enabled:
        yield lambda fraction, message: None
        return
    with Progress(
        TextColumn("{task.fields[title]}", style="bold", markup=False),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        TextColumn("{task.description}", markup=False),
        console=err_console,
        transient=False,
    ) as bar:
        task = bar.add_task("", total=1.0, title=title)

        def update(fraction: float, message: str) -> None:
            bar.update(task, completed=fraction, description=message)

        yield update
