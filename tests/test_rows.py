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

from auditor.analyses import common
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


def test_scores_stream_the_data_in_batches_and_match_the_in_memory_path(
    user_models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    ex = tiled(N)
    weights = tmp_path / "cnn.safetensors"
    save_file(trained_small_cnn(user_models, digits28(slice(0, 300)), epochs=1).state_dict(), str(weights))
    params = {"model": {"name": "user_models:small_cnn", "weights": str(weights), "train": False},
              "solver": {"name": "ekfac"}, "why_top": 3}  # fmt: skip
    made: list[Rows] = []
    real_rows_of = common.rows_of

    def spy(examples, dtype, device):
        rows, y = real_rows_of(examples, dtype, device)
        made.append(rows)
        return rows, y

    monkeypatch.setattr(common, "rows_of", spy)
    with local_models():
        streamed = run(AnalysisInput(ex, None, params))
    (rows,) = made
    assert rows.stored.dtype == torch.uint8 and len(rows) == N  # the stored bytes, no float copy
    # the most converted at once is one batch, not the data set: bytes held do not grow with n
    assert 0 < rows.largest_read <= 4096 < N

    monkeypatch.setattr(common, "rows_of", lambda e, dtype, device: common.as_tensors(e, dtype, device))
    with local_models():
        in_memory = run(AnalysisInput(ex, None, params))
    by_index = lambda r: np.array([f.payload["self_influence"] for f in sorted(r.findings, key=lambda f: f.example_index)])  # noqa: E731
    np.testing.assert_allclose(by_index(streamed), by_index(in_memory), rtol=1e-5)
    assert [f.example_index for f in streamed.findings[:20]] == [f.example_index for f in in_memory.findings[:20]]
    top = min(streamed.findings, key=lambda f: f.rank)
    assert top.payload["why"]["nearest"]  # the why lists read the stored rows in chunks too
