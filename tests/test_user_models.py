"""A team's own trained model, audited as it is, at a real input size (28x28).

The model file is `tests/fixtures/user_models.py` (float32, ReLU, MaxPool, BatchNorm, Dropout, a
residual block, a torchvision ResNet-18 factory); its weights are saved with safetensors, as a
team would, and every audit goes through the CLI (`audit run`) on the embedded store.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from auditor.analyses.fitting import fit_model
from auditor.analyses.settings import ModelSpec, SolverSpec
from auditor.data.base import Examples
from auditor.data.bundled import digits, write_npz
from auditor.data.keys import example_keys
from auditor.influence import FunctionalModel, make_solver
from auditor.influence.hvp import exact_hessian
from auditor.store import audits as audit_store
from auditor.store import findings as finding_store
from auditor.store import open_store
from tests.helpers import cli

FIXTURES = Path(__file__).parent / "fixtures"
runner = CliRunner()


def digits28(rows: slice) -> Examples:
    """sklearn's digits (bundled as 0..255) upsampled to 28x28 uint8 pixels: MNIST's size and range."""
    d = digits()
    x = torch.tensor(d.x[rows], dtype=torch.float32)[:, None]
    x = torch.nn.functional.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)[:, 0]
    x = x.round().clamp(0, 255).to(torch.uint8).numpy()  # bundled digits are 0..255 already
    y = d.y[rows]
    return Examples(x, y, example_keys(x, y), source="digits28", is_image=True, class_names=d.class_names)


@pytest.fixture
def user_models(monkeypatch: pytest.MonkeyPatch):
    """The team's model module, importable as `user_models` (as `pip install -e` of their repo
    would make it)."""
    monkeypatch.syspath_prepend(str(FIXTURES))
    import user_models

    return user_models


def trained_small_cnn(user_models, train: Examples, epochs: int = 3):
    """The team's training run: Adam for a few epochs, not to a minimum, BatchNorm in train mode."""
    torch.manual_seed(0)
    model = user_models.small_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = torch.as_tensor(train.x, dtype=torch.float32)
    y = torch.as_tensor(train.y)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(32):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


@pytest.fixture
def d28(tmp_path: Path) -> str:
    write_npz(digits28(slice(0, 300)), tmp_path / "d28.npz")
    cli("dataset", "add", "d28", str(tmp_path / "d28.npz"))
    return "d28"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_no_train_scores_the_team_s_float32_cnn_exactly_as_given(user_models, d28: str, tmp_path: Path) -> None:
    train = digits28(slice(0, 300))
    model = trained_small_cnn(user_models, train)
    weights = tmp_path / "cnn.safetensors"
    save_file(model.state_dict(), str(weights))
    before = _sha(weights)
    doc = cli(
        "audit", "run", "label-check", d28, "--model", "user_models:small_cnn",
        "--weights", str(weights), "--no-train", "--json",
    )  # fmt: skip
    assert doc["status"] == "succeeded" and doc["findings"] == len(train)
    # the audit's per-example losses are the team's model's own losses: nothing was retrained
    with torch.no_grad():
        own = torch.nn.functional.cross_entropy(
            model(torch.as_tensor(train.x, dtype=torch.float32)), torch.as_tensor(train.y), reduction="none"
        ).numpy()
    with open_store()() as s:
        rows = finding_store.list_findings(s, doc["id"])
        audited = np.array([r.payload["loss"] for r in sorted(rows, key=lambda r: r.example_index)])
    np.testing.assert_allclose(audited, own, rtol=1e-4, atol=1e-5)
    assert _sha(weights) == before
    summary = doc["summary"]
    assert summary["training"] == {"trained": False}
    curvature = summary["curvature"]
    assert curvature["dtype"] == "float32" and curvature["device"] == "cpu"
    # a model trained for a few epochs is not at a minimum: damping chosen and explained
    assert curvature["damping"] > 0 and "mean eigenvalue" in curvature["damping_reason"]
    # the curvature covers the conv and linear weights; BatchNorm's are held fixed and said so
    assert curvature["solver"] == "ekfac" and "Hessian" in curvature["solver_reason"]
    fixed = curvature["parameters"]["held_fixed"]
    assert "stem.1.weight" in fixed and "block.bn1.weight" in fixed
    assert curvature["parameters"]["counted"] < curvature["parameters"]["total"]


def test_a_torchvision_resnet18_from_a_user_factory_with_the_team_s_weights(user_models, tmp_path: Path) -> None:
    train = digits28(slice(0, 48))
    write_npz(train, tmp_path / "small.npz")
    cli("dataset", "add", "small28", str(tmp_path / "small.npz"))
    torch.manual_seed(0)
    weights = tmp_path / "resnet18.safetensors"
    save_file(user_models.resnet18().state_dict(), str(weights))
    doc = cli(
        "audit", "run", "label-check", "small28", "--model", "user_models:resnet18",
        "--weights", str(weights), "--no-train", "--params", "last", "--json",
    )  # fmt: skip
    assert doc["status"] == "succeeded" and doc["findings"] == 48
    coverage = doc["summary"]["curvature"]["parameters"]
    assert coverage["counted"] == 512 * 10 + 10 and coverage["total"] > 11_000_000
    assert all(math.isfinite(r["score"]) for r in doc["top"])


def test_automatic_damping_is_none_at_a_trained_minimum_and_positive_away_from_one() -> None:
    small = digits().subset(slice(0, 200))
    at_minimum = fit_model(small, ModelSpec("logreg"))
    inf = at_minimum.influence(SolverSpec(), few_solves=True)  # auto solver, automatic damping
    assert at_minimum.curvature["damping"] == 0.0
    assert at_minimum.curvature["damping_reason"].startswith("none needed")
    assert inf.solver.name == "direct"

    # an untrained tanh MLP: the exact Hessian is indefinite there
    module = fit_model(small, ModelSpec("mlp", hidden=8, max_iter=1)).module
    fm = FunctionalModel.from_module(module, weight_decay=0.0)
    x, y = torch.as_tensor(small.x, dtype=torch.float64), torch.as_tensor(small.y)
    undamped = torch.linalg.eigvalsh(exact_hessian(fm, x, y))
    assert float(undamped[0]) < 0  # the case the choice must handle
    solver = make_solver("direct", None).fit(fm, x, y)
    assert solver.damping >= 0.1 * float(undamped.mean()) - 1e-12
    assert float(undamped[0]) + solver.damping > 0  # H + damping is positive definite
    assert "raised above the most negative eigenvalue" in solver.damping_reason
    assert torch.isfinite(solver.solve(torch.ones(fm.num_params))).all()


@pytest.mark.parametrize(
    "kind,extra",
    [
        ("explain", ["--max-tests", "2", "--top", "3"]),
        ("domain-mismatch", ["--top-errors", "5"]),
        ("attack", ["--targets", "1"]),
    ],
)
def test_test_set_audits_run_with_default_settings_on_28x28_digits(kind: str, extra: list[str], tmp_path: Path) -> None:
    """These refused to run at 28x28 ('7850 x 7850 Hessian, too large'); `auto` now decides."""
    write_npz(digits28(slice(0, 240)), tmp_path / "train.npz")
    write_npz(digits28(slice(1000, 1040)), tmp_path / "test.npz")
    cli("dataset", "add", "tr", str(tmp_path / "train.npz"))
    cli("dataset", "add", "te", str(tmp_path / "test.npz"))
    doc = cli("audit", "run", kind, "tr", "--test", "te", *extra, "--json")
    assert doc["status"] == "succeeded", doc["error"]
    solver = doc["summary"]["solver"]
    assert solver["solver"] in ("direct", "ekfac", "cg")


def test_validate_runs_with_default_settings_on_28x28_digits(tmp_path: Path) -> None:
    write_npz(digits28(slice(0, 240)), tmp_path / "train.npz")
    out = cli("validate", str(tmp_path / "train.npz"), "--retrains", "4", "--json")
    assert out["retrains"] == 4 and out["solver"] in ("direct", "ekfac", "cg")
    assert out["pearson"] > 0.9  # logistic regression at its minimum: influence tracks retraining


# ---- bad input: one line naming the problem, the audit failed, nothing else changed -----------
def _failed_audit(args: list[str]) -> tuple[str, dict | None]:
    """The one-line error of an audit that cannot run: refused before the audit exists (what a
    model build can tell: stderr, no audit row), or failed with the reason (its JSON document)."""
    result = cli("audit", "run", *args, "--json", ok=False)
    assert result.exit_code != 0
    if not result.stdout.strip():
        error = result.stderr.strip()
        assert len(error.splitlines()) == 1, error
        with open_store()() as s:
            assert audit_store.list_audits(s, None, limit=10) == []
        return error, None
    doc = json.loads(result.stdout)
    assert doc["status"] == "failed" and "\n" not in doc["error"]
    return doc["error"], doc


def test_weights_that_do_not_fit_the_factory_fail_the_audit_in_one_line(user_models, d28: str, tmp_path: Path) -> None:
    weights = tmp_path / "other.safetensors"
    save_file(torch.nn.Linear(3, 2).state_dict(), str(weights))
    error, doc = _failed_audit(["label-check", d28, "--model", "user_models:small_cnn", "--weights", str(weights), "--no-train"])
    assert "do not fit the model" in error and str(weights) in error
    assert doc is None  # refused before the audit row existed: the model is built first


def test_a_factory_whose_forward_fails_on_the_data_is_one_line(user_models, d28: str, tmp_path: Path) -> None:
    weights = tmp_path / "broken.safetensors"
    save_file(user_models.broken_forward().state_dict(), str(weights))
    error, _ = _failed_audit(["label-check", d28, "--model", "user_models:broken_forward", "--weights", str(weights), "--no-train"])
    assert "do not fit the model" in error and "(28, 28)" in error


def test_a_device_that_does_not_exist_is_one_line(d28: str) -> None:
    error, _ = _failed_audit(["label-check", d28, "--device", "cuda:7"])
    assert "cuda:7" in error and "does not exist" in error
    error, _ = _failed_audit(["label-check", d28, "--device", "tpu"])
    assert "--device" in error


def test_nan_outputs_of_a_user_model_are_one_line(user_models, d28: str, tmp_path: Path) -> None:
    model = user_models.small_cnn()
    state = model.state_dict()
    state["fc2.bias"] = torch.full_like(state["fc2.bias"], float("nan"))
    weights = tmp_path / "nan.safetensors"
    save_file(state, str(weights))
    error, _ = _failed_audit(["label-check", d28, "--model", "user_models:small_cnn", "--weights", str(weights), "--no-train"])
    assert "NaN" in error and "example 0" in error


def test_no_train_without_weights_is_refused(d28: str) -> None:
    error, _ = _failed_audit(["label-check", d28, "--no-train"])
    assert "--weights" in error


def _ekfac_self_influence(user_models, train: Examples, **options) -> tuple[np.ndarray, dict]:
    from auditor.influence import InfluenceModel

    model = trained_small_cnn(user_models, train, epochs=2)
    x = torch.as_tensor(train.x, dtype=torch.float32)
    y = torch.as_tensor(train.y)
    from auditor.influence.ekfac import kfac_parameters

    fm = FunctionalModel(model, kfac_parameters(model, [n for n, _ in model.named_parameters()]))
    solver = make_solver("ekfac", damping=None, **options)
    scores = InfluenceModel(fm, solver).fit(x, y).self_scores(x, y)
    return scores.self_influence.numpy(), solver.describe()


def test_bfloat16_mixed_precision_ranks_like_float32(user_models):
    from scipy.stats import spearmanr

    train = digits28(slice(0, 400))
    full, _ = _ekfac_self_influence(user_models, train)
    mixed, described = _ekfac_self_influence(user_models, train, precision="bfloat16")
    assert described["precision"] == "bfloat16"
    assert not np.allclose(full, mixed)  # it did run in another precision
    assert spearmanr(full, mixed)[0] >= 0.99


def test_factors_fitted_on_a_sample_still_score_every_row_and_rank_alike(user_models):
    from scipy.stats import spearmanr

    train = digits28(slice(0, 1200))
    full, doc_full = _ekfac_self_influence(user_models, train)
    sampled, doc = _ekfac_self_influence(user_models, train, fit_rows=300)
    assert doc_full["fit_rows"] == 1200 and doc["fit_rows"] == 300
    assert sampled.shape == (1200,)
    assert not np.allclose(full, sampled)
    assert spearmanr(full, sampled)[0] >= 0.99


def test_an_ekfac_option_does_not_break_auto_when_auto_picks_exact(tmp_path: Path):
    write_npz(digits(), tmp_path / "d.npz")
    cli("dataset", "add", "d8", str(tmp_path / "d.npz"))
    out = cli("audit", "run", "label-check", "d8", "--ekfac-fit-rows", "500", "--json")
    assert out["summary"]["curvature"]["solver"] == "direct"


def test_validate_lds_and_loo_run_with_a_float32_user_model_at_28x28(user_models, d28: str, tmp_path: Path) -> None:
    """The team's CNN fixes its own input dtype (`x.float() / 255`), so it cannot run in float64:
    validation keeps it in float32 instead of failing, and a model trained by the team's own
    function gets automatic damping and no assumed weight decay."""
    lds = cli("validate", d28, "--metric", "lds", "--model", "user_models:small_cnn", "--train-fn", "user_models:fit",
              "--subsets", "4", "--test-points", "4", "--json")  # fmt: skip
    assert lds["solver"] == "ekfac" and lds["damping"] > 0 and len(lds["per_test"]) == 4
    weights = tmp_path / "cnn.safetensors"
    save_file(trained_small_cnn(user_models, digits28(slice(0, 300)), epochs=1).state_dict(), str(weights))
    loo = cli("validate", d28, "--model", "user_models:small_cnn", "--weights", str(weights), "--no-train",
              "--retrains", "3", "--json")  # fmt: skip
    assert loo["retrains"] == 3 and all(math.isfinite(p["actual"]) for p in loo["points"])
