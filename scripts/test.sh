#!/usr/bin/env bash
# The project's test command (README): set up the venv if needed, make sure PostgreSQL and Redis
# run, then run the whole suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/auditor ] || [ pyproject.toml -nt .venv/.installed ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q -e '.[dev]'
  touch .venv/.installed
fi
bash scripts/services.sh
# The browser tests drive Debian's chromium with Playwright (Playwright never downloads a browser
# here). Install it once when missing; the tests fail, not skip, if it still is not there.
if [ ! -x /usr/bin/chromium ]; then
  echo "installing Debian's chromium for the browser tests" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get install -y -q chromium >/dev/null 2>&1 || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q chromium >/dev/null; } || echo "could not install chromium; the browser tests will fail" >&2
fi
# Two cores: one BLAS/OpenMP thread per process keeps the worker subprocesses from fighting the
# test process (oversubscription made small L-BFGS fits ~100x slower here).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
# Two processes (pytest-xdist), each test file whole in one of them: the integration files each
# own a Redis database number and their files' fixtures, and most of a run waits on worker
# processes, servers and the databases rather than on the CPU. TEST_PROCESSES=1 runs
# it in one process.
exec .venv/bin/python -m pytest -n "${TEST_PROCESSES:-2}" --dist loadfile "$@"
