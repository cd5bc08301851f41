"""Helpers every command group uses: JSON output, one-line errors, stderr console."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from auditor.errors import AuditorError

# Human output and progress bars go to stderr so that `--json` leaves stdout to one JSON document.
err_console = Console(stderr=True)
out_console = Console()

F = TypeVar("F", bound=Callable[..., Any])


def print_json(doc: Any) -> None:
    """Print one JSON document on stdout and nothing else."""
    sys.stdout.write(json.dumps(doc, default=str, indent=2) + "\n")
    sys.stdout.flush()


def user_errors(fn: F) -> F:
    """Turn an `AuditorError` into a one-line message on stderr and a non-zero exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except AuditorError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=exc.exit_code) from None

    return wrapper  # type: ignore[return-value]
