from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from auditor.data.bundled import breast_cancer, digits, flip_labels, wine, write_npz
from auditor.data.load import load_examples
from auditor.errors import DataError


def test_format_is_sniffed_from_the_path(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("a,label\n1,0\n")
    write_npz(wine(), tmp_path / "w.npz")
    assert load_examples(tmp_path / "d.csv").feature_names == ["a"]
    assert len(load_examples(tmp_path / "w.npz")) == 178
    assert load_examples(tmp_path / "d.csv", format="csv").source == str(tmp_path / "d.csv")


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("absent.npz", {}, "no such file or folder"),
        ("d.txt", {}, "cannot tell the format"),
        ("d.txt", {"format": "parquet"}, "unknown format 'parquet'"),
        ("d.txt", {"format": "npz", "label_column": "y"}, "apply to CSV files"),
        ("d.txt", {"format": "csv", "resize": (2, 2)}, "applies to image folders"),
    ],
)
def test_unusable_paths_and_options_are_data_errors(
    tmp_path: Path, name: str, kwargs: dict, message: str
) -> None:
    (tmp_path / "d.txt").write_text("")
    with pytest.raises(DataError, match=message):
        load_examples(tmp_path / name, **kwargs)


def test_bundled_datasets_have_the_documented_shapes() -> None:
    d = digits()
    assert d.x.shape == (1797, 8, 8) and d.x.dtype == np.uint8 and d.x.max() == 255
    assert d.is_image and d.num_classes == 10 and len(set(d.keys)) == len(d)
    b = breast_cancer()
    assert b.x.shape == (569, 30) and b.x.dtype == np.float32 and b.num_classes == 2
    assert wine().num_classes == 3


def test_flipped_labels_are_deterministic_and_really_flipped() -> None:
    clean = wine()
    noisy, flipped = flip_labels(clean, 0.1, seed=3)
    again, flipped_again = flip_labels(clean, 0.1, seed=3)
    assert len(flipped) == 18 and flipped.tolist() == flipped_again.tolist()
    assert np.array_equal(noisy.y, again.y)
    assert (noisy.y != clean.y).nonzero()[0].tolist() == flipped.tolist()
    changed = {noisy.keys[i] for i in flipped}
    assert changed.isdisjoint(clean.keys)
    assert flip_labels(clean, 0.1, seed=4)[1].tolist() != flipped.tolist()
