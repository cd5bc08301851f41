from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from auditor.data.imagefolder import load_imagefolder, parse_resize
from auditor.errors import DataError


def _image(path: Path, size: tuple[int, int] = (6, 4), mode: str = "L", value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color=value if mode == "L" else (value, 0, 255 - value)).save(path)


def test_class_folders_become_sorted_labels(tmp_path: Path) -> None:
    for i in range(3):
        _image(tmp_path / "dog" / f"{i}.png", value=10 * i)
    _image(tmp_path / "cat" / "a.png", value=200)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    examples = load_imagefolder(tmp_path)
    assert examples.class_names == ["cat", "dog"]
    assert examples.y.tolist() == [0, 1, 1, 1]
    assert examples.x.shape == (4, 4, 6) and examples.x.dtype == np.uint8
    assert examples.is_image and examples.x[0, 0, 0] == 200
    assert examples.extra["files"][0] == "cat/a.png"
    assert load_imagefolder(tmp_path).keys == examples.keys


def test_colour_images_are_channel_first(tmp_path: Path) -> None:
    _image(tmp_path / "a" / "rgb.png", mode="RGB", value=30)
    _image(tmp_path / "b" / "gray.png", mode="L", value=7)
    examples = load_imagefolder(tmp_path)
    assert examples.x.shape == (2, 3, 4, 6)
    assert examples.x[0, :, 0, 0].tolist() == [30, 0, 225]
    assert examples.x[1, :, 0, 0].tolist() == [7, 7, 7]


def test_a_corrupt_image_is_named(tmp_path: Path) -> None:
    _image(tmp_path / "a" / "good.png")
    bad = tmp_path / "a" / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(DataError, match="bad.png: cannot decode image") as caught:
        load_imagefolder(tmp_path)
    assert "\n" not in str(caught.value)


def test_an_odd_size_is_named_unless_resizing(tmp_path: Path) -> None:
    _image(tmp_path / "a" / "1.png", size=(6, 4))
    _image(tmp_path / "a" / "2.png", size=(8, 8))
    with pytest.raises(DataError, match=r"2.png: image is 8x8 but 1.png is 6x4; pass --resize"):
        load_imagefolder(tmp_path)
    assert load_imagefolder(tmp_path, resize=parse_resize("5x3")).x.shape == (2, 5, 3)


def test_folders_without_images_are_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no class folders"):
        load_imagefolder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images in the class folders"):
        load_imagefolder(tmp_path)
    with pytest.raises(DataError, match="cannot read size"):
        parse_resize("big")
