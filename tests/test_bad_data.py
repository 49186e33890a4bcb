"""Bad data: every reader either loads odd-but-valid input correctly or raises one UserError that names the file
and says what to do. Image modes and sizes, unreadable images, empty splits, truncated files, labels out of range,
and the same from the command line (exit status 2, no traceback)."""

import gzip
import io
import os
import pickle
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import nocollapse.data.fashion_mnist as fashion_mnist
from nocollapse.data import DATA_DIR_ENV, ImageDataset, load_dataset, read_idx, write_idx
from nocollapse.errors import UserError
from test_data import make_cifar10, make_fashion_mnist, py2_pickle

try:  # Pillow is optional for the library, part of the test extra; only the image-folder tests need it
    from PIL import Image, ImageFile
except ImportError:
    Image = ImageFile = None
needs_pillow = pytest.mark.skipif(Image is None, reason="Pillow not installed")

GREEN = (10, 200, 30)


@pytest.fixture(autouse=True)
def isolated_search(monkeypatch, tmp_path):
    """No test may find the system copy or the developer's own data directory by accident."""
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIRS", (tmp_path / "system-fashion-mnist",))


def save(path: Path, image, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


def palette_image(size=(6, 6)):
    """A palette image whose every pixel is palette entry 1, GREEN."""
    image = Image.new("P", size, 1)
    image.putpalette([0, 0, 0, *GREEN, 5, 5, 5])
    return image


def encoded(image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def noise_jpeg(size=(48, 48), seed=0) -> bytes:
    """A JPEG of noise: many entropy-coded bytes, so a cut lands in the middle of the scan data."""
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    return encoded(Image.fromarray(pixels), "JPEG", quality=90)


def load_quietly(root: Path, split: str = "train", **options) -> ImageDataset:
    """load_dataset("image-folder") with every warning turned into an error: odd modes must load silently."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return load_dataset("image-folder", split, root, **options)


# ---------------------------------------------------------------- image modes

# (file name, image maker, mode Pillow reads back, channels when alone in the folder, pixel at the centre, tolerance)
MODES = [
    ("palette.png", lambda: palette_image(), "P", 3, GREEN, 0),
    ("palette-alpha-bytes.png", lambda: (palette_image(), {"transparency": bytes([0, 128, 255])}), "P", 3, GREEN, 0),
    ("palette-alpha-index.gif", lambda: (palette_image(), {"transparency": 1}), "P", 3, GREEN, 0),
    ("rgba-transparent.png", lambda: Image.new("RGBA", (6, 6), (10, 20, 30, 0)), "RGBA", 3, (10, 20, 30), 0),
    ("gray-alpha.png", lambda: Image.new("LA", (6, 6), (77, 0)), "LA", 1, (77,), 0),
    ("cmyk.tiff", lambda: Image.new("CMYK", (6, 6), (0, 255, 0, 0)), "CMYK", 3, (255, 0, 255), 0),  # pure magenta ink
    ("cmyk.jpg", lambda: Image.new("CMYK", (6, 6), (0, 255, 0, 0)), "CMYK", 3, (255, 0, 255), 8),  # lossy
    ("bilevel.png", lambda: Image.new("1", (6, 6), 1), "1", 1, (255,), 0),
    ("bilevel.bmp", lambda: Image.new("1", (6, 6), 1), "1", 1, (255,), 0),
    ("sixteen-bit.png", lambda: Image.new("I;16", (6, 6), 30000), "I;16", 1, (117,), 0),  # 30000 / 257 = 116.7
    ("thirty-two-bit.tiff", lambda: Image.new("I", (6, 6), 65535), "I", 1, (255,), 0),
    ("float-unit.tiff", lambda: Image.new("F", (6, 6), 0.5), "F", 1, (128,), 0),  # 0..1 floats: 0.5 is mid-gray
    ("float-bytes.tiff", lambda: Image.new("F", (6, 6), 200.0), "F", 1, (200,), 0),  # 0..255 floats, Pillow's convention
    ("float-nan.tiff", lambda: Image.fromarray(np.full((6, 6), np.nan, np.float32)), "F", 1, (0,), 0),
]


def write_mode(root: Path, name: str, maker) -> Path:
    made = maker()
    image, options = made if isinstance(made, tuple) else (made, {})
    return save(root / "train" / "a" / name, image, **options)


@needs_pillow
@pytest.mark.parametrize("name, maker, mode, channels, pixel, tolerance", MODES, ids=[m[0] for m in MODES])
def test_every_pillow_mode_loads_with_its_own_values(tmp_path, name, maker, mode, channels, pixel, tolerance):
    with Image.open(write_mode(tmp_path, name, maker)) as written:
        assert written.mode == mode  # the file really holds the mode under test
    data = load_quietly(tmp_path, image_size=4)
    assert data.images.shape == (1, channels, 4, 4)
    np.testing.assert_allclose(data.images[0, :, 2, 2].numpy(), pixel, atol=tolerance)


@needs_pillow
def test_mixed_modes_in_one_folder_become_rgb_with_gray_repeated(tmp_path):
    for name, maker, *_ in MODES:
        write_mode(tmp_path, name, maker)
    data = load_quietly(tmp_path, image_size=4)
    assert data.images.shape == (len(MODES), 3, 4, 4)
    by_name = dict(zip(sorted(m[0] for m in MODES), data.images[:, :, 2, 2].tolist()))
    for name, _, _, channels, pixel, tolerance in MODES:
        expected = pixel * 3 if channels == 1 else pixel
        np.testing.assert_allclose(by_name[name], expected, atol=tolerance, err_msg=name)


@needs_pillow
def test_mixed_sizes_and_aspect_ratios_are_centre_cropped_to_squares(tmp_path):
    folder = tmp_path / "train" / "a"
    save(folder / "dot.png", Image.new("RGB", (1, 1), (9, 99, 199)))
    save(folder / "wide.png", Image.new("RGB", (1000, 3), (50, 60, 70)))
    save(folder / "tall.png", Image.new("RGB", (3, 700), (80, 90, 100)))
    stripes = np.zeros((20, 60, 3), np.uint8)
    stripes[:, 20:40] = 255  # black | white | black: a centre crop is all white, a squash would keep the black
    save(folder / "stripes.png", Image.fromarray(stripes))
    save(folder / "square.png", Image.new("RGB", (32, 32), (1, 2, 3)))
    data = load_quietly(tmp_path, image_size=16)
    assert data.images.shape == (5, 3, 16, 16)
    names = ["dot", "square", "stripes", "tall", "wide"]  # sorted file order
    colours = {"dot": (9, 99, 199), "square": (1, 2, 3), "tall": (80, 90, 100), "wide": (50, 60, 70)}
    for name, image in zip(names, data.images):
        if name == "stripes":  # bicubic weights reach just past the crop's edge: near-white, never black
            assert image.min() > 200
        else:
            assert (image == torch.tensor(colours[name], dtype=torch.uint8)[:, None, None]).all(), name


# ---------------------------------------------------------------- unreadable images


def write_good_folder(root: Path, per_split: int = 2) -> None:
    for split in ("train", "test"):
        for i in range(per_split):
            save(root / split / "cat" / f"good{i}.png", Image.new("RGB", (8, 8), (i, 2, 3)))


@needs_pillow
def test_every_unreadable_file_is_listed_in_one_error(tmp_path):
    write_good_folder(tmp_path)
    cat = tmp_path / "train" / "cat"
    (cat / "empty.png").write_bytes(b"")
    (cat / "notes.png").write_text("meeting notes, not a picture")
    whole_png = encoded(Image.effect_noise((32, 32), 40).convert("RGB"), "PNG")
    (cat / "cut.png").write_bytes(whole_png[: len(whole_png) // 2])
    jpeg = noise_jpeg()
    (cat / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (cat / "gone.png").symlink_to(tmp_path / "nowhere.png")  # a dangling link: reported, not silently dropped
    # Each split reports its own files (the trainer loads every split before it trains); the other split's headers
    # are still read for the channel count, and one that fails there is reported by the split that holds it.
    (tmp_path / "test" / "cat" / "other-split.png").write_text("also not an image")
    with pytest.raises(UserError) as error:
        load_dataset("image-folder", "train", tmp_path)
    message = str(error.value)
    assert message.startswith(f"5 image files under {tmp_path} cannot be read:\n")
    assert f"{cat / 'empty.png'}: empty file (0 bytes)" in message
    assert f"{cat / 'notes.png'}: not an image file" in message
    assert f"{cat / 'cut.png'}: image file is truncated" in message
    assert f"{cat / 'cut.jpg'}: image file is truncated" in message
    assert f"{cat / 'gone.png'}: No such file or directory" in message
    assert "other-split.png" not in message and "good" not in message
    assert message.endswith("\nDelete or replace them, or set data.skip_unreadable=true to leave them out "
                            "(listed in the run directory and the log).")
    with pytest.raises(UserError) as error:
        load_dataset("image-folder", "test", tmp_path)
    message = str(error.value)
    assert message.startswith(f"1 image file under {tmp_path} cannot be read:\n")
    assert f"{tmp_path / 'test' / 'cat' / 'other-split.png'}: not an image file" in message and "Delete or replace them" in message
    assert "empty.png" not in message and "good" not in message


@needs_pillow
def test_a_long_list_of_unreadable_files_is_cut_after_ten(tmp_path):
    write_good_folder(tmp_path)
    for i in range(13):
        (tmp_path / "train" / "cat" / f"bad{i:02d}.jpg").write_bytes(b"\xff\xd8\xff" + bytes(i))
    with pytest.raises(UserError) as error:
        load_dataset("image-folder", "train", tmp_path)
    message = str(error.value)
    assert message.startswith("13 image files") and message.count("bad") == 10 and "\n  and 3 more\n" in message
    assert "bad09.jpg" in message and "bad10.jpg" not in message  # sorted: the first ten are named


@needs_pillow
def test_truncated_jpegs_fail_because_truncated_loading_stays_off(tmp_path, monkeypatch):
    jpeg = noise_jpeg()
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    for cut in (len(jpeg) // 4, len(jpeg) // 2, len(jpeg) - 10):
        write_good_folder(tmp_path)
        (tmp_path / "train" / "cat" / "cut.jpg").write_bytes(jpeg[:cut])
        with pytest.raises(UserError, match=r"cut\.jpg: image file is truncated"):
            load_dataset("image-folder", "train", tmp_path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False, "the reader must not switch partial decoding on"
    # Why it matters: with the switch on, Pillow fills the missing part with gray and reports nothing.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    assert len(load_dataset("image-folder", "train", tmp_path)) == 3


@needs_pillow
def test_a_decompression_bomb_is_named_with_what_to_do(tmp_path, monkeypatch):
    write_good_folder(tmp_path)
    save(tmp_path / "train" / "cat" / "huge.png", Image.new("L", (40, 40)))  # 1600 pixels > 2 × the limit below
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    expected = r"huge\.png: Image size \(1600 pixels\) exceeds limit .*raise PIL\.Image\.MAX_IMAGE_PIXELS before loading \(now 100;"
    with pytest.raises(UserError, match=expected):
        load_dataset("image-folder", "train", tmp_path)
    # Following the advice works: the cache, which remembers the file as unreadable, is not reused under the new limit.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    assert len(load_dataset("image-folder", "train", tmp_path)) == 3


@needs_pillow
def test_a_file_that_cannot_be_opened_is_named(tmp_path, monkeypatch):
    """Permission denied. The tests run as root here, where chmod does not deny, so open() is made to refuse."""
    write_good_folder(tmp_path)
    locked = save(tmp_path / "train" / "cat" / "locked.png", Image.new("L", (4, 4)))
    real_open = Image.open

    def refusing_open(path, *args, **kwargs):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(Image, "open", refusing_open)
    with pytest.raises(UserError, match=r"1 image file under .*\n  .*locked\.png: Permission denied\n"):
        load_dataset("image-folder", "train", tmp_path)


@needs_pillow
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_a_really_unreadable_file_is_named(tmp_path):
    write_good_folder(tmp_path)
    locked = save(tmp_path / "train" / "cat" / "locked.png", Image.new("L", (4, 4)))
    locked.chmod(0)
    try:
        with pytest.raises(UserError, match=r"locked\.png: Permission denied"):
            load_dataset("image-folder", "train", tmp_path)
    finally:
        locked.chmod(0o644)


# ---------------------------------------------------------------- empty splits


def test_an_idx_file_with_no_images_is_refused(tmp_path):
    for shape in ((0, 28, 28), (3, 0, 0)):
        make_fashion_mnist(tmp_path, 3)
        write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros(shape, np.uint8))
        write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(shape[0], np.uint8))
        with pytest.raises(UserError, match=r"train-images-idx3-ubyte\.gz holds no images .*download it again"):
            load_dataset("fashion-mnist", "train", tmp_path)


def test_a_cifar_batch_with_no_rows_is_refused(tmp_path):
    make_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(py2_pickle({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}))
    with pytest.raises(UserError, match=r"data_batch_2 holds no images .*extract the official archive again"):
        load_dataset("cifar10", "train", tmp_path)


@needs_pillow
def test_an_image_folder_split_with_no_images_is_refused(tmp_path):
    save(tmp_path / "train" / "cat" / "a.png", Image.new("L", (4, 4)))
    (tmp_path / "test" / "cat").mkdir(parents=True)
    (tmp_path / "test" / "cat" / "readme.txt").write_text("not an image")
    save(tmp_path / "test" / "cat" / ".hidden.png", Image.new("L", (4, 4)))
    assert len(load_dataset("image-folder", "train", tmp_path)) == 1
    expected = rf"no images in {tmp_path / 'test'} \(hidden files and other extensions are ignored\); expected .*png, jpg"
    with pytest.raises(UserError, match=expected):
        load_dataset("image-folder", "test", tmp_path)


# ---------------------------------------------------------------- truncated dataset files


@pytest.mark.parametrize("keep", [2, 10, 0.5, -8, -1], ids=["magic-only", "gzip-header-only", "half", "no-trailer", "last-byte"])
def test_a_gzip_cut_anywhere_is_a_user_error_naming_the_file(tmp_path, keep):
    payload = write_idx(tmp_path / "x.gz", np.random.default_rng(0).integers(0, 256, (50, 8, 8), dtype=np.uint8)).read_bytes()
    end = int(len(payload) * keep) if isinstance(keep, float) else keep
    (tmp_path / "cut.gz").write_bytes(payload[:end])
    with pytest.raises(UserError, match=r"cut\.gz is not a valid gzip file .*truncated or corrupt; delete it and download it again"):
        read_idx(tmp_path / "cut.gz")


def test_a_corrupt_gzip_is_a_user_error(tmp_path):
    payload = bytearray(write_idx(tmp_path / "x.gz", np.random.default_rng(0).integers(0, 256, (50, 8, 8), dtype=np.uint8)).read_bytes())
    payload[len(payload) // 2] ^= 0xFF  # a flipped byte in the deflate stream: a zlib error or a CRC mismatch
    (tmp_path / "flipped.gz").write_bytes(bytes(payload))
    with pytest.raises(UserError, match=r"flipped\.gz is not a valid gzip file"):
        read_idx(tmp_path / "flipped.gz")


@pytest.mark.parametrize("keep, message", [(6, "ends inside the IDX header"), (20, "truncated"), (-1, "truncated")])
def test_a_complete_gzip_of_a_cut_idx_payload_is_refused(tmp_path, keep, message):
    raw = write_idx(tmp_path / "whole", np.ones((4, 3, 3), np.uint8)).read_bytes()
    make_fashion_mnist(tmp_path, 4)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[:keep]))  # the gzip is fine, its content is cut
    with pytest.raises(UserError, match=rf"train-images-idx3-ubyte\.gz.*{message}"):
        load_dataset("fashion-mnist", "train", tmp_path)


@pytest.mark.parametrize("writer", ["python2", "protocol5"])
def test_a_cifar_pickle_cut_anywhere_is_a_user_error_naming_the_file(tmp_path, writer):
    make_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    batch = {b"data": np.random.default_rng(0).integers(0, 256, (20, 3072), dtype=np.uint8), b"labels": list(range(10)) * 2}
    whole = py2_pickle(batch) if writer == "python2" else pickle.dumps(batch, protocol=5)
    for end in (0, 1, 2, 40, 200, len(whole) // 2, len(whole) - 1):
        (folder / "data_batch_3").write_bytes(whole[:end])
        with pytest.raises(UserError, match=r"data_batch_3 is not a readable CIFAR pickle .*truncated or corrupt"):
            load_dataset("cifar10", "train", tmp_path)
    (folder / "data_batch_3").write_bytes(whole)
    assert len(load_dataset("cifar10", "train", tmp_path)) == 100  # the whole file loads: the cuts were the problem


def test_a_cut_cifar_meta_file_is_named(tmp_path):
    make_cifar10(tmp_path)
    meta = tmp_path / "cifar-10-batches-py" / "batches.meta"
    meta.write_bytes(meta.read_bytes()[:30])
    with pytest.raises(UserError, match=r"batches\.meta is not a readable CIFAR pickle"):
        load_dataset("cifar10", "test", tmp_path)


# ---------------------------------------------------------------- labels out of range


def test_signed_idx_labels_cannot_smuggle_in_negative_labels(tmp_path):
    make_fashion_mnist(tmp_path, 3)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(bytes([0, 0, 0x09, 1]) + struct.pack(">I", 3) + bytes([0, 0xFF, 1])))  # 0x09: signed byte, 0xFF = −1
    with pytest.raises(UserError, match=r"train-labels-idx1-ubyte\.gz: IDX type byte is 0x09, expected 0x08"):
        load_dataset("fashion-mnist", "train", tmp_path)


@pytest.mark.parametrize(
    "name, labels, message",
    [
        ("cifar10", [-1] * 20, r"labels span -1\.\.-1, expected 0\.\.9"),
        ("cifar10", [0] * 19 + [10], r"labels span 0\.\.10, expected 0\.\.9"),
        ("cifar10", [0.5] * 20, "must be a list of integers"),
        ("cifar100", [100] * 20, r"labels span 100\.\.100, expected 0\.\.99"),
    ],
)
def test_cifar_labels_out_of_range_are_refused(tmp_path, name, labels, message):
    folder = tmp_path / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    folder.mkdir()
    key, batch_name, meta_name = (b"labels", "test_batch", "batches.meta") if name == "cifar10" else (b"fine_labels", "test", "meta")
    data = np.zeros((20, 3072), np.uint8)
    (folder / batch_name).write_bytes(pickle.dumps({b"data": data, key: labels}, protocol=4))
    names_key = b"label_names" if name == "cifar10" else b"fine_label_names"
    (folder / meta_name).write_bytes(pickle.dumps({names_key: [b"c"] * (10 if name == "cifar10" else 100)}))
    with pytest.raises(UserError, match=rf"{batch_name}: .*{message}"):
        load_dataset(name, "test", tmp_path)


@needs_pillow
def test_image_folder_labels_index_the_training_classes_in_both_splits(tmp_path):
    for name in ("ant", "bee", "cat"):
        save(tmp_path / "train" / name / "x.png", Image.new("L", (4, 4)))
    save(tmp_path / "test" / "cat" / "y.png", Image.new("L", (4, 4)))  # the test split lacks ant and bee
    train, test = load_dataset("image-folder", "train", tmp_path), load_dataset("image-folder", "test", tmp_path)
    assert train.labels.tolist() == [0, 1, 2] and test.labels.tolist() == [2]
    assert train.classes == test.classes == ["ant", "bee", "cat"]


def test_the_container_refuses_labels_outside_its_classes():
    images = torch.zeros(2, 1, 3, 3, dtype=torch.uint8)
    for labels in ([0, 2], [-1, 0]):
        with pytest.raises(ValueError, match=r"expected 0\.\.1 for 2 classes"):
            ImageDataset(images, torch.tensor(labels), ["a", "b"], "bad")


# ---------------------------------------------------------------- from the command line

TINY_FOLDER_RUN = [
    "--preset", "fmnist-byol", "--quiet", "--no-eval", "--no-report", "data.dataset=image-folder",
    "augment.mean=", "augment.std=",  # the preset's Fashion-MNIST statistics have one channel, these images three
    "model.widths=8,16", "model.projector_hidden=32", "model.projection_dim=16", "model.predictor_hidden=32",
    "optim.batch_size=16", "optim.epochs=1", "optim.warmup_epochs=0.5", "eval.knn_k=5", "eval.monitor_train_samples=0",
    "run.device=cpu", "run.name=folder",
]


def write_mixed_folder(root: Path, train: int = 40, test: int = 20) -> None:
    """2 classes of 32 px-ish images in mixed modes, formats and sizes (class 1 bright, class 0 dark)."""
    rng = np.random.default_rng(0)
    sizes = [(32, 32), (1, 1), (200, 9), (9, 120), (47, 31)]
    for split, count in (("train", train), ("test", test)):
        for i in range(count):
            label = i % 2
            width, height = sizes[i % len(sizes)]
            pixels = rng.integers(0, 100, (height, width, 3), dtype=np.uint8) + 150 * label
            image = Image.fromarray(pixels)
            kind = i % 6
            if kind == 0:
                save(root / split / f"c{label}" / f"{i}.png", image)
            elif kind == 1:
                save(root / split / f"c{label}" / f"{i}.jpg", image.convert("CMYK"))
            elif kind == 2:
                save(root / split / f"c{label}" / f"{i}.png", image.convert("P"))
            elif kind == 3:
                save(root / split / f"c{label}" / f"{i}.png", image.convert("RGBA"))
            elif kind == 4:
                save(root / split / f"c{label}" / f"{i}.bmp", image.convert("L"))
            else:
                save(root / split / f"c{label}" / f"{i}.png", image.convert("LA"))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nocollapse", "train", *args], capture_output=True, text=True, timeout=300)


@needs_pillow
def test_cli_trains_on_a_folder_of_mixed_modes_and_sizes(tmp_path):
    write_mixed_folder(tmp_path / "images")
    done = run_cli(*TINY_FOLDER_RUN, f"data.data_dir={tmp_path / 'images'}", f"run.out_dir={tmp_path / 'runs'}")
    assert done.returncode == 0, done.stderr
    assert "training byol on image-folder train (40 images of 3×32×32, in memory)" in done.stdout and "Traceback" not in done.stderr
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "encoder.pt"):
        assert (tmp_path / "runs" / "folder" / name).is_file(), name


@needs_pillow
def test_cli_names_a_corrupt_image_and_exits_2_without_a_traceback(tmp_path):
    write_mixed_folder(tmp_path / "images", train=4, test=2)
    jpeg = noise_jpeg()
    (tmp_path / "images" / "train" / "c1" / "broken-photo.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    done = run_cli(*TINY_FOLDER_RUN, f"data.data_dir={tmp_path / 'images'}", f"run.out_dir={tmp_path / 'runs'}")
    assert done.returncode == 2
    assert "broken-photo.jpg: image file is truncated" in done.stderr and "Delete or replace" in done.stderr
    assert "Traceback" not in done.stderr
