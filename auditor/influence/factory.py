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


def make_solver(name: str, damping: float = 0.0, **options) -> InverseHVP:
    """Build a solver by its CLI name; unknown options for that solver are an error."""
    if name not in SOLVER_CLASSES:
        raise SolverError(f"unknown solver {name!r}; choose one of {', '.join(SOLVERS)}")
    try:
        return SOLVER_CLASSES[name](damping=damping, **options)
    except TypeError as exc:
        raise SolverError(f"bad option for solver {name}: {exc}") from None
