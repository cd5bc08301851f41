"""The layer picture in README holds: front doors -> services -> analyses -> engine, store, data.

Every import in `auditor/` and `workers/` is read from the source (module level and inside
functions alike, since a lazy import is still a dependency), and the test fails on an import
that runs back up a layer or on a cycle between modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# lowest first; a module's layer is its longest matching prefix
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("auditor", "auditor.errors", "auditor.progress", "auditor.records", "auditor.config", "auditor.memory", "auditor.recurrence")),
    ("engine and data", ("auditor.influence", "auditor.data")),
    ("models and store", ("auditor.models", "auditor.store")),
    ("analyses", ("auditor.analyses",)),
    (
        "services",
        (
            "auditor.resolve",
            "auditor.datasets",
            "auditor.audits",
            "auditor.runner",
            "auditor.reconcile",
            "auditor.lds_jobs",
            "auditor.dampings",
            "auditor.shards",
            "auditor.schedules",
            "auditor.findings_view",
            "auditor.audit_view",
            "auditor.reviewing",
            "auditor.audit_diff",
            "auditor.report",
            "auditor.demo",
            "auditor.auth",
            "auditor.artifacts",
            "auditor.workload",
            "auditor.rerank",
            "auditor.verification",
        ),
    ),
    ("front doors", ("auditor.cli", "auditor.web", "workers")),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {
        module_name(p): p
        for top in ("auditor", "workers")
        for p in sorted((ROOT / top).rglob("*.py"))
    }


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules imported anywhere in `path` (`from a.b import c` names a.b.c when c is a
    module, else a.b)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names]
        else:
            continue
        out.update(n for n in names if n in modules)
    return out


def layer_of(module: str) -> int:
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    assert rank is not None, f"{module} is in no layer: add it to LAYERS (and README's picture)"
    return rank


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {m: imports_of(p, modules) - {m} for m, p in modules.items()}


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = [
        f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
        for m, deps in import_graph().items()
        for d in sorted(deps)
        if layer_of(d) > layer_of(m)
    ]
    assert not upward, "\n".join(upward)


def test_the_engine_imports_only_torch_and_the_bottom_layer() -> None:
    allowed = ("auditor.influence", "auditor.errors", "auditor.progress", "auditor.memory")
    graph = import_graph()
    bad = [
        f"{m} imports {d}"
        for m, deps in graph.items()
        if m.startswith("auditor.influence")
        for d in deps
        if not d.startswith(allowed)
    ]
    assert not bad, "\n".join(bad)
    for path in (ROOT / "auditor" / "influence").rglob("*.py"):
        text = path.read_text()
        for forbidden in ("sqlalchemy", "celery", "typer", "redis"):
            assert f"import {forbidden}" not in text and f"from {forbidden}" not in text, (path, forbidden)


def test_there_is_no_import_cycle() -> None:
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycles.append(path[path.index(d) :] + [d])
            elif d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_lazy_imports() -> None:
    """A guard on the guard: the walker must see an import inside a function, or the tests above
    could pass on a graph that misses exactly the imports that used to run back up."""
    graph = import_graph()
    # auditor.cli.audit imports the audits service inside its command functions only
    assert "auditor.audits" in graph["auditor.cli.audit"]
    assert layer_of("auditor.audits") > layer_of("auditor.analyses.registry")
