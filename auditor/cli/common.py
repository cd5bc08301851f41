"""Helpers every command group uses: JSON output, one-line errors, stderr console."""

from __future__ import annotations

import functools
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.text import Text
from sqlalchemy.exc import DBAPIError, OperationalError

from auditor.errors import AuditorError
from auditor.records import finite_json

# Human output and progress bars go to stderr so that `--json` leaves stdout to one JSON document.
# No markup: text from users and data (names, paths, labels) is printed as it is, never parsed
# as rich markup (a dataset called "[/bad]" once broke every listing); styles go through `styled`.
err_console = Console(stderr=True, markup=False, highlight=False)
out_console = Console(markup=False)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def clean(text: object, newline: str = "\\n") -> str:
    """`text` safe for a terminal: control characters (escape sequences, bells) shown as Python
    escapes, so nothing a user or a data file supplied can drive the terminal; newlines become
    `newline`."""
    return _CONTROL.sub(lambda m: newline if m.group() == "\n" else repr(m.group())[1:-1], str(text))


def styled(*parts: str | tuple[str, str]) -> Text:
    """A line from plain strings and (text, style) pairs; plain strings are `clean`ed."""
    return Text.assemble(*[(clean(p[0]), p[1]) if isinstance(p, tuple) else clean(p) for p in parts])


def error_line(message: object) -> Text:
    """The one stderr line of a failed command."""
    return styled(("error: ", "bold red"), clean(message, newline=" "))

F = TypeVar("F", bound=Callable[..., Any])
DATABASE_ERRORS = (OperationalError, DBAPIError)


def check_out_path(path: Path, what: str = "--out") -> None:
    """Refuse a directory as an output file before any work is done."""
    from auditor.errors import DataError

    if path.is_dir():
        raise DataError(f"{what} {path} is a directory; give a file name")


def write_text_file(path: Path, text: str, what: str = "--out") -> None:
    """Write `text` to `path` (making its folder), or a one-line `DataError` saying why not."""
    from auditor.errors import DataError

    check_out_path(path, what)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot write {what} {path}: {exc.strerror or exc}") from None


def print_json(doc: Any) -> None:
    """Print one JSON document on stdout and nothing else."""
    sys.stdout.write(json.dumps(finite_json(doc), default=str, indent=2, allow_nan=False) + "\n")
    sys.stdout.flush()


def user_errors(fn: F) -> F:
    """Turn an `AuditorError` into a one-line message on stderr and a non-zero exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except AuditorError as exc:
            err_console.print(error_line(exc), soft_wrap=True)
            raise typer.Exit(code=exc.exit_code) from None
        except DATABASE_ERRORS as exc:  # a database that is down or refuses: one line, not a traceback
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            err_console.print(error_line(f"database error: {reason[0] if reason else type(exc).__name__}"), soft_wrap=True)
            raise typer.Exit(code=3) from None

    return wrapper  # type: ignore[return-value]


def data_options():
    """How this command reads data sets (`auditor.data.options.DataOptions`), from the settings
    read now, once per command."""
    from auditor.config import get_settings
    from auditor.data.options import DataOptions

    return DataOptions.from_settings(get_settings())
