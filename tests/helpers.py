"""Small shared builders for tests: bundled data as `Examples`, without the store, and the CLI
run in process."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.datasets import load_digits
from typer.testing import CliRunner

from auditor.data.base import Examples

_runner = CliRunner()


def cli(*args: str, ok: bool = True) -> Any:
    """`auditor ARGS` in process. With ok (default) it must succeed, and the parsed JSON (when
    --json was given) or stdout comes back; otherwise the click Result, to inspect a failure."""
    from auditor.cli.main import app

    result = _runner.invoke(app, list(args))
    if ok:
        assert result.exit_code == 0, f"auditor {' '.join(args)}: {result.stderr or result.stdout or repr(result.exception)}"
        return json.loads(result.stdout) if "--json" in args else result.stdout
    return result


def key(x: np.ndarray, y: int) -> str:
    return hashlib.sha256(x.tobytes() + str(int(y)).encode()).hexdigest()[:32]


def digits(n: int | None = None, offset: int = 0) -> Examples:
    """sklearn's digits as uint8 8x8 images (0..16 scaled to 0..255)."""
    d = load_digits()
    x = np.rint(d.data * 255 / 16).astype(np.uint8).reshape(-1, 8, 8)
    y = d.target.astype(np.int64)
    sl = slice(offset, None if n is None else offset + n)
    x, y = x[sl], y[sl]
    return Examples(x, y, [key(x[i], y[i]) for i in range(len(y))], source="digits", is_image=True)


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout` s."""
    import pytest

    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
