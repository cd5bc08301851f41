"""Scoring a team's trained model never holds the data set as floats: the examples stay as
stored (uint8 pixels) and are converted a batch at a time, with the same scores as converting
everything up front. 28x28 images, a float32 CNN given as safetensors weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from test_user_models import digits28, trained_small_cnn, user_models  # noqa: F401

from auditor.analyses import fitting
from auditor.analyses.base import AnalysisInput
from auditor.analyses.label_check import run
from auditor.data.base import Examples
from auditor.factories import local_models
from auditor.influence.rows import Rows

N = 4400  # more rows than any batch (the largest, predictions, is 4,096)


def tiled(n: int) -> Examples:
    base = digits28(slice(0, 1797))
    reps = -(-n // len(base))
    x, y = np.concatenate([base.x] * reps)[:n].copy(), np.concatenate([base.y] * reps)[:n]
    x[len(base):] = np.clip(x[len(base):].astype(int) + np.arange(n - len(base))[:, None, None] % 7, 0, 255)
    from auditor.data.keys import example_keys

    return Examples(x, y, example_keys(x, y), is_image=True)


def spy_rows(monkeypatch: pytest.MonkeyPatch) -> list[Rows]:
    """The `Rows` every analysis makes, in order (fitting.rows_of wrapped)."""
    made: list[Rows] = []
    real_rows_of = fitting.rows_of

    def spy(examples, dtype, device):
        rows, y = real_rows_of(examples, dtype, device)
        made.append(rows)
        return rows, y

    monkeypatch.setattr(fitting, "rows_of", spy)
    return made


def test_scores_stream_the_data_in_batches_and_match_the_in_memory_path(
    user_models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    ex = tiled(N)
    weights = tmp_path / "cnn.safetensors"
    save_file(trained_small_cnn(user_models, digits28(slice(0, 300)), epochs=1).state_dict(), str(weights))
    params = {"model": {"name": "user_models:small_cnn", "weights": str(weights), "train": False},
              "solver": {"name": "ekfac"}, "why_top": 3}  # fmt: skip
    made = spy_rows(monkeypatch)
    with local_models():
        streamed = run(AnalysisInput(ex, None, params))
    (rows,) = made
    assert rows.stored.dtype == torch.uint8 and len(rows) == N  # the stored bytes, no float copy
    # the most converted at once is one batch, not the data set: bytes held do not grow with n
    assert 0 < rows.largest_read <= 4096 < N

    monkeypatch.setattr(fitting, "rows_of", lambda e, dtype, device: fitting.as_tensors(e, dtype, device))
    with local_models():
        in_memory = run(AnalysisInput(ex, None, params))
    by_index = lambda r: np.array([f.payload["self_influence"] for f in sorted(r.findings, key=lambda f: f.example_index)])  # noqa: E731
    np.testing.assert_allclose(by_index(streamed), by_index(in_memory), rtol=1e-5)
    assert [f.example_index for f in streamed.findings[:20]] == [f.example_index for f in in_memory.findings[:20]]
    top = min(streamed.findings, key=lambda f: f.rank)
    assert top.payload["why"]["nearest"]  # the why lists read the stored rows in chunks too


def _image_folder(ex: Examples, root: Path) -> Path:
    from PIL import Image

    for i, (pixels, label) in enumerate(zip(ex.x, ex.y.tolist(), strict=True)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{i:05d}.png")
    return root


def _team_cnn(user_models, tmp_path: Path) -> Path:  # noqa: F811
    weights = tmp_path / "cnn.safetensors"
    save_file(trained_small_cnn(user_models, digits28(slice(0, 300)), epochs=1).state_dict(), str(weights))
    return weights


def test_a_folder_read_from_its_files_gives_the_scores_of_the_loaded_one_a_batch_at_a_time(
    user_models, tmp_path: Path  # noqa: F811
) -> None:
    """The label check over an ImageFolder too large to load (here: forced) decodes its files in
    DataLoader worker processes, one batch at a time, and scores as if it had loaded them."""
    import auditor.data.lazy as lazy_module
    from auditor.data.load import load_examples
    from auditor.data.options import DataOptions

    ex = tiled(N)
    root = _image_folder(ex, tmp_path / "folder")
    params = {"model": {"name": "user_models:small_cnn", "weights": str(_team_cnn(user_models, tmp_path)), "train": False},
              "solver": {"name": "ekfac"}, "why_top": 3}  # fmt: skip
    on_disk = load_examples(root, options=DataOptions(stream_bytes=0, data_workers=1))
    loaded = load_examples(root, lazy=False)
    assert isinstance(on_disk.x, lazy_module.ImageFiles) and on_disk.keys == loaded.keys
    with local_models():
        streamed = run(AnalysisInput(on_disk, None, params))
        in_memory = run(AnalysisInput(loaded, None, params))
    assert 0 < on_disk.x.largest_decode <= 4096 < N  # never the whole folder at once
    by_key = lambda r: {f.example_key: f.payload["self_influence"] for f in r.findings}  # noqa: E731
    a, b = by_key(streamed), by_key(in_memory)
    np.testing.assert_allclose([a[k] for k in loaded.keys], [b[k] for k in loaded.keys], rtol=1e-5)
    assert [f.example_key for f in streamed.findings[:20]] == [f.example_key for f in in_memory.findings[:20]]


@pytest.mark.parametrize("kind", ["explain", "domain-mismatch"])
def test_explain_and_domain_mismatch_stream_the_training_set_from_disk(
    kind: str, user_models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """Training gradients are read a batch at a time from an .npz left on disk (uint8 images,
    groups), scored against the test points' factors, with the findings of the loaded set."""
    from auditor.analyses.registry import get_kind
    from auditor.data.bundled import write_npz
    from auditor.data.lazy import NpyMember
    from auditor.data.npz import load_npz

    ex = tiled(1200)
    ex.groups = np.array(["scanner-a", "scanner-b"])[np.arange(len(ex)) % 2]
    path = write_npz(ex, tmp_path / "train.npz", compressed=False)
    test = digits28(slice(1500, 1620))
    test.groups = np.array(["scanner-a", "scanner-b"])[np.arange(len(test)) % 2]
    params = {"model": {"name": "user_models:small_cnn", "weights": str(_team_cnn(user_models, tmp_path)), "train": False},
              "solver": {"name": "ekfac"}}  # fmt: skip
    made = spy_rows(monkeypatch)
    on_disk, loaded = load_npz(path, lazy=True), load_npz(path, lazy=False)
    assert isinstance(on_disk.x, NpyMember)
    analysis = get_kind(kind).run
    with local_models():
        streamed = analysis(AnalysisInput(on_disk, test, params))
        assert made and made[-1].lazy and made[-1].passes >= 2  # read in passes from the file
        in_memory = analysis(AnalysisInput(loaded, test, params))
    rows = lambda r: [(f.kind, f.example_index, round(f.score, 6)) for f in r.findings]  # noqa: E731
    assert rows(streamed) == rows(in_memory) and len(rows(streamed)) > 0


def test_a_model_trained_here_on_a_set_left_on_disk_matches_the_loaded_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """auditor's own recipe trains from `Rows` too (minibatches, the L-BFGS rows, the final
    objective in chunks): the same weights, training report and scores as from a loaded set."""
    from auditor.data.bundled import digits, write_npz
    from auditor.data.lazy import NpyMember
    from auditor.data.npz import load_npz

    path = write_npz(digits(), tmp_path / "digits.npz", compressed=False)
    on_disk, loaded = load_npz(path, lazy=True), load_npz(path, lazy=False)
    assert isinstance(on_disk.x, NpyMember)
    params = {"model": {"name": "logreg"}, "solver": {"name": "direct"}, "why_top": 2}
    trained_on: list[type] = []
    real_train = fitting.train
    monkeypatch.setattr(fitting, "train", lambda module, x, *a, **k: trained_on.append(type(x)) or real_train(module, x, *a, **k))
    streamed, in_memory = run(AnalysisInput(on_disk, None, params)), run(AnalysisInput(loaded, None, params))
    assert trained_on == [Rows, Rows]  # both train from rows converted a batch at a time
    a, b = streamed.summary["training"], in_memory.summary["training"]
    assert a["iterations"] == b["iterations"] and a["loss"] == pytest.approx(b["loss"], rel=1e-12)
    assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-6, abs=1e-12)
    by_index = lambda r: np.array([f.payload["self_influence"] for f in sorted(r.findings, key=lambda f: f.example_index)])  # noqa: E731
    np.testing.assert_allclose(by_index(streamed), by_index(in_memory), rtol=1e-8)
