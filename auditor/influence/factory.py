"""Solvers by name: the one place that knows every solver class.

Kept apart from `solvers.py` (the base class and the dense solvers) so that EK-FAC, which
subclasses the base, and the name lookup, which needs EK-FAC, do not import each other.
"""

from __future__ import annotations

from auditor.errors import SolverError
from auditor.influence.ekfac import EKFACSolver
from auditor.influence.solvers import (
    ArnoldiSolver,
    CGSolver,
    DirectSolver,
    InverseHVP,
    LissaSolver,
)

SOLVER_CLASSES: dict[str, type[InverseHVP]] = {
    "direct": DirectSolver,
    "cg": CGSolver,
    "lissa": LissaSolver,
    "arnoldi": ArnoldiSolver,
    "ekfac": EKFACSolver,
}
SOLVERS = tuple(SOLVER_CLASSES)


def solver_class(name: str) -> type[InverseHVP]:
    """The solver class of a CLI name (its `capabilities` say what it can do)."""
    if name not in SOLVER_CLASSES:
        raise SolverError(f"unknown solver {name!r}; choose one of {', '.join(SOLVERS)}")
    return SOLVER_CLASSES[name]


def make_solver(name: str, damping: float | None = 0.0, *, prefer_undamped: bool = False, **options) -> InverseHVP:
    """Build a solver by its CLI name; an option the solver does not declare
    (`Capabilities.options`) is an error."""
    cls = solver_class(name)
    unknown = sorted(set(options) - cls.capabilities.options)
    if unknown:
        takes = ", ".join(sorted(cls.capabilities.options)) or "none"
        raise SolverError(f"bad option for solver {name}: {unknown[0]!r} (it takes {takes})")
    try:
        return cls(damping=damping, prefer_undamped=prefer_undamped, **options)
    except TypeError as exc:
        raise SolverError(f"bad option for solver {name}: {exc}") from None
