"""explain (paper 5.1): helpful / harmful training points agree in sign with real retraining.

The check is against leave-one-out retraining (weight 0, warm-started from the trained model),
not against the influence computation itself, so a sign slip anywhere in the engine or in the
analysis shows up here.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from auditor.analyses.base import AnalysisInput, AnalysisResult
from auditor.analyses.explain import ROW_PAYLOAD, ExplainConfig
from auditor.analyses.explain import run as explain
from auditor.analyses.fitting import as_tensors, fit_model
from auditor.analyses.settings import ModelSpec, parse_specs
from auditor.analyses.solver_choice import choose_solver
from auditor.data.base import Examples
from auditor.data.bundled import breast_cancer, digits
from auditor.data.keys import example_keys
from auditor.errors import AuditorError, DataError
from auditor.models import TrainConfig, train

TOP = 5


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """These models are tiny: intra-op threads only add synchronisation, which on a busy 2-core
    CI machine (spinning OpenMP workers) made each L-BFGS step ~300x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _rows(data: Examples, idx: np.ndarray) -> Examples:
    x, y = data.x[idx], data.y[idx]
    return Examples(x=x, y=y, keys=example_keys(x, y), feature_names=data.feature_names)


@pytest.fixture(scope="module")
def split() -> tuple[Examples, Examples]:
    data = breast_cancer()
    perm = np.random.default_rng(0).permutation(len(data))
    return _rows(data, perm[:400]), _rows(data, perm[400:])


@pytest.fixture(scope="module")
def explained(split: tuple[Examples, Examples]) -> AnalysisResult:
    train_set, test_set = split
    params = {"errors": True, "max_tests": 2, "top": TOP}
    return explain(AnalysisInput(train=train_set, test=test_set, params=params))


def _test_loss(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(module(x), y))


def test_removing_the_top_harmful_point_lowers_the_test_loss_and_helpful_raises_it(
    split: tuple[Examples, Examples], explained: AnalysisResult
) -> None:
    train_set, test_set = split
    fitted = fit_model(train_set, ModelSpec())
    x_test, y_test = as_tensors(test_set)
    config = TrainConfig(weight_decay=ModelSpec().l2)

    def retrained(drop: int | None) -> torch.nn.Module:
        module = copy.deepcopy(fitted.module)  # warm start: same optimum up to the removal
        weight = torch.ones(len(train_set), dtype=torch.float64)
        if drop is not None:
            weight[drop] = 0.0
        train(module, fitted.x, fitted.y, config, sample_weight=weight)
        return module

    base = retrained(None)  # the same optimiser path with nothing removed: only the removal differs
    firsts = [f for f in explained.findings if f.rank == 1 and not f.kind.startswith("neighbour")]
    assert {f.kind.split(":")[0] for f in firsts} == {"helpful", "harmful"}
    for f in firsts:
        t = f.payload["test_index"]
        xt, yt = x_test[t : t + 1], y_test[t : t + 1]
        actual = _test_loss(retrained(f.example_index), xt, yt) - _test_loss(base, xt, yt)
        predicted = f.payload["predicted_loss_change_if_removed"]
        if f.kind.startswith("harmful"):
            assert f.payload["influence"] > 0 and predicted < 0
            assert actual < 0, f"removing harmful {f.example_index} raised test loss {t}"
        else:
            assert f.payload["influence"] < 0 and predicted > 0
            assert actual > 0, f"removing helpful {f.example_index} lowered test loss {t}"
        assert 0.5 < actual / predicted < 2.0  # same order of magnitude, not just the same sign


def test_explains_misclassified_points_with_ranked_rows_of_every_kind(
    explained: AnalysisResult,
) -> None:
    points = explained.summary["test_points"]
    assert explained.summary["selection"] == "errors" and len(points) == 2
    assert all(p["test_label"] != p["test_pred"] for p in points)
    for p in points:
        t = p["test_index"]
        for kind in ("helpful", "harmful", "neighbour"):
            rows = [f for f in explained.findings if f.kind == f"{kind}:t{t}"]
            assert [f.rank for f in rows] == list(range(1, len(rows) + 1))
            assert set(rows[0].payload) == set(ROW_PAYLOAD)
            assert [f.score for f in rows] == sorted((f.score for f in rows), reverse=True)
            assert all(f.label in (0, 1) for f in rows)
        assert 0.0 <= p["jaccard"] <= 1.0


def test_neighbour_rows_are_the_nearest_training_inputs(
    split: tuple[Examples, Examples], explained: AnalysisResult
) -> None:
    train_set, test_set = split
    a = train_set.x.astype(np.float64)
    mean, std = a.mean(0), a.std(0)
    for p in explained.summary["test_points"]:
        rows = [f for f in explained.findings if f.kind == f"neighbour:t{p['test_index']}"]
        assert len(rows) == TOP
        b = test_set.x[p["test_index"]].astype(np.float64)
        d = np.linalg.norm((a - mean) / std - (b - mean) / std, axis=1)
        assert [f.example_index for f in rows] == list(np.argsort(d)[:TOP])
        assert [f.payload["distance"] for f in rows] == pytest.approx(np.sort(d)[:TOP])
        assert [f.payload["distance_rank"] for f in rows] == list(range(1, TOP + 1))


def test_findings_are_unique_per_key_and_kind_and_storable(explained: AnalysisResult) -> None:
    counts = Counter((f.example_key, f.kind) for f in explained.findings)
    assert max(counts.values()) == 1
    assert all(len(f.kind) <= 32 for f in explained.findings)  # the store's VARCHAR(32)
    json.dumps(explained.summary)
    json.dumps([f.payload for f in explained.findings])


def test_explicit_test_indices_and_progress(split: tuple[Examples, Examples]) -> None:
    train_set, test_set = split
    seen: list[float] = []
    params = {
        "model": {"name": "logreg"},
        "solver": {"name": "direct"},
        "test_indices": [3],
        "top": 2,
    }
    result = explain(
        AnalysisInput(
            train=train_set, test=test_set, params=params, progress=lambda f, m: seen.append(f)
        )
    )
    assert {f.kind.split(":")[1] for f in result.findings} == {"t3"}
    assert len([f for f in result.findings if f.kind == "neighbour:t3"]) == 2
    assert seen[-1] == 1.0 and seen == sorted(seen)


def test_params_nested_or_flat() -> None:
    model, solver = parse_specs({"model": "mlp", "hidden": 8, "solver": "cg", "damping": "0.01"})
    assert (model.name, model.hidden, solver.name, solver.damping) == ("mlp", 8, "cg", 0.01)
    model, solver = parse_specs({"model": {"name": "logreg", "weight_decay": 0.1}})
    assert (model.weight_decay, solver.name) == (0.1, "auto")
    # `auto` is resolved in the library, for params from any source: exact for a small model
    fitted = fit_model(digits().subset(slice(0, 100)), model)
    chosen, why = choose_solver(solver, fitted.functional(), fitted.x, fitted.y, few_solves=True)
    assert chosen.name == "direct" and why.startswith("exact")
    cfg = ExplainConfig.from_params({"errors": "true", "max_tests": 3})
    assert cfg.errors and cfg.max_tests == 3 and cfg.test_indices is None
    with pytest.raises(AuditorError, match="bad model"):
        parse_specs({"model": {"nmae": "logreg"}})
    with pytest.raises(AuditorError, match="bad model or solver"):
        parse_specs({"damping": "lots"})
    with pytest.raises(AuditorError, match="top must be"):
        ExplainConfig.from_params({"top": 0})


def test_test_set_of_another_shape_is_a_one_line_data_error(
    split: tuple[Examples, Examples],
) -> None:
    train_set, test_set = split
    narrow = Examples(x=test_set.x[:, :10], y=test_set.y, keys=test_set.keys)
    with pytest.raises(DataError) as info:
        explain(AnalysisInput(train=train_set, test=narrow))
    assert "shape (10,)" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(DataError, match="needs a non-empty test set"):
        explain(AnalysisInput(train=train_set, test=None))
    with pytest.raises(DataError, match="out of range"):
        explain(AnalysisInput(train=train_set, test=test_set, params={"test_indices": [10_000]}))
