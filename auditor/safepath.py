"""Python subprocesses that never import from the current directory.

Python puts the current directory first on `sys.path` for `python -c` (as '') and for
`python -m` (as its absolute path, before the module is looked up), so a `celery.py`, a
`torch.py` or a `workers/` package left where `auditor worker` was started would run as the
worker. Every Python subprocess the auditor starts is built by `python_argv` and `python_env`:

- On Python >= 3.11 the child runs with `-P` (safe_path: nothing is prepended to `sys.path`),
  and PYTHONSAFEPATH=1 is in its environment so the Pythons *it* starts (a multiprocessing
  spawn, a team's tool) are safe as well.
- Python 3.10 (pyproject allows it) has neither. There the command is `-c` whose first statement
  removes the '' entry before anything is imported. That is early enough: `site` (and any
  `sitecustomize`) runs before Python adds the entry, and the statement itself imports only the
  built-in `sys`. The same statement runs on 3.11 too, where it finds nothing to remove.
- `-m` is never used: on 3.10 it inserts the directory and looks the module up before any code
  of ours could run. `-I` would be safe, but it also ignores PYTHONPATH and the user's site
  directory, which deployments (and this project's tests) rely on.
- An empty component of PYTHONPATH (`PYTHONPATH=:/opt/lib`, the classic `$PYTHONPATH:` slip)
  means the current directory to Python, even with `-P`; it is left out of the child's
  environment. A relative component the user wrote (`PYTHONPATH=.`) is their explicit choice
  and is kept.

The `auditor` console script itself is safe already: Python puts the script's own directory
(the environment's `bin/`) first, not the current one. Celery's imports by name are made safe in
`workers.celery_app` (its loader would otherwise put the directory back for task modules).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

HAS_SAFE_PATH_FLAG = sys.version_info >= (3, 11)
# Must stay the first statement of every -c command, and import nothing but builtins.
DROP_CURRENT_DIRECTORY = "import sys; sys.path[:] = [p for p in sys.path if p != '']\n"


def python_argv(code: str, *args: str, safe_path_flag: bool = HAS_SAFE_PATH_FLAG) -> list[str]:
    """`[python, (-P,) -c, <drop ''> + code, *args]`: this interpreter running `code` with
    `sys.argv[1:] == args` and nothing from the current directory importable.
    `safe_path_flag=False` is what runs on 3.10 (tests use it to check that path on 3.11)."""
    flags = ["-P"] if safe_path_flag else []
    return [sys.executable, *flags, "-c", DROP_CURRENT_DIRECTORY + code, *args]


def python_env(
    extra: Mapping[str, str] | None = None,
    base: Mapping[str, str] | None = None,
    *,
    safe_path_flag: bool = HAS_SAFE_PATH_FLAG,
) -> dict[str, str]:
    """The environment for a Python child: `base` (default: ours) with `extra` on top, no empty
    PYTHONPATH component, and PYTHONSAFEPATH=1 where Python knows it."""
    env = {**(os.environ if base is None else base), **(extra or {})}
    if safe_path_flag:
        env["PYTHONSAFEPATH"] = "1"
    if "PYTHONPATH" in env:
        kept = [p for p in env["PYTHONPATH"].split(os.pathsep) if p]
        if kept:
            env["PYTHONPATH"] = os.pathsep.join(kept)
        else:
            del env["PYTHONPATH"]
    return env
