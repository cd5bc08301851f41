"""domain-mismatch (paper 5.3): the audit names a thin training subgroup behind the worst errors.

The paper's readmission data kept only a handful of healthy children in training, and children
differ from adults in how the features relate to readmission. A naive copy of that design (a
subgroup that is merely rare in training but follows the same rule) is not a mismatch at all:
the model extrapolates, its worst errors are spread over everyone, and an honest audit should
not flag the subgroup; `test_a_rare_group_that_follows_the_same_rule_is_not_flagged` checks that.
So the positive experiments change the relation inside the subgroup, as in the paper:
- tabular: breast cancer, group A = the top quartile of "mean radius", with the label flipped
  inside A (large tumours labelled the other way), 5 of A kept in training, the rest in test;
- images: digits, a quarter of them inverted (white background), 5 inverted kept in training.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from auditor.analyses.base import AnalysisInput, AnalysisResult
from auditor.analyses.domain_mismatch import (
    EXAMPLE_PAYLOAD,
    FEATURE_PAYLOAD,
    GROUP_PAYLOAD,
    DomainMismatchConfig,
    named_key,
    worst_test_points,
)
from auditor.analyses.domain_mismatch import run as domain_mismatch
from auditor.data.base import Examples
from auditor.data.bundled import breast_cancer, digits
from auditor.data.keys import example_keys
from auditor.errors import AuditorError, DataError

KEPT = 5  # members of the subgroup left in training


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models: intra-op threads only add synchronisation on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def thin_split(
    data: Examples, in_group: np.ndarray, names: tuple[str, str], seed: int = 0
) -> tuple[Examples, Examples, set[int]]:
    """Train: 70% of the majority + KEPT of the group; test: the rest. Also the kept train rows."""
    rng = np.random.default_rng(seed)
    group_rows = rng.permutation(np.flatnonzero(in_group))
    other_rows = rng.permutation(np.flatnonzero(~in_group))
    cut = int(0.7 * len(other_rows))
    train_rows = np.concatenate([other_rows[:cut], group_rows[:KEPT]])
    test_rows = np.concatenate([other_rows[cut:], group_rows[KEPT:]])
    groups = np.where(in_group, *names)

    def take(rows: np.ndarray) -> Examples:
        x, y = data.x[rows], data.y[rows]
        return Examples(
            x=x,
            y=y,
            keys=example_keys(x, y),
            is_image=data.is_image,
            feature_names=data.feature_names,
            groups=groups[rows],
        )

    return take(train_rows), take(test_rows), set(range(cut, cut + KEPT))


def radius_group(flip: bool) -> tuple[Examples, Examples, set[int]]:
    data = breast_cancer()
    radius = data.x[:, data.feature_names.index("mean radius")]
    in_a = radius >= np.quantile(radius, 0.75)
    if flip:
        data.y = np.where(in_a, 1 - data.y, data.y)
    return thin_split(data, in_a, ("A", "B"))


def rows(result: AnalysisResult, kind: str) -> list:
    return sorted((f for f in result.findings if f.kind == kind), key=lambda f: f.rank)


@pytest.fixture(scope="module")
def tabular() -> tuple[AnalysisResult, set[int]]:
    train, test, kept = radius_group(flip=True)
    return domain_mismatch(AnalysisInput(train=train, test=test, params={"top": 20})), kept


def test_tabular_thin_group_is_ranked_first(tabular: tuple[AnalysisResult, set[int]]) -> None:
    result, _ = tabular
    groups = rows(result, "group")
    assert [g.example_key for g in groups] == ["group:A", "group:B"]
    a = groups[0].payload
    assert set(a) == set(GROUP_PAYLOAD)
    assert (a["n_train"], a["n_worst"]) == (KEPT, 20)
    assert a["concentration"] > 5 and a["thin_ratio"] < 0.1
    assert groups[0].score == a["concentration"] and groups[0].example_index == -1
    assert result.summary["sentences"][0].startswith(f"group 'A': {KEPT} training examples vs")
    json.dumps(result.summary)  # stored as JSON: plain Python types only
    json.dumps([f.payload for f in result.findings])


def test_tabular_kept_handful_are_among_the_top_examples(
    tabular: tuple[AnalysisResult, set[int]],
) -> None:
    result, kept = tabular
    examples = rows(result, "example")
    assert len(examples) == 20 and set(examples[0].payload) == set(EXAMPLE_PAYLOAD)
    top = {f.example_index for f in examples}
    assert len(top & kept) >= 3
    assert examples[0].example_index in kept  # the single most influential one is a kept A
    assert all(f.payload["group"] == "A" for f in examples if f.example_index in kept)


def test_tabular_feature_rows(tabular: tuple[AnalysisResult, set[int]]) -> None:
    result, _ = tabular
    features = rows(result, "feature")
    assert len(features) == 20  # top=20 of the 30 features
    assert set(features[0].payload) == set(FEATURE_PAYLOAD)
    assert all(f.example_key == f"feature:{f.payload['feature']}" for f in features)
    magnitudes = [f.payload["magnitude_per_std"] for f in features]
    assert magnitudes == sorted(magnitudes, reverse=True) and magnitudes[0] > 0
    assert any(s.startswith("feature '") for s in result.summary["sentences"])


def test_a_rare_group_that_follows_the_same_rule_is_not_flagged() -> None:
    train, test, _ = radius_group(flip=False)
    result = domain_mismatch(AnalysisInput(train=train, test=test))
    by_key = {g.example_key: g.payload for g in rows(result, "group")}
    assert by_key["group:A"]["concentration"] < 1.0
    assert not any(s.startswith("group 'A'") for s in result.summary["sentences"])


def test_images_inverted_subgroup_is_found() -> None:
    data = digits()
    rng = np.random.default_rng(0)
    inverted = np.zeros(len(data), dtype=bool)
    inverted[rng.choice(len(data), len(data) // 4, replace=False)] = True
    data.x = np.where(inverted[:, None, None], 255 - data.x, data.x).astype(np.uint8)
    train, test, kept = thin_split(data, inverted, ("inverted", "plain"))
    result = domain_mismatch(AnalysisInput(train=train, test=test))
    assert rows(result, "group")[0].example_key == "group:inverted"
    assert len({f.example_index for f in rows(result, "example")} & kept) >= 3
    assert rows(result, "feature") == []  # no per-pixel feature rows for images


def test_without_groups_examples_are_still_reported() -> None:
    train, test, kept = radius_group(flip=True)
    train.groups = test.groups = None
    params = {"top": 10, "top_errors": 5}
    result = domain_mismatch(AnalysisInput(train=train, test=test, params=params))
    assert rows(result, "group") == []
    assert len(rows(result, "example")) == 10 and len(rows(result, "feature")) == 10
    assert len(result.summary["worst_test_indices"]) == 5
    assert "no groups given" in result.summary["sentences"][0]
    assert all(f.payload["group"] is None for f in rows(result, "example"))


def test_config_and_worst_point_selection() -> None:
    cfg = DomainMismatchConfig.from_params({"error_quantile": "0.9", "model": "logreg"})
    loss = torch.arange(100, dtype=torch.float64)
    worst = worst_test_points(cfg, loss)
    assert worst[0] == 99 and len(worst) == 10
    assert worst_test_points(DomainMismatchConfig(top_errors=3), loss) == [99, 98, 97]
    with pytest.raises(AuditorError, match="error_quantile"):
        DomainMismatchConfig.from_params({"error_quantile": 1.5})
    with pytest.raises(AuditorError, match="top_errors"):
        DomainMismatchConfig.from_params({"top_errors": -1})
    long_key = named_key("feature", "x" * 200)
    assert len(long_key) == 64 and long_key != named_key("feature", "x" * 199)


def test_test_set_of_another_shape_is_a_one_line_data_error() -> None:
    train, test, _ = radius_group(flip=True)
    test.x = test.x[:, :5]
    with pytest.raises(DataError) as info:
        domain_mismatch(AnalysisInput(train=train, test=test))
    assert "shape (5,)" in str(info.value) and "\n" not in str(info.value)
