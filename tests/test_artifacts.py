"""Fit once, score many: trained weights and curvature factors are stored (safetensors + a
database record) and reused by later audits of the same model, data and settings, and never
when any of them changed. At 28x28, with a team's float32 CNN given as safetensors weights and
with a model auditor trains."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from test_user_models import digits28, trained_small_cnn, user_models  # noqa: F401

from auditor.artifacts import list_artifacts, root
from auditor.config import get_settings
from auditor.data.bundled import write_npz
from auditor.influence import FunctionalModel, make_solver
from auditor.store import audits as audit_store
from auditor.store import datasets as dataset_store
from auditor.store import findings as finding_store
from auditor.store import open_store
from tests.helpers import cli

N = 240


def scores(audit_id: int) -> np.ndarray:
    with open_store()() as s:
        rows = sorted(finding_store.list_findings(s, audit_id), key=lambda f: f.example_index)
    return np.array([r.payload["self_influence"] for r in rows])


def artifacts() -> list:
    with open_store()() as s:
        return list_artifacts(s, root(get_settings()))


@pytest.fixture
def data28(tmp_path: Path) -> Path:
    path = write_npz(digits28(slice(0, N)), tmp_path / "d28.npz")
    cli("dataset", "add", "d28", str(path))
    return path


@pytest.fixture
def team_weights(user_models, tmp_path: Path) -> Path:  # noqa: F811
    model = trained_small_cnn(user_models, digits28(slice(0, N)), epochs=2)
    path = tmp_path / "cnn.safetensors"
    save_file(model.state_dict(), str(path))
    return path


@pytest.mark.parametrize("solver", ["direct", "arnoldi", "ekfac"])
def test_stored_factors_solve_exactly_like_the_fitted_solver(solver: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
    x, y = torch.randn(80, 6, dtype=torch.float64), torch.randint(0, 3, (80,))
    fm = FunctionalModel.from_module(module, "all", weight_decay=0.01)
    fitted = make_solver(solver, None).fit(fm, x, y)
    tensors, meta = fitted.factors()
    save_file(tensors, str(tmp_path / "f.safetensors"))
    loaded = make_solver(solver, None).load_factors(fm, load_file(str(tmp_path / "f.safetensors")), meta)
    V = torch.randn(4, fm.num_params, dtype=torch.float64)
    # equal up to rounding: the stored copy is contiguous, so BLAS may sum in another order
    torch.testing.assert_close(loaded.solve(V), fitted.solve(V), rtol=1e-12, atol=1e-12)
    assert loaded.describe() == fitted.describe()


def test_a_second_audit_of_the_team_model_reuses_its_curvature_and_scores_the_same(
    data28: Path, team_weights: Path, user_models  # noqa: F811
) -> None:
    args = ["audit", "run", "label-check", "d28", "--model", "user_models:small_cnn", "--weights",
            str(team_weights), "--no-train", "--solver", "ekfac", "--why-top", "0", "--json"]  # fmt: skip
    first = cli(*args)
    assert first["summary"]["curvature"]["reused"] is False
    stored = artifacts()
    assert [(a.kind, a.dataset, a.present) for a in stored] == [("curvature", "d28", True)]
    second = cli(*args)
    assert second["summary"]["curvature"]["reused"] is True
    assert second["summary"]["curvature"]["damping"] == first["summary"]["curvature"]["damping"]
    np.testing.assert_allclose(scores(second["id"]), scores(first["id"]), rtol=1e-5)  # float32 rounding
    assert artifacts()[0].uses == 1
    # --no-reuse fits again and gives the same scores
    third = cli(*args[:-1], "--no-reuse", "--json")
    assert third["summary"]["curvature"]["reused"] is False
    np.testing.assert_allclose(scores(third["id"]), scores(first["id"]), rtol=1e-5)


def test_changed_weights_data_or_settings_never_reuse_stale_factors(
    data28: Path, team_weights: Path, user_models, tmp_path: Path  # noqa: F811
) -> None:
    base = ["audit", "run", "label-check", "d28", "--model", "user_models:small_cnn", "--no-train",
            "--solver", "ekfac", "--why-top", "0", "--json"]  # fmt: skip
    cli(*base, "--weights", str(team_weights))
    # other weights (one more epoch of the team's training)
    other = tmp_path / "cnn3.safetensors"
    save_file(trained_small_cnn(user_models, digits28(slice(0, N)), epochs=3).state_dict(), str(other))
    assert cli(*base, "--weights", str(other))["summary"]["curvature"]["reused"] is False
    # another damping
    assert cli(*base, "--weights", str(team_weights), "--damping", "0.5")["summary"]["curvature"]["reused"] is False
    # the data set changed: one example relabelled, then re-scanned
    d = digits28(slice(0, N))
    d.y[0] = (d.y[0] + 1) % 10
    from auditor.data.keys import example_keys

    d.keys = example_keys(d.x, d.y)
    write_npz(d, data28)
    cli("dataset", "scan", "d28")
    assert cli(*base, "--weights", str(team_weights))["summary"]["curvature"]["reused"] is False
    assert len(artifacts()) == 4
    # and the unchanged combination is still found
    assert cli(*base, "--weights", str(other))["summary"]["curvature"]["reused"] is False  # data changed
    assert len(artifacts()) == 5


def test_a_trained_model_is_stored_with_its_curvature_and_both_are_reused(data28: Path) -> None:
    args = ["audit", "run", "label-check", "d28", "--model", "logreg", "--solver", "ekfac", "--why-top", "0", "--json"]
    first = cli(*args)
    assert first["summary"]["training"]["reused"] is False
    second = cli(*args)
    assert second["summary"]["training"]["reused"] is True and second["summary"]["curvature"]["reused"] is True
    assert second["summary"]["training"]["trained"] is True
    np.testing.assert_allclose(scores(second["id"]), scores(first["id"]), rtol=1e-5)  # float32 rounding
    assert sorted(a.kind for a in artifacts()) == ["curvature", "weights"]
    # another seed is another model
    third = cli(*args[:-1], "--seed", "1", "--json")
    assert third["summary"]["training"]["reused"] is False


def test_an_unreadable_artifact_is_dropped_and_fitted_again(data28: Path) -> None:
    args = ["audit", "run", "label-check", "d28", "--model", "logreg", "--solver", "ekfac", "--why-top", "0", "--json"]
    first = cli(*args)
    for a in artifacts():
        Path(a.path).write_bytes(b"not safetensors")
    second = cli(*args)
    assert second["status"] == "succeeded"
    assert second["summary"]["training"]["reused"] is False and second["summary"]["curvature"]["reused"] is False
    np.testing.assert_allclose(scores(second["id"]), scores(first["id"]), rtol=1e-6)
    assert all(a.present for a in artifacts()) and len(artifacts()) == 2


def test_a_write_that_fails_halfway_leaves_nothing_a_later_audit_could_pick_up(
    data28: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import safetensors.torch

    def crash(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    real = safetensors.torch.save_file
    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    args = ["audit", "run", "label-check", "d28", "--model", "logreg", "--solver", "ekfac", "--why-top", "0", "--json"]
    assert cli(*args)["status"] == "succeeded"  # the audit does not depend on storing
    assert artifacts() == []
    folder = root(get_settings())
    assert list(folder.iterdir()) == []
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    assert cli(*args)["summary"]["training"]["reused"] is False


def test_artifacts_list_and_prune(data28: Path) -> None:
    cli("audit", "run", "label-check", "d28", "--model", "logreg", "--solver", "ekfac", "--why-top", "0")
    listed = cli("artifacts", "list", "--json")
    assert sorted(a["kind"] for a in listed) == ["curvature", "weights"] and all(a["present"] for a in listed)
    text = cli("artifacts", "list")
    assert "d28" in text and "2 artifacts" in text and listed[0]["key"][:12] in text
    refused = cli("artifacts", "prune", ok=False)
    assert refused.exit_code != 0 and "say what to prune" in refused.stderr
    dry = cli("artifacts", "prune", "--dataset", "d28", "--dry-run", "--json")
    assert len(dry["removed"]) == 2 and len(cli("artifacts", "list", "--json")) == 2
    assert cli("artifacts", "prune", "--unused-for", "1d", "--json")["removed"] == []
    gone = cli("artifacts", "prune", "--dataset", "d28", "--json")["removed"]
    assert len(gone) == 2 and cli("artifacts", "list", "--json") == []
    assert not any(Path(a["path"]).exists() for a in gone)


def test_progress_messages_say_examples_per_second_and_time_left() -> None:
    from auditor.progress import Rates

    now = [100.0]
    rates = Rates(clock=lambda: now[0])
    now[0] = 102.0
    assert rates.update(0.1, "training model") == "training model, about 18 s left"
    rates.update(0.5, "self-influence (1,000/10,000 examples)")
    now[0] = 104.0
    text = rates.update(0.75, "self-influence (5,000/10,000 examples)")
    # the time left at this phase's own rate: 0.25 of the whole in its 2 s
    assert text == "self-influence (5,000/10,000 examples), 2,000 examples/s, about 2 s left"
    assert rates.examples_per_s == 2000 and rates.eta_s == pytest.approx(2 * 0.25 / 0.25)


def test_the_time_left_comes_from_the_current_phase_not_a_slow_one_before_it() -> None:
    """The trial's case: training took most of the time, scoring then ran fast; the whole run's
    average said "about 6 min left" at 31% of an audit that ended 6 s later."""
    from auditor.progress import Rates, eta_from_phase

    now, wall = [0.0], [1000.0]
    rates = Rates(clock=lambda: now[0], wall=lambda: wall[0])
    now[0], wall[0] = 300.0, 1300.0
    rates.update(0.30, "training model, epoch 9/10")  # 300 s of training
    rates.update(0.30, "self-influence (0/10,000 examples)")
    now[0], wall[0] = 303.0, 1303.0
    text = rates.update(0.45, "self-influence (2,143/10,000 examples)")  # 3 s of scoring
    assert rates.eta_s == pytest.approx(0.55 * 3 / 0.15) and "about 11 s left" in text
    assert 300 * 0.55 / 0.45 > 300  # the whole run's average would have said over 6 min
    assert rates.phase_doc() == {"fraction": 0.3, "started_at": 1300.0}
    # messages of one step with other counts are one phase; too early to tell is no ETA
    assert eta_from_phase(0.5, 0.5, 10.0) is None and eta_from_phase(0.6, 0.5, 0.5) is None


def test_audit_status_json_has_elapsed_and_eta_while_running(data28: Path) -> None:
    from datetime import timedelta

    from auditor.store.models import utcnow

    with open_store()() as s, s.begin():
        audit = audit_store.create_audit(s, "label-check", dataset_store.get_dataset(s, "d28"))
        audit_store.set_audit_status(s, audit.id, "running")
        audit.started_at = utcnow() - timedelta(seconds=30)
        audit_store.update_progress(s, audit.id, 0.25, "self-influence (60/240 examples), 2 examples/s, about 90 s left")
        audit_id = audit.id
    doc = cli("audit", "status", str(audit_id), "--json")
    assert 29 <= doc["elapsed_seconds"] <= 60 and doc["eta_seconds"] == pytest.approx(3 * doc["elapsed_seconds"], rel=0.01)
    assert "examples/s" in doc["message"]


def test_audit_status_eta_uses_the_phase_the_runner_recorded(data28: Path) -> None:
    import time
    from datetime import timedelta

    from auditor.store.models import utcnow

    with open_store()() as s, s.begin():
        audit = audit_store.create_audit(s, "label-check", dataset_store.get_dataset(s, "d28"))
        audit_store.set_audit_status(s, audit.id, "running")
        audit.started_at = utcnow() - timedelta(seconds=600)  # ten slow minutes before this phase
        phase = {"fraction": 0.30, "started_at": time.time() - 10}
        audit_store.update_progress(s, audit.id, 0.40, "self-influence (100/600 examples)", phase=phase)
        audit_id = audit.id
    doc = cli("audit", "status", str(audit_id), "--json")
    # 0.10 of the whole in this phase's 10 s: 0.60 left is about 60 s, not 600 x 0.6 / 0.4 = 900 s
    assert doc["eta_seconds"] == pytest.approx(60, abs=8)
