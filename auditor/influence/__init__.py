"""The influence engine: pure PyTorch, no I/O, no SQL, no Celery.

Typical use (fit curvature once, score many)::

    fm = FunctionalModel.from_module(module, which="all", weight_decay=0.01)
    inf = InfluenceModel(fm, make_solver("direct")).fit(x_train, y_train)
    scores = inf.self_influence(x_train, y_train)
"""

from auditor.influence.factory import SOLVERS, make_solver
from auditor.influence.model import FunctionalModel, select_parameters
from auditor.influence.scores import InfluenceModel, SelfScores
from auditor.influence.solvers import InverseHVP

__all__ = [
    "FunctionalModel",
    "InfluenceModel",
    "SelfScores",
    "InverseHVP",
    "SOLVERS",
    "make_solver",
    "select_parameters",
]
