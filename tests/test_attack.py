"""Training-set attack (paper 5.2): the 8-bit projection, real flips, honest non-flips, bad input."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from auditor.analyses.attack import (
    HALF_GREY,
    AttackConfig,
    Retrainer,
    attack,
    prepare,
    project,
    run,
    to_bytes,
)
from auditor.analyses.base import AnalysisInput, AnalysisResult
from auditor.data.base import Examples
from auditor.data.bundled import digits
from auditor.errors import AuditorError, DataError
from auditor.models import TrainConfig, build_model, train

# A small logistic regression with little weight decay: the setting where half a grey level on
# three training images is enough to flip the least certain test prediction (see bench/attack.py
# for the honest success rates on the full data set).
N_TRAIN, TEST_ROWS, WEIGHT_DECAY = 150, slice(1000, 1200), 1e-4
FLIP_PARAMS = {
    "model": {"name": "logreg", "weight_decay": WEIGHT_DECAY},
    "targets": 3,
    "budget": 3,
    "iterations": 20,
}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Two threads on a busy 2-core machine are many times slower than one for these sizes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data() -> tuple[Examples, Examples]:
    ds = digits()
    return ds.subset(slice(0, N_TRAIN)), ds.subset(TEST_ROWS)


@pytest.fixture(scope="module")
def attacked(
    data: tuple[Examples, Examples], tmp_path_factory: pytest.TempPathFactory
) -> tuple[AnalysisResult, Path]:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("attack-artifacts")
    train_set, test_set = data
    return run(AnalysisInput(train_set, test_set, dict(FLIP_PARAMS), artifacts_dir=out)), out


def _targets(result: AnalysisResult) -> list:
    return [f for f in result.findings if f.kind == "target"]


# ---- (1) the projection keeps the stored bytes ------------------------------------------------
@settings(max_examples=100, deadline=None)
@given(
    original=arrays(
        np.uint8,
        st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 6)),
        elements=st.sampled_from([0, 1, 2, 127, 128, 253, 254, 255]) | st.integers(0, 255),
    ),
    step=st.floats(-1e6, 1e6, allow_nan=False),
    seed=st.integers(0, 2**16),
)
def test_projection_rounds_back_to_the_stored_bytes(original: np.ndarray, step: float, seed: int):
    rng = np.random.default_rng(seed)
    base = torch.as_tensor(original, dtype=torch.float64)
    x = base
    for _ in range(3):  # several arbitrary (large, mixed-sign) steps, projecting after each
        x = project(x + step * torch.as_tensor(rng.standard_normal(original.shape)), base)
        assert np.array_equal(to_bytes(x.numpy()), original)
        # Also after the cast a float32 pipeline would do.
        assert np.array_equal(to_bytes(x.numpy().astype(np.float32)), original)
    assert float((x - base).abs().max()) <= HALF_GREY + 1e-12 < 0.5
    assert float(x.min()) >= 0.0 and float(x.max()) <= 255.0


def test_projection_reaches_the_edges_of_the_box():
    original = torch.tensor([0.0, 1.0, 128.0, 254.0, 255.0], dtype=torch.float64)
    up = project(original + 10.0, original)
    down = project(original - 10.0, original)
    assert torch.allclose(up - original, torch.tensor([HALF_GREY] * 4 + [0.0], dtype=torch.float64))
    assert torch.allclose(
        original - down, torch.tensor([0.0] + [HALF_GREY] * 4, dtype=torch.float64)
    )


# ---- (2) a real flip, confirmed by an independent retrain -------------------------------------
def test_attack_flips_a_target_and_an_independent_retrain_agrees(
    attacked: tuple[AnalysisResult, Path], data: tuple[Examples, Examples]
):
    result, out = attacked
    train_set, test_set = data
    flipped = [f for f in _targets(result) if f.payload["flipped"]]
    assert flipped, "no target flipped"
    assert result.summary["n_flipped"] == len(flipped)
    f = flipped[0]
    p = f.payload
    assert p["pred_before"] == p["target_label"] != p["pred_after"]
    assert p["margin_before"] > 0 > p["margin_after"]
    assert p["conf_after"] < p["conf_before"]
    assert p["max_abs_change"] < 0.5 and p["bytes_unchanged"]
    assert f.rank == 1  # flipped targets rank first
    # The poisoned floats saved as the artefact round back to the stored bytes exactly.
    saved = np.load(out / p["npz_path"])
    rows = saved["training_indices"]
    assert list(rows) == p["training_indices"]
    assert np.array_equal(to_bytes(saved["x_perturbed"]), train_set.x[rows])
    assert np.array_equal(saved["x_original"], train_set.x[rows])
    assert (out / p["png_path"]).stat().st_size > 0

    # Independent check: a fresh model trained from scratch with the ordinary training code, once
    # on the clean images and once with the poisoned floats, must disagree on the target.
    def retrain_predict(x: np.ndarray) -> int:
        module = build_model("logreg", train_set.x, train_set.num_classes, True)
        train(
            module,
            torch.as_tensor(x, dtype=torch.float64),
            torch.as_tensor(train_set.y),
            TrainConfig(weight_decay=WEIGHT_DECAY, max_iter=5000, tol=1e-12),
        )
        target = torch.as_tensor(test_set.x[p["target_index"]][None], dtype=torch.float64)
        with torch.no_grad():
            return int(module(target).argmax())

    poisoned = train_set.x.astype(np.float64)
    poisoned[rows] = saved["x_perturbed"]
    assert retrain_predict(train_set.x.astype(np.float64)) == p["target_label"]
    assert retrain_predict(poisoned) == p["pred_after"] != p["target_label"]


def test_findings_are_unique_and_carry_the_poisoned_rows(
    attacked: tuple[AnalysisResult, Path], data: tuple[Examples, Examples]
):
    result, _ = attacked
    train_set, test_set = data
    keys = [(f.example_key, f.kind) for f in result.findings]
    assert len(keys) == len(set(keys))
    targets = _targets(result)
    assert len(targets) == 3 and result.summary["n_targets"] == 3
    for t in targets:
        p = t.payload
        assert t.example_key == test_set.keys[p["target_index"]] == p["target_key"]
        poisons = [f for f in result.findings if f.kind == f"poison:t{p['target_index']}"]
        assert sorted(f.example_index for f in poisons) == sorted(p["training_indices"])
        assert all(f.example_key == train_set.keys[f.example_index] for f in poisons)
        assert len(p["training_indices"]) == 3
        # Influence predicts what the retrain measures (to first order).
        assert p["actual_change"] == pytest.approx(p["predicted_change"], rel=0.2)
    rate = result.summary["success_rate"]
    assert rate == result.summary["n_flipped"] / 3
    assert result.summary["by_budget"]["3"]["success_rate"] == rate


# ---- (3) targets that do not flip are recorded as such -----------------------------------------
def test_unflipped_targets_are_recorded_as_not_flipped(attacked: tuple[AnalysisResult, Path]):
    result, _ = attacked
    kept = [f for f in _targets(result) if not f.payload["flipped"]]
    assert kept, "expected at least one target to survive the attack"
    for f in kept:
        assert f.payload["flipped"] is False
        assert f.payload["pred_after"] == f.payload["pred_before"]
        assert f.payload["margin_after"] > 0


def test_zero_iterations_changes_nothing_and_flips_nothing(data: tuple[Examples, Examples]):
    train_set, test_set = data
    params = {"model": {"weight_decay": 0.01}, "iterations": 0, "targets": 1, "budget": 2}
    result = run(AnalysisInput(train_set.subset(slice(0, 60)), test_set, params))
    (target,) = _targets(result)
    p = target.payload
    assert p["flipped"] is False and result.summary["success_rate"] == 0.0
    assert p["max_abs_change"] == 0.0
    assert p["pred_after"] == p["pred_before"]
    assert p["conf_after"] == pytest.approx(p["conf_before"], abs=1e-9)


# ---- frozen features (the paper's setting for networks) ---------------------------------------
def test_frozen_features_retrain_only_the_last_layer(data: tuple[Examples, Examples]):
    train_set, test_set = data
    params = {
        "model": {"name": "mlp", "hidden": 8, "max_iter": 50, "weight_decay": 1e-3},
        "targets": 1,
        "budget": 2,
        "iterations": 10,
    }
    cfg = AttackConfig.from_params(params)
    setup = prepare(train_set.subset(slice(0, 80)), test_set, cfg)
    assert setup.fm.names == ["4.weight", "4.bias"] and setup.retrainer.head is not None
    # The cached-feature retrain and the plain full-model retrain reach the same optimum.
    rows = torch.tensor([0, 5])
    x_rows = project(setup.x[rows] + 0.3, setup.x[rows])
    fast, g_fast = setup.retrainer.fit(setup.theta, rows, x_rows, solve=setup.inf.solver.solve)
    plain = Retrainer(setup.fm, setup.x, setup.y)
    plain.head = None
    slow, g_slow = plain.fit(setup.theta, rows, x_rows)
    assert max(g_fast, g_slow) < 1e-8
    assert torch.allclose(fast, slow, atol=1e-7)

    result = attack(setup, cfg)
    (target,) = _targets(result)
    p = target.payload
    assert p["flipped"] in (True, False) and p["bytes_unchanged"]
    assert p["actual_change"] == pytest.approx(p["predicted_change"], rel=0.2)
    assert result.summary["trained_params"] == ["4.weight", "4.bias"]


# ---- (4) bad input ------------------------------------------------------------------------------
def test_float_features_are_refused_with_one_line(data: tuple[Examples, Examples]):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 4)).astype(np.float32)
    y = rng.integers(0, 2, size=20)
    features = Examples(x, y, [f"k{i}" for i in range(20)], source="table.csv")
    with pytest.raises(DataError) as err:
        run(AnalysisInput(features, features, {}))
    message = str(err.value)
    assert "\n" not in message and "8-bit images" in message and "float32" in message


def test_missing_test_set_and_bad_settings_are_refused(data: tuple[Examples, Examples]):
    train_set, test_set = data
    with pytest.raises(DataError, match="test set"):
        run(AnalysisInput(train_set, None, {}))
    with pytest.raises(DataError, match="out of range"):
        run(AnalysisInput(train_set, test_set, {"target_indices": [10_000]}))
    for bad in ({"step": -1}, {"budget": 0}, {"objective": "accuracy"}, {"iterations": "many"}):
        with pytest.raises(AuditorError):
            AttackConfig.from_params(bad)


def test_config_defaults_and_flat_cli_params():
    cfg = AttackConfig.from_params({"model": "mlp", "damping": 0.01, "frozen": "none"})
    assert cfg.model.name == "mlp" and cfg.solver.damping == 0.01 and cfg.frozen is None
    default = AttackConfig.from_params({})
    assert (default.targets, default.budget, default.step, default.iterations) == (5, 1, 0.02, 100)
    assert default.frozen == "features" and default.retrain_check is True
