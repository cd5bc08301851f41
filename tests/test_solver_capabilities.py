"""What each solver can do is declared (`Capabilities`), and the declaration holds: its options
are what its constructor takes, its fast path gives the slow path's scores, its diagonal equals
the solve, stored factors give back the fitted model (`InfluenceModel.from_factors`), and
`prefer_undamped` is checked where the solver says it checks it."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from torch import nn

from auditor.errors import SolverError
from auditor.influence import FunctionalModel, InfluenceModel, make_solver
from auditor.influence.factory import SOLVER_CLASSES
from auditor.influence.grads import gradients
from auditor.models import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"arnoldi": {"rank": 200}, "lissa": {"depth": 4000}}  # full rank / deep enough to be exact


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x, y = torch.randn(60, 6, dtype=torch.float64), torch.randint(0, 3, (60,))
    train(module, x, y, TrainConfig(weight_decay=0.05, max_iter=500))  # to a minimum: H is PD
    return FunctionalModel.from_module(module, "all", weight_decay=0.05), x, y


@pytest.mark.parametrize("name", sorted(SOLVER_CLASSES))
def test_declared_options_are_exactly_what_the_constructor_takes(name: str) -> None:
    cls = SOLVER_CLASSES[name]
    taken = set(inspect.signature(cls).parameters) - {"damping", "prefer_undamped"}
    assert cls.capabilities.options == taken
    with pytest.raises(SolverError, match=f"bad option for solver {name}: 'nonsense'"):
        make_solver(name, 0.1, nonsense=1)


@pytest.mark.parametrize("name", sorted(SOLVER_CLASSES))
def test_a_declared_fast_path_gives_the_slow_paths_self_scores_and_an_undeclared_one_refuses(
    name, net
) -> None:
    fm, x, y = net
    inf = InfluenceModel(fm, make_solver(name, 0.1, **SMALL.get(name, {}))).fit(x, y)
    if not SOLVER_CLASSES[name].capabilities.self_scores_fast_path:
        with pytest.raises(SolverError, match="no self-scores fast path"):
            inf.solver.self_scores(x, y, inf.n)
        return
    fast, flat = inf.solver.self_scores(x, y, inf.n), inf.self_scores_flat(x, y)
    torch.testing.assert_close(fast.self_influence, flat.self_influence, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(fast.loo_outputs, flat.loo_outputs, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(
        inf.self_scores(x, y).self_influence, flat.self_influence, rtol=1e-8, atol=1e-12
    )


@pytest.mark.parametrize(
    "name", sorted(n for n, c in SOLVER_CLASSES.items() if c.capabilities.diagonal_without_solve)
)
def test_a_declared_diagonal_without_solves_equals_the_solved_one(name: str, net) -> None:
    fm, x, y = net
    solver = make_solver(name, 0.1, **SMALL.get(name, {})).fit(fm, x, y)
    assert type(solver).quadratic is not SOLVER_CLASSES["cg"].quadratic  # overridden, as declared
    G = gradients(fm, x, y)
    torch.testing.assert_close(
        solver.quadratic(G), (G * solver.solve(G)).sum(1), rtol=1e-8, atol=1e-12
    )


@pytest.mark.parametrize("name", sorted(SOLVER_CLASSES))
def test_from_factors_gives_back_the_fitted_model_where_factors_are_declared_storable(
    name: str, net
) -> None:
    fm, x, y = net
    fitted = InfluenceModel(fm, make_solver(name, None, **SMALL.get(name, {}))).fit(x, y)
    if not SOLVER_CLASSES[name].capabilities.storable_factors:
        with pytest.raises(SolverError, match="no factors"):
            fitted.factors()
        return
    tensors, meta = fitted.factors()
    assert meta["n"] == len(x)
    loaded = InfluenceModel.from_factors(
        fm, make_solver(name, None, **SMALL.get(name, {})), tensors, meta
    )
    assert loaded.n == fitted.n and loaded.solver.describe() == fitted.solver.describe()
    a, b = loaded.self_scores(x, y), fitted.self_scores(x, y)
    torch.testing.assert_close(a.self_influence, b.self_influence, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a.loo_outputs, b.loo_outputs, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        loaded.up_loss(x, y, x[:3], y[:3]), fitted.up_loss(x, y, x[:3], y[:3])
    )
    with pytest.raises(SolverError, match="fitted on 60 rows, not 61"):
        InfluenceModel.from_factors(fm, make_solver(name, None), tensors, meta, n=61)
    old = {k: v for k, v in meta.items() if k != "n"}  # stored before factors said their n
    assert InfluenceModel.from_factors(fm, make_solver(name, None), tensors, old, n=60).n == 60


@pytest.mark.parametrize("name", ["direct", "ekfac", "cg"])
def test_prefer_undamped_is_checked_only_by_solvers_that_declare_it(name: str, net) -> None:
    fm, x, y = net
    solver = make_solver(name, None, prefer_undamped=True).fit(fm, x, y)
    assert solver.damping == 0.0
    if SOLVER_CLASSES[name].capabilities.checks_undamped:
        assert solver.damping_reason.startswith("none needed: the curvature is positive definite")
    else:
        assert solver.damping_reason == "none: the model was trained to a minimum here"


def test_the_analyses_read_capabilities_instead_of_probing_the_engine() -> None:
    source = "\n".join(p.read_text() for p in (ROOT / "auditor" / "analyses").glob("*.py"))
    for probe in (
        "inspect.signature",
        'getattr(solver, "self_scores"',
        ".prefer_undamped =",
        "inf.n =",
        "engine.storable ",
    ):
        assert probe not in source, probe
    engine = (ROOT / "auditor" / "influence" / "scores.py").read_text()
    assert 'getattr(self.solver, "self_scores"' not in engine
