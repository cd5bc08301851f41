"""Bad input, careless or hostile, from the command line: every case exits non-zero with one line
on stderr, no traceback, and every table of the store holds exactly the rows it held before.

One table, one test per row (pytest ids name the case). The store is the embedded SQLite default;
the cases that enqueue use a real Redis (this module's own database number) as the broker.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, inspect, select, table
from typer.testing import CliRunner

from auditor.cli.main import app
from auditor.data.base import Examples
from auditor.data.bundled import digits, write_npz

pytestmark = pytest.mark.services
REDIS_URL = "redis://127.0.0.1:6379/12"
runner = CliRunner()


@dataclass
class Case:
    name: str
    args: Callable[[Path], list[str]]  # the command line, given the scratch directory
    expect: str = ""  # a fragment the one line must contain (case-insensitive)
    broker: bool = False  # run with AUDITOR_BROKER_URL set


def npz(path: Path, x, y) -> str:
    np.savez(path, x=np.asarray(x), y=np.asarray(y))
    return str(path)


def digits_rows(rows: slice) -> Examples:
    d = digits()
    return Examples(d.x[rows], d.y[rows], d.keys[rows], is_image=True)


def _zero(p: Path) -> str:
    (p / "zero.npz").write_bytes(b"")
    return str(p / "zero.npz")


def _truncated(p: Path) -> str:
    good = write_npz(digits_rows(slice(0, 50)), p / "good.npz")
    data = Path(good).read_bytes()
    (p / "trunc.npz").write_bytes(data[: len(data) // 2])
    return str(p / "trunc.npz")


def _fake_png(p: Path) -> str:
    for cls in ("a", "b"):
        (p / "imgs" / cls).mkdir(parents=True, exist_ok=True)
        (p / "imgs" / cls / "x.png").write_bytes(b"not a png at all")
    return str(p / "imgs")


def _nan(p: Path) -> str:
    x = np.ones((10, 4))
    x[3, 1] = np.nan
    return npz(p / "nan.npz", x, np.arange(10) % 2)


def _inf(p: Path) -> str:
    x = np.ones((10, 4))
    x[5, 0] = np.inf
    return npz(p / "inf.npz", x, np.arange(10) % 2)


def _ragged_csv(p: Path) -> str:
    (p / "r.csv").write_text("a,b,label\n1,2,0\n3,4,5,1\n5,6,1\n")
    return str(p / "r.csv")


def _pickled(p: Path) -> str:
    np.savez(p / "pick.npz", x=np.array([{"a": 1}, None], dtype=object), y=np.array([0, 1]))
    return str(p / "pick.npz")


def _symlink(p: Path) -> str:
    os.symlink("/etc/passwd", p / "passwd.npz")
    return str(p / "passwd.npz")


def _no_y(p: Path) -> str:
    np.savez(p / "noy.npz", x=np.ones((5, 3)))
    return str(p / "noy.npz")


def _mismatch(p: Path) -> str:
    return npz(p / "mm.npz", np.ones((5, 3)), np.arange(4) % 2)


def _huge_label(p: Path) -> str:
    return npz(p / "huge.npz", np.ones((6, 3)), np.array([0, 1, 0, 1, 0, 10**12]))


def _negative_label(p: Path) -> str:
    return npz(p / "neg.npz", np.ones((6, 3)), np.array([0, 1, 0, 1, 0, -1]))


def _float_label(p: Path) -> str:
    return npz(p / "fl.npz", np.ones((6, 3)), np.array([0.0, 1.5, 0, 1, 0, 1]))


def _pickle_weights(p: Path) -> str:
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(p / "pwned"),))

    (p / "evil.pt").write_bytes(pickle.dumps({"w": Evil()}))
    return str(p / "evil.pt")


def _bad_safetensors(p: Path) -> str:
    (p / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{notjson")
    return str(p / "bad.safetensors")


def _bad_truth(p: Path) -> str:
    (p / "truth.json").write_text("{not json")
    return str(p / "truth.json")


def _factory_module(p: Path) -> None:
    (p / "team_factories.py").write_text(
        "import sys\n"
        "def raises(num_classes=2):\n    raise RuntimeError('the factory broke')\n"
        "def exits(num_classes=2):\n    sys.exit(0)\n"
        "def not_a_module(num_classes=2):\n    return 42\n"
    )


def add(name: str, path: Callable[[Path], str]) -> Callable[[Path], list[str]]:
    return lambda p: ["dataset", "add", name, path(p)]


def run(*extra: str, kind: str = "label-check", dataset: str = "d") -> Callable[[Path], list[str]]:
    return lambda p: ["audit", "run", kind, dataset, *extra]


def enqueue(*extra: str, kind: str = "label-check") -> Callable[[Path], list[str]]:
    return lambda p: ["audit", "enqueue", kind, "d", *extra]


CASES = [
    # data files
    Case("missing file", lambda p: ["dataset", "add", "x", str(p / "nope.npz")], "no such file"),
    Case("zero-byte npz", add("x", _zero)),
    Case("truncated npz", add("x", _truncated)),
    Case("fake png", add("x", _fake_png), "x.png"),
    Case("nan features", add("x", _nan), "nan"),
    Case("inf features", add("x", _inf)),
    Case("ragged csv", add("x", _ragged_csv)),
    Case("pickled object array", add("x", _pickled)),
    Case("symlink to /etc/passwd", add("x", _symlink)),
    Case("npz without y", add("x", _no_y)),
    Case("x and y lengths differ", add("x", _mismatch)),
    Case("label 10**12", add("x", _huge_label), "label"),
    Case("negative label", add("x", _negative_label), "label"),
    Case("fractional label", add("x", _float_label), "label"),
    # names
    Case("name with rich markup", lambda p: ["dataset", "add", "[/bad]", str(p / "d.npz")], "name"),
    Case("name with a path", lambda p: ["dataset", "add", "../x", str(p / "d.npz")], "name"),
    Case("empty name", lambda p: ["dataset", "add", "", str(p / "d.npz")], "name"),
    Case("10,000-character name", lambda p: ["dataset", "add", "n" * 10_000, str(p / "d.npz")], "name"),
    Case("name with a newline", lambda p: ["dataset", "add", "a\nb", str(p / "d.npz")], "name"),
    Case("name with a terminal escape", lambda p: ["dataset", "add", "\x1b[31mred", str(p / "d.npz")], "name"),
    Case("name already taken", lambda p: ["dataset", "add", "d", str(p / "d.npz")], "exists"),
    # settings, refused before an audit row exists
    Case("unknown solver", run("--solver", "nope"), "solver"),
    Case("unknown ranking", run("--rank-by", "nope"), "rank"),
    Case("unknown kind", lambda p: ["audit", "run", "nope", "d"], "kind"),
    Case("unknown dataset", run(dataset="nope"), "nope"),
    Case("negative weight decay", run("--weight-decay", "-1"), "weight"),
    Case("negative damping", run("--damping", "-1"), "damping"),
    Case("nan damping", run("--damping", "nan"), "damping"),
    Case("unimportable model", run("--model", "no_such_module:make"), "no_such_module"),
    Case("model is not module:factory", run("--model", "resnet9000"), "resnet9000"),
    Case("seed 2**70", run("--seed", str(2**70)), "seed"),
    Case("test indices not numbers", run("--test-indices", "a,b", "--test", "t", kind="explain"), "test"),
    Case("shards 0", run("--shards", "0"), "shards"),
    Case("shards beyond the data", run("--shards", "50000"), "shards"),
    Case("top -5", run("--top", "-5", "--test", "t", kind="explain"), "top"),
    Case("explain without a test set", run(kind="explain"), "test"),
    Case("test set of another shape", run("--test", "wide", kind="explain"), "shape"),
    Case("single-class dataset", run(dataset="mono"), "class"),
    Case("one-example dataset", run(dataset="one"), "example"),
    Case("no-train without weights", run("--no-train"), "weights"),
    Case("missing weights file", run("--weights", "/nonexistent/w.safetensors"), "not found"),
    Case("pickled weights", lambda p: ["audit", "run", "label-check", "d", "--weights", _pickle_weights(p)], "pickle"),
    Case("corrupt safetensors", lambda p: ["audit", "run", "label-check", "d", "--weights", _bad_safetensors(p)], "safetensors"),
    Case("device that is not there", run("--device", "cuda:7"), "cuda"),
    Case("stdlib function as model", run("--model", "os:system"), "os:system"),
    Case("builtins input as model", run("--model", "builtins:input"), "builtins:input"),
    Case("sys.exit as model", run("--model", "sys:exit"), "sys:exit"),
    Case("os.abort as model", run("--model", "os:abort"), "os:abort"),
    Case("factory that raises", run("--model", "team_factories:raises"), "the factory broke"),
    Case("factory that exits", run("--model", "team_factories:exits"), "SystemExit"),
    Case("factory that returns no module", run("--model", "team_factories:not_a_module"), "nn.Module"),
    # enqueue: workers run registered factories only
    Case("enqueue os:system", enqueue("--model", "os:system"), "not a model factory", broker=True),
    Case("enqueue an unregistered factory", enqueue("--model", "team_factories:raises"), "registered", broker=True),
    Case("enqueue with shards 50000", enqueue("--shards", "50000"), "shards", broker=True),
    Case("enqueue unknown solver", enqueue("--solver", "nope"), "solver", broker=True),
    # ids, paths and files
    Case("audit id beyond the integer range", lambda p: ["audit", "status", "99999999999999"], "audit"),
    Case("unknown audit", lambda p: ["audit", "status", "424242"], "424242"),
    Case("cancel an unknown audit", lambda p: ["audit", "cancel", "424242"], "424242"),
    Case("findings of an unknown audit", lambda p: ["findings", "list", "424242"], "424242"),
    Case("findings --top -5", lambda p: ["findings", "list", "1", "--top", "-5"], "top"),
    Case("finding id beyond the integer range", lambda p: ["findings", "show", "99999999999999"], "finding"),
    Case("report to a directory", lambda p: ["report", "1", "--out", str(p)], "directory"),
    Case("report to an unwritable path", lambda p: ["report", "1", "--out", "/proc/nope/r.html"], "write"),
    Case("export to a directory", lambda p: ["findings", "export", "1", "--out", str(p)], "directory"),
    Case("export to an unwritable path", lambda p: ["findings", "export", "1", "--out", "/proc/nope/x.csv"], "write"),
    Case("malformed truth file", lambda p: ["report", "1", "--out", str(p / "r.html"), "--truth", _bad_truth(p)], "truth"),
    Case("schedule with an unknown solver", lambda p: ["schedule", "add", "d", "label-check", "--every", "1h", "--solver", "nope"], "solver"),
    Case("schedule with a bad period", lambda p: ["schedule", "add", "d", "label-check", "--every", "soon"], "interval"),
]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("bad-input")
    write_npz(digits_rows(slice(0, 120)), p / "d.npz")
    write_npz(digits_rows(slice(120, 160)), p / "t.npz")
    npz(p / "wide.npz", np.ones((5, 100)), np.arange(5) % 2)
    npz(p / "mono.npz", np.random.default_rng(0).normal(size=(20, 4)), np.zeros(20, dtype=int))
    npz(p / "one.npz", np.ones((1, 4)), np.array([0]))
    _factory_module(p)
    return p


def row_counts(home: Path) -> dict[str, int]:
    from auditor.store import open_store

    engine = open_store().kw["bind"]
    with engine.connect() as conn:
        names = inspect(conn).get_table_names()
        return {n: conn.execute(select(func.count()).select_from(table(n))).scalar_one() for n in names}


@pytest.fixture
def store(scratch: Path, isolated_home: Path, monkeypatch: pytest.MonkeyPatch, request) -> Path:
    monkeypatch.syspath_prepend(str(scratch))  # the team's own module, for the factory cases
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for name in ("d", "t", "wide", "mono", "one"):
        result = runner.invoke(app, ["dataset", "add", name, str(scratch / f"{name}.npz")])
        assert result.exit_code == 0, result.stderr
    result = runner.invoke(app, ["audit", "run", "label-check", "d", "--json"])  # audit 1, for reports
    assert result.exit_code == 0, result.stderr
    return scratch


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_and_stores_nothing(case: Case, store: Path, monkeypatch, request) -> None:
    if case.broker:
        request.getfixturevalue("redis_db")
        monkeypatch.setenv("AUDITOR_BROKER_URL", REDIS_URL)
    before = row_counts(store)
    result = runner.invoke(app, case.args(store))
    err = result.stderr.strip()
    assert result.exit_code != 0, f"exit 0; stdout: {result.stdout[:300]!r}"
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in err + result.stdout
    assert len(err.splitlines()) == 1, err
    assert "\x1b" not in err, err  # nothing user-supplied reaches the terminal raw
    if case.expect:
        assert case.expect.lower() in err.lower(), err
    assert row_counts(store) == before
    assert not (store / "pwned").exists()


def test_names_stored_before_the_rules_are_listed_escaped(store: Path) -> None:
    """A row with markup and a terminal escape in its name (stored before names were checked, or
    by hand) breaks no listing and reaches the terminal only as escapes."""
    from auditor.store import datasets as dataset_store
    from auditor.store import open_store

    sessions = open_store()
    with sessions() as s, s.begin():
        dataset_store.create_dataset(s, "[/bad]\x1b[31mred\nx", str(store / "d.npz"), "npz", {})
    for args in (["dataset", "list"], ["audit", "list"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.stderr
        assert "\x1b" not in result.stdout
    listed = runner.invoke(app, ["dataset", "list"]).stdout
    assert "[/bad]\\x1b[31mred\\nx" in listed.replace("\n", "").replace(" ", "") or "[/bad]" in listed


@pytest.mark.parametrize("args", [["audit", "status"], ["audit", "cancel"], ["findings", "list"], ["findings", "show"]])
def test_ids_beyond_the_integer_range_are_not_found_on_postgres(pg_url: str, monkeypatch, args) -> None:
    monkeypatch.setenv("AUDITOR_DATABASE_URL", pg_url)
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    result = runner.invoke(app, [*args, "99999999999999"])
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert len(result.stderr.strip().splitlines()) == 1 and "no " in result.stderr, result.stderr


def test_the_current_directory_is_not_on_sys_path_when_the_store_opens(tmp_path: Path, isolated_home: Path) -> None:
    """A module planted in the working directory (here `matplotlib.py`, which `auditor report`
    imports) must never be imported by a command."""
    import subprocess
    import sys

    (tmp_path / "matplotlib.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').write('x')\n")
    env = {**os.environ, "AUDITOR_HOME": str(isolated_home)}
    auditor = str(Path(sys.executable).with_name("auditor"))
    for args in (["db", "upgrade"], ["dataset", "list"], ["report", "1", "--out", "r.html"]):
        subprocess.run([auditor, *args], cwd=tmp_path, env=env, capture_output=True, timeout=120)
    assert not (tmp_path / "ran").exists()


def test_a_factory_registered_under_a_built_in_name_is_refused(store: Path, monkeypatch) -> None:
    """`AUDITOR_MODEL_FACTORIES=cnn=team:make` would silently audit the built-in cnn instead."""
    monkeypatch.setenv("AUDITOR_MODEL_FACTORIES", "cnn=team_factories:raises")
    before = row_counts(store)
    result = runner.invoke(app, ["audit", "run", "label-check", "d", "--model", "cnn"])
    assert result.exit_code != 0 and "built-in" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert row_counts(store) == before
