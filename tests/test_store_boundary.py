"""The store owns the SQL: no module of the library outside `auditor/store` builds or runs a
query, and no view reaches the database through a lazy attribute (`object_session`).

Read from the source, so a query added anywhere (a service, a route, a worker task) fails here
with its file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# What building or running SQL takes. Types (`Session`, `sessionmaker`) and exceptions
# (`sqlalchemy.exc`) may be used anywhere; the engine setup lives in the store as well.
QUERY_BUILDERS = {"select", "insert", "update", "delete", "text", "func", "exists", "bindparam", "and_", "or_"}
SESSION_QUERIES = {"execute", "scalar", "scalars", "query", "refresh", "merge"}
MODELS = {"Audit", "Dataset", "Finding", "Review", "ReviewEvent", "Schedule", "Snapshot", "SnapshotExample", "User", "ApiToken", "Artifact"}


def library_files() -> list[Path]:
    files = [*sorted((ROOT / "auditor").rglob("*.py")), *sorted((ROOT / "workers").rglob("*.py"))]
    return [p for p in files if (ROOT / "auditor" / "store") not in p.parents]


def violations(path: Path) -> list[str]:
    out = []
    rel = path.relative_to(ROOT)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "sqlalchemy":
            for alias in node.names:
                if alias.name in QUERY_BUILDERS or alias.name == "object_session":
                    out.append(f"{rel}:{node.lineno} imports sqlalchemy's {alias.name}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name, owner = node.func.attr, node.func.value
            owner_name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", "")
            if name in SESSION_QUERIES and owner_name in {"s", "session", "db", "conn", "connection"}:
                out.append(f"{rel}:{node.lineno} runs {owner_name}.{name}(...)")
            if name in {"get", "delete"} and node.args and isinstance(node.args[0], ast.Name) and node.args[0].id in MODELS:
                out.append(f"{rel}:{node.lineno} loads a {node.args[0].id} row with .{name}(...)")
            if name == "delete" and owner_name in {"s", "session"}:
                out.append(f"{rel}:{node.lineno} deletes a row with {owner_name}.delete(...)")
    return out


def test_no_query_is_built_or_run_outside_the_store() -> None:
    found = [v for path in library_files() for v in violations(path)]
    assert not found, "SQL outside auditor/store (move it into the entity's store module):\n" + "\n".join(found)


def test_the_checker_sees_a_query(tmp_path: Path) -> None:
    """A guard on the guard: each shape of query the test forbids is reported."""
    probe = ROOT / "auditor" / "_boundary_probe.py"
    probe.write_text(
        "from sqlalchemy import select\n"
        "def f(s, Audit):\n"
        "    s.execute(select(Audit))\n"
        "    s.get(Audit, 1)\n"
        "    s.delete(s)\n"
    )
    try:
        found = violations(probe)
    finally:
        probe.unlink()
    assert len(found) == 4, found
