from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from auditor.data.imagefolder import load_imagefolder, parse_resize
from auditor.data.options import DataOptions
from auditor.errors import DataError


@pytest.fixture(params=[False, True], ids=["loaded", "lazy"])
def lazy(request: pytest.FixtureRequest) -> bool:
    """Every behaviour holds alike for a folder decoded whole and one read from its files."""
    return request.param


def _image(path: Path, size: tuple[int, int] = (6, 4), mode: str = "L", value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color=value if mode == "L" else (value, 0, 255 - value)).save(path)


def test_class_folders_become_sorted_labels(tmp_path: Path, lazy: bool) -> None:
    for i in range(3):
        _image(tmp_path / "dog" / f"{i}.png", value=10 * i)
    _image(tmp_path / "cat" / "a.png", value=200)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    examples = load_imagefolder(tmp_path, lazy=lazy)
    assert examples.class_names == ["cat", "dog"]
    assert examples.y.tolist() == [0, 1, 1, 1]
    assert examples.x.shape == (4, 4, 6) and examples.x.dtype == np.uint8
    assert examples.is_image and examples.x[0, 0, 0] == 200
    assert examples.extra["files"][0] == "cat/a.png"
    assert load_imagefolder(tmp_path, lazy=lazy).keys == examples.keys


def test_colour_images_are_channel_first(tmp_path: Path, lazy: bool) -> None:
    _image(tmp_path / "a" / "rgb.png", mode="RGB", value=30)
    _image(tmp_path / "b" / "gray.png", mode="L", value=7)
    examples = load_imagefolder(tmp_path, lazy=lazy)
    assert examples.x.shape == (2, 3, 4, 6)
    assert examples.x[0, :, 0, 0].tolist() == [30, 0, 225]
    assert examples.x[1, :, 0, 0].tolist() == [7, 7, 7]


def test_a_corrupt_image_is_named(tmp_path: Path, lazy: bool) -> None:
    _image(tmp_path / "a" / "good.png")
    bad = tmp_path / "a" / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(DataError, match="bad.png: cannot decode image") as caught:
        load_imagefolder(tmp_path, lazy=lazy)
    assert "\n" not in str(caught.value)


def test_an_odd_size_is_named_unless_resizing(tmp_path: Path, lazy: bool) -> None:
    _image(tmp_path / "a" / "1.png", size=(6, 4))
    _image(tmp_path / "a" / "2.png", size=(8, 8))
    with pytest.raises(DataError, match=r"2.png: image is 8x8 but 1.png is 6x4; pass --resize"):
        load_imagefolder(tmp_path, lazy=lazy)
    assert load_imagefolder(tmp_path, resize=parse_resize("5x3"), lazy=lazy).x.shape == (2, 5, 3)


def test_folders_without_images_are_errors(tmp_path: Path, lazy: bool) -> None:
    with pytest.raises(DataError, match="no class folders"):
        load_imagefolder(tmp_path, lazy=lazy)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images in the class folders"):
        load_imagefolder(tmp_path, lazy=lazy)
    with pytest.raises(DataError, match="cannot read size"):
        parse_resize("big")


def test_a_lazy_folder_reads_what_the_loaded_one_holds(tmp_path: Path) -> None:
    """Same keys (mixed grayscale and colour included), same pixels by index, slice, list,
    mask and shard view, and a sequential pass through the DataLoader workers gives the same rows."""
    rng = np.random.default_rng(0)
    for i in range(300):
        path = tmp_path / ("a", "b", "c")[i % 3] / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (5, 7, 3) if i % 50 == 0 else (5, 7), dtype=np.uint8)
        Image.fromarray(pixels).save(path)
    _image(tmp_path / "a" / "dup.png", size=(7, 5), value=9)
    _image(tmp_path / "a" / "dup2.png", size=(7, 5), value=9)  # exact duplicate: keys still unique
    loaded = load_imagefolder(tmp_path, lazy=False)
    lazy_ = load_imagefolder(tmp_path, lazy=True, options=DataOptions(data_workers=1))
    assert lazy_.keys == loaded.keys and len(set(lazy_.keys)) == len(loaded)
    x, want = lazy_.x, loaded.x
    assert x.shape == want.shape == (302, 3, 5, 7) and x.dtype == np.uint8
    np.testing.assert_array_equal(x[7], want[7])
    np.testing.assert_array_equal(x[10:20], want[10:20])
    np.testing.assert_array_equal(x[[5, 1, 5]], want[[5, 1, 5]])
    np.testing.assert_array_equal(x[want[:, 0, 0, 0] > 128], want[want[:, 0, 0, 0] > 128])
    shard = x.take(np.arange(1, 302, 2))
    np.testing.assert_array_equal(shard[3:6], want[7:13:2])
    np.testing.assert_array_equal(np.asarray(x), want)
    np.testing.assert_array_equal(lazy_.subset([4, 2]).x[0], want[4])
    x.largest_decode = 0
    batches = list(x.batches(0, 302, 64))  # one DataLoader worker decodes ahead
    assert [len(b) for b in batches] == [64, 64, 64, 64, 46] and x.largest_decode <= 64
    np.testing.assert_array_equal(np.concatenate(batches), want)


def test_an_image_corrupted_after_the_scan_is_named_when_a_pass_reaches_it(tmp_path: Path) -> None:
    for i in range(600):
        _image(tmp_path / "a" / f"{i:03d}.png", value=i % 256)
    # decoded in a DataLoader worker
    x = load_imagefolder(tmp_path, lazy=True, options=DataOptions(data_workers=1)).x
    (tmp_path / "a" / "450.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    seen = 0
    with pytest.raises(DataError, match=r"a/450.png: cannot decode image") as caught:
        for batch in x.batches(0, len(x), 100):
            seen += len(batch)
    assert seen == 400 and "\n" not in str(caught.value)  # the batches before it were read
    (tmp_path / "a" / "451.png").unlink()
    with pytest.raises(DataError, match=r"a/451.png: image is gone"):
        x[451]
