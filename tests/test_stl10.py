"""STL-10 from small files in the official binary format (column-major 3×96×96 images, labels 1..10)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from nocollapse.data import DATA_DIR_ENV
from nocollapse.data.mapped import MappedImages
from nocollapse.data.stl10 import CLASSES, FOLDER, IMAGE_BYTES, load_stl10
from nocollapse.errors import UserError

COUNTS = {"train": 7, "test": 5, "unlabeled": 11}


def to_official_bytes(images: np.ndarray) -> bytes:
    """(N, 3, 96, 96) row-major images as STL-10 stores them: per image, per channel, column after column."""
    return np.ascontiguousarray(images.transpose(0, 1, 3, 2)).tobytes()


def write_stl10(directory: Path, seed: int = 0, names: list[str] | None = CLASSES) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Official-format files for every split; returns {split: (row-major images, 1-based labels or None)}."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, count in COUNTS.items():
        # Random pixels: no image equals its own transpose, so a row/column mix-up cannot pass.
        images = rng.integers(0, 256, size=(count, 3, 96, 96), dtype=np.uint8)
        (directory / f"{split}_X.bin").write_bytes(to_official_bytes(images))
        labels = None
        if split != "unlabeled":
            labels = (np.arange(count) % 10 + 1).astype(np.uint8)
            (directory / f"{split}_y.bin").write_bytes(labels.tobytes())
        written[split] = (images, labels)
    if names is not None:
        (directory / "class_names.txt").write_text("".join(f"{n}\n" for n in names))
    return written


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


@pytest.mark.parametrize("split", ["train", "test"])
def test_labelled_split_pixels_labels_and_classes(tmp_path, split):
    images, labels = write_stl10(tmp_path / FOLDER)[split]
    dataset = load_stl10(split, tmp_path)  # found in data_dir/stl10_binary
    assert isinstance(dataset.images, MappedImages)  # mapped, not read into a tensor
    assert dataset.images.shape == (COUNTS[split], 3, 96, 96) and dataset.name == f"stl10/{split}"
    assert torch.equal(dataset.images.load(), torch.from_numpy(images))
    assert torch.equal(dataset.images[[4, 0, 4]], torch.from_numpy(images[[4, 0, 4]]))
    assert dataset.labels.dtype == torch.int64 and dataset.labels.tolist() == (labels.astype(int) - 1).tolist()
    assert dataset.classes == CLASSES


def test_unlabelled_split_has_no_labels(tmp_path):
    images, _ = write_stl10(tmp_path)["unlabeled"]  # found directly in data_dir
    dataset = load_stl10("unlabeled", tmp_path)
    assert dataset.labels is None and dataset.classes == [] and not dataset.labelled
    assert dataset.name == "stl10/unlabeled" and len(dataset) == 11 and isinstance(dataset.images, MappedImages)
    assert torch.equal(dataset.in_memory(), torch.from_numpy(images))


def test_first_bytes_of_the_file_are_the_first_column(tmp_path):
    """Pins the official order without the test's own writer: only the top row of image 0's red channel is lit."""
    raw = np.zeros(3 * IMAGE_BYTES, dtype=np.uint8)  # 3 images
    raw[0 : 96 * 96 : 96] = 255  # byte w*96 + h is pixel (h, w): h = 0 at every 96th byte of channel 0
    raw[IMAGE_BYTES + 96 * 96 + 5] = 7  # image 1, green channel, column 0, row 5
    (tmp_path / "unlabeled_X.bin").write_bytes(raw.tobytes())
    images = load_stl10("unlabeled", tmp_path).images.load()
    assert images[0, 0, 0].tolist() == [255] * 96  # the top row
    assert images[0, 0, 1:].sum() == 0 and images[0, 1:].sum() == 0
    assert images[1, 1, 5, 0] == 7 and images[1].sum() == 7 and images[2].sum() == 0


def test_class_names_file_is_read_and_official_names_are_the_fallback(tmp_path):
    names = [f"class {i}" for i in range(10)]
    write_stl10(tmp_path / "a", names=names)
    assert load_stl10("train", tmp_path / "a").classes == names
    write_stl10(tmp_path / "b", names=None)
    assert load_stl10("test", tmp_path / "b").classes == CLASSES


def test_bad_class_names_file(tmp_path):
    write_stl10(tmp_path, names=CLASSES[:9])
    with pytest.raises(UserError, match=r"class_names\.txt lists 9 class names, STL-10 has 10"):
        load_stl10("train", tmp_path)


def test_data_dir_environment_variable(tmp_path, monkeypatch):
    write_stl10(tmp_path / FOLDER)
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert len(load_stl10("test", None)) == 5


def test_truncated_images_file_names_the_file_and_the_fix(tmp_path):
    write_stl10(tmp_path / FOLDER)
    path = tmp_path / FOLDER / "train_X.bin"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UserError) as error:
        load_stl10("train", tmp_path)
    message = str(error.value)
    assert str(path) in message and "truncated" in message and "27,648" in message
    assert f"nocollapse download stl10 --to {tmp_path}" in message  # the root that holds stl10_binary/


def test_empty_images_file(tmp_path):
    write_stl10(tmp_path)
    (tmp_path / "test_X.bin").write_bytes(b"")
    (tmp_path / "test_y.bin").write_bytes(b"")
    with pytest.raises(UserError, match=r"test_X\.bin is empty"):
        load_stl10("test", tmp_path)


def test_missing_files_list_where_it_searched(tmp_path):
    with pytest.raises(UserError) as error:
        load_stl10("unlabeled", tmp_path)
    message = str(error.value)
    assert "unlabeled_X.bin" in message and "nocollapse download stl10 --to DIR" in message
    assert f"{tmp_path}  (data_dir)" in message and f"{tmp_path / FOLDER}  (data_dir)" in message


def test_images_without_labels_is_an_incomplete_folder(tmp_path):
    write_stl10(tmp_path)
    (tmp_path / "train_y.bin").unlink()
    with pytest.raises(UserError, match=r"incomplete STL-10 folder: it has train_X\.bin but not train_y\.bin"):
        load_stl10("train", tmp_path)


@pytest.mark.parametrize("bad", [0, 11, 255])
def test_label_out_of_range(tmp_path, bad):
    write_stl10(tmp_path)
    labels = bytearray((tmp_path / "train_y.bin").read_bytes())
    labels[3] = bad
    (tmp_path / "train_y.bin").write_bytes(bytes(labels))
    with pytest.raises(UserError, match=rf"train_y\.bin has label {bad} at image 3 .*labels are 1\.\.10"):
        load_stl10("train", tmp_path)


def test_label_count_must_match_image_count(tmp_path):
    write_stl10(tmp_path)
    (tmp_path / "test_y.bin").write_bytes(b"\x01" * 4)
    with pytest.raises(UserError, match=r"test_X\.bin holds 5 images but .*test_y\.bin holds 4 labels"):
        load_stl10("test", tmp_path)


def test_unknown_split(tmp_path):
    with pytest.raises(UserError, match="choose one of train, test, unlabeled"):
        load_stl10("val", tmp_path)
