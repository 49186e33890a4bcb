"""Dataset readers: IDX (Fashion-MNIST), CIFAR pickles (refusing foreign globals), image folders; all on generated files."""

import gzip
import os
import pickle
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import nocollapse.data.fashion_mnist as fashion_mnist
from nocollapse.data import DATA_DIR_ENV, DATASETS, ImageDataset, load_dataset, read_idx, write_idx
from nocollapse.data.cifar import load_pickle
from nocollapse.errors import UserError

try:  # Pillow is optional for the library, part of the test extra; only the image-folder tests need it
    from PIL import Image
except ImportError:
    Image = None
needs_pillow = pytest.mark.skipif(Image is None, reason="Pillow not installed")

REAL_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def isolated_search(monkeypatch, tmp_path):
    """No test may find the system copy or the developer's own data directory by accident."""
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIRS", (tmp_path / "system-fashion-mnist",))


# ---------------------------------------------------------------- IDX / Fashion-MNIST


def make_fashion_mnist(directory: Path, n: int, split: str = "train", *, gz: bool = True, seed: int = 0) -> np.ndarray:
    """Write a tiny (n, 4, 4) image set and labels 0..9 in the official file names; return the images."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    images = rng.integers(0, 256, (n, 4, 4), dtype=np.uint8)
    images_name, labels_name = fashion_mnist.FILES[split]
    suffix = ".gz" if gz else ""
    write_idx(directory / (images_name + suffix), images)
    write_idx(directory / (labels_name + suffix), np.arange(n, dtype=np.uint8) % 10)
    return images


@pytest.mark.parametrize("name", ["data-idx3-ubyte.gz", "data-idx3-ubyte"])
def test_idx_round_trip_gzip_and_raw(tmp_path, name):
    array = np.random.default_rng(0).integers(0, 256, (5, 3, 2), dtype=np.uint8)
    path = write_idx(tmp_path / name, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    back = read_idx(path, ndim=3)
    assert back.dtype == np.uint8 and back.flags.writeable
    np.testing.assert_array_equal(back, array)


def test_gzip_is_detected_by_content_not_name(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    gz_without_suffix = write_idx(tmp_path / "labels-idx2-ubyte", array, compress=True)
    raw_with_suffix = write_idx(tmp_path / "labels-idx2-ubyte.gz", array, compress=False)
    np.testing.assert_array_equal(read_idx(gz_without_suffix), array)
    np.testing.assert_array_equal(read_idx(raw_with_suffix), array)


@pytest.mark.parametrize(
    "header, message",
    [
        (b"\x12\x34\x08\x03", "not an IDX file"),
        (b"\x00\x00\x0d\x03", "type byte is 0x0D"),  # float data: not an image file
        (b"\x00\x00\x08\x01", "expected 2051"),  # a labels file where images belong
        (b"", "not an IDX file"),
    ],
)
def test_wrong_magic_is_refused(tmp_path, header, message):
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(header + (struct.pack(">III", 1, 2, 2) + bytes(4) if header else b""))
    with pytest.raises(UserError, match=message) as error:
        read_idx(path, ndim=3)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("change, message", [(-3, "truncated"), (+5, "longer than its header")])
def test_data_length_must_match_the_header(tmp_path, change, message):
    array = np.ones((4, 3, 3), dtype=np.uint8)
    raw = write_idx(tmp_path / "x", array).read_bytes()
    raw = raw[:change] if change < 0 else raw + bytes(change)
    for path, payload in ((tmp_path / "raw", raw), (tmp_path / "gz", gzip.compress(raw))):
        path.write_bytes(payload)
        with pytest.raises(UserError, match=message):
            read_idx(path, ndim=3)


def test_truncated_gzip_stream_is_a_user_error(tmp_path):
    payload = write_idx(tmp_path / "x.gz", np.random.default_rng(0).integers(0, 256, (50, 8, 8), dtype=np.uint8)).read_bytes()
    (tmp_path / "cut.gz").write_bytes(payload[: len(payload) // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        read_idx(tmp_path / "cut.gz")


def test_fashion_mnist_reads_generated_files(tmp_path):
    images = make_fashion_mnist(tmp_path, 12, "test", gz=False)
    data = load_dataset("fashion-mnist", "test", tmp_path)
    assert data.name == "fashion-mnist/test" and len(data) == 12 and data.classes[0] == "T-shirt/top" and data.classes[9] == "Ankle boot"
    assert data.images.shape == (12, 1, 4, 4) and data.images.dtype == torch.uint8 and data.images.is_contiguous()
    assert data.labels.dtype == torch.int64 and data.labels.tolist() == [i % 10 for i in range(12)]
    np.testing.assert_array_equal(data.images[:, 0].numpy(), images)


def test_image_and_label_counts_must_agree(tmp_path):
    make_fashion_mnist(tmp_path, 5)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(4, dtype=np.uint8))
    with pytest.raises(UserError, match="5 images but .* 4 labels"):
        load_dataset("fashion-mnist", "train", tmp_path)


def test_labels_out_of_range_are_refused(tmp_path):
    make_fashion_mnist(tmp_path, 5)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.full(5, 10, dtype=np.uint8))
    with pytest.raises(UserError, match="label 10"):
        load_dataset("fashion-mnist", "train", tmp_path)


def test_missing_dataset_says_where_it_looked_and_how_to_get_it(tmp_path):
    with pytest.raises(UserError) as error:
        load_dataset("fashion-mnist", "train")
    message = str(error.value)
    assert "sudo apt-get install dataset-fashion-mnist" in message
    assert "nocollapse download fashion-mnist --to DIR" in message and "NOCOLLAPSE_DATA_DIR=DIR" in message
    assert str(tmp_path / "system-fashion-mnist") in message
    assert "NOCOLLAPSE_DATA_DIR not set" in message
    with pytest.raises(UserError) as error:
        load_dataset("fashion-mnist", "train", tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(error.value) and "system-fashion-mnist" not in str(error.value)


def test_half_a_download_is_reported_not_skipped(tmp_path):
    make_fashion_mnist(tmp_path, 3)
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError, match="holds train-images-idx3-ubyte.gz but not train-labels-idx1-ubyte"):
        load_dataset("fashion-mnist", "train", tmp_path)


def test_lookup_order_data_dir_alone_else_env_then_system(tmp_path, monkeypatch):
    explicit, env, system, empty = tmp_path / "explicit", tmp_path / "env", tmp_path / "system-fashion-mnist", tmp_path / "empty"
    make_fashion_mnist(explicit, 3)  # files directly in data_dir
    make_fashion_mnist(env / "fashion-mnist", 5)  # in the env root's dataset folder
    make_fashion_mnist(system, 7)
    empty.mkdir()
    assert len(load_dataset("fashion-mnist", "train")) == 7  # nothing configured: the system copy
    monkeypatch.setenv(DATA_DIR_ENV, str(env))
    assert len(load_dataset("fashion-mnist", "train")) == 5  # env beats system
    assert len(load_dataset("fashion-mnist", "train", explicit)) == 3  # data_dir beats env
    with pytest.raises(UserError, match="not found"):  # an explicit data_dir is authoritative: no silent fallback
        load_dataset("fashion-mnist", "train", empty)
    make_fashion_mnist(empty / "fashion-mnist", 4)
    assert len(load_dataset("fashion-mnist", "train", str(empty))) == 4  # data_dir/fashion-mnist counts as data_dir


@pytest.mark.skipif(not (REAL_FASHION_MNIST / "train-images-idx3-ubyte.gz").exists(), reason="Debian dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    train = load_dataset("fashion-mnist", "train", REAL_FASHION_MNIST)
    test = load_dataset("fashion-mnist", "test", REAL_FASHION_MNIST)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.images.is_contiguous()
    assert torch.bincount(train.labels, minlength=10).tolist() == [6000] * 10
    assert torch.bincount(test.labels, minlength=10).tolist() == [1000] * 10
    assert 60 < train.images.float().mean() < 90  # pixel mean of Fashion-MNIST is 72.9: the bytes are images, not noise


# ---------------------------------------------------------------- CIFAR


def py2_pickle(obj) -> bytes:
    """Pickle ``obj`` the way Python 2 + numpy 1.x wrote the official CIFAR batches.

    Protocol 2, str as BINSTRING (comes back as bytes under encoding="bytes"), arrays via the legacy globals
    numpy.core.multiarray._reconstruct / numpy.ndarray / numpy.dtype. Python 3's pickler cannot produce this
    (it wraps bytes in _codecs.encode for protocol 2), so the opcodes are written by hand.
    """

    def string(b):
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b

    def integer(n):
        return b"J" + struct.pack("<i", n)

    def value(v):
        if isinstance(v, bytes):
            return string(v)
        if isinstance(v, int):
            return integer(v)
        if isinstance(v, list):
            return b"](" + b"".join(value(x) for x in v) + b"e"
        if isinstance(v, dict):
            return b"}(" + b"".join(value(k) + value(x) for k, x in v.items()) + b"u"
        assert isinstance(v, np.ndarray) and v.dtype == np.uint8
        out = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + integer(0) + b"\x85" + string(b"b") + b"\x87R"
        out += b"(" + integer(1) + b"(" + b"".join(integer(d) for d in v.shape) + b"t"
        out += b"cnumpy\ndtype\n" + string(b"u1") + integer(0) + integer(1) + b"\x87R"
        out += b"(" + integer(3) + string(b"|") + b"NNN" + integer(-1) + integer(-1) + integer(0) + b"tb"
        return out + b"\x89" + string(v.tobytes()) + b"tb"

    return b"\x80\x02" + value(obj) + b"."


def make_cifar10(root: Path, per_batch: int = 20) -> dict:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    made = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": name.encode(), b"labels": [int(x) for x in rng.integers(0, 10, per_batch)],
                 b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8), b"filenames": [b"x.png"] * per_batch}
        (folder / name).write_bytes(py2_pickle(batch))
        made[name] = batch
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    (folder / "batches.meta").write_bytes(py2_pickle({b"label_names": names, b"num_cases_per_batch": per_batch, b"num_vis": 3072}))
    return made


def test_cifar10_official_format(tmp_path):
    made = make_cifar10(tmp_path)
    train = load_dataset("cifar10", "train", tmp_path)  # found in data_dir/cifar-10-batches-py
    assert train.name == "cifar10/train" and train.images.shape == (100, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.classes[0] == "airplane" and train.classes[9] == "truck"
    assert train.labels.tolist() == sum((made[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    row = made["data_batch_2"][b"data"][3]  # image 20 + 3: rows are R plane, G plane, B plane, each row-major
    image = train.images[23].numpy()
    assert image[0, 0, 0] == row[0] and image[1, 0, 0] == row[1024] and image[2, 31, 31] == row[3071] and image[0, 1, 2] == row[34]
    test = load_dataset("cifar10", "test", tmp_path / "cifar-10-batches-py")
    assert len(test) == 20 and test.labels.tolist() == made["test_batch"][b"labels"]


def test_cifar100_uses_fine_labels_and_modern_pickles(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    fine = {}
    for split, n in (("train", 20), ("test", 10)):
        fine[split] = rng.integers(0, 100, n).tolist()
        batch = {b"filenames": [b"x.png"] * n, b"batch_label": split.encode(), b"fine_labels": fine[split],
                 b"coarse_labels": [0] * n, b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
        (folder / split).write_bytes(pickle.dumps(batch, protocol=5))  # numpy 2 globals, protocol-5 _frombuffer
    meta = {b"fine_label_names": [f"class{i}".encode() for i in range(100)], b"coarse_label_names": [b"c"] * 20}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=4))
    train = load_dataset("cifar100", "train", tmp_path)
    test = load_dataset("cifar100", "test", tmp_path)
    assert train.images.shape == (20, 3, 32, 32) and len(train.classes) == 100 and train.classes[42] == "class42"
    assert train.labels.tolist() == fine["train"] and test.labels.tolist() == fine["test"]


def test_cifar_found_through_env_var(tmp_path, monkeypatch):
    make_cifar10(tmp_path / "root")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "root"))
    assert len(load_dataset("cifar10", "test")) == 20


def test_cifar_missing_says_how_to_get_it(tmp_path):
    with pytest.raises(UserError, match="nocollapse download cifar10 --to DIR"):
        load_dataset("cifar10", "train", tmp_path)


def test_truncated_cifar_pickle_is_a_user_error_naming_the_file(tmp_path):
    make_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:5000])
    with pytest.raises(UserError, match="data_batch_3 is not a readable CIFAR pickle"):
        load_dataset("cifar10", "train", tmp_path)


class Payload:
    """Unpickling this runs a shell command; a safe loader must refuse before calling it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    make_cifar10(tmp_path)
    marker = tmp_path / "payload-ran"
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(pickle.dumps({b"data": Payload(marker), b"labels": []}, protocol=4))
    with pytest.raises(UserError, match=r"refusing to load .*data_batch_1.*(posix|os)\.system"):
        load_dataset("cifar10", "train", tmp_path)
    for protocol in (0, 5):  # text GLOBAL and binary STACK_GLOBAL opcodes alike
        (tmp_path / "evil").write_bytes(pickle.dumps([Payload(marker)], protocol=protocol))
        with pytest.raises(UserError, match="refusing"):
            load_pickle(tmp_path / "evil")
    assert not marker.exists()


@pytest.mark.parametrize(
    "batch, message",
    [
        ({b"data": np.zeros((20, 3071), np.uint8), b"labels": [0] * 20}, r"shape \(n, 3072\)"),
        ({b"data": np.zeros((20, 3072), np.uint8), b"labels": [0] * 19}, "20 images but 19 labels"),
        ({b"data": np.zeros((20, 3072), np.uint8), b"labels": [10] * 20}, r"labels span 10..10, expected 0..9"),
        ({b"labels": [0] * 20}, "no 'data' entry"),
        ([1, 2, 3], "holds a list"),
    ],
)
def test_bad_cifar_batches_are_refused(tmp_path, batch, message):
    make_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").write_bytes(py2_pickle(batch))
    with pytest.raises(UserError, match=message):
        load_dataset("cifar10", "train", tmp_path)


# ---------------------------------------------------------------- image folders

def save(path: Path, image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def make_folder(root: Path, *, colour: bool) -> None:
    save(root / "train" / "zebra" / "a.png", Image.new("L", (20, 10), 100))
    save(root / "train" / "zebra" / "b.jpg", Image.new("L", (12, 12), 200))
    save(root / "train" / "ant" / "c.bmp", Image.new("L", (9, 30), 0))
    save(root / "test" / "ant" / "d.png", Image.new("RGB" if colour else "L", (16, 16), (255, 0, 0) if colour else 50))
    (root / "train" / "ant" / "notes.txt").write_text("not an image")


@needs_pillow
def test_grayscale_folder_loads_as_one_channel(tmp_path):
    make_folder(tmp_path, colour=False)
    train = load_dataset("image-folder", "train", tmp_path, image_size=8)
    assert train.classes == ["ant", "zebra"] and train.name == "image-folder/train"
    assert train.images.shape == (3, 1, 8, 8) and train.images.dtype == torch.uint8 and len(train) == 3
    held = train.in_memory()  # the decoded cache, read whole
    assert held.shape == (3, 1, 8, 8) and held.dtype == torch.uint8 and held.is_contiguous()
    assert torch.equal(train.images[0:3], held) and torch.equal(train.images[[2, 0]], held[[2, 0]])
    assert train.labels.tolist() == [0, 1, 1]  # ant/c.bmp, zebra/a.png, zebra/b.jpg
    assert train.images[1].unique().tolist() == [100] and train.images[0].unique().tolist() == [0]
    assert load_dataset("image-folder", "test", tmp_path).images.shape == (1, 1, 32, 32)  # default image_size


@needs_pillow
def test_one_colour_image_makes_both_splits_rgb(tmp_path):
    make_folder(tmp_path, colour=True)
    train = load_dataset("image-folder", "train", tmp_path, image_size=8)
    test = load_dataset("image-folder", "test", tmp_path, image_size=8)
    assert train.images.shape == (3, 3, 8, 8) and test.images.shape == (1, 3, 8, 8)  # same channels in both splits
    assert (train.images[1] == 100).all()  # gray repeated over R, G, B
    assert test.images[0, :, 4, 4].tolist() == [255, 0, 0]


@needs_pillow
def test_mapped_images_of_a_folder_index_further_axes_as_a_tensor_does(tmp_path):
    make_folder(tmp_path, colour=True)
    images = load_dataset("image-folder", "train", tmp_path, image_size=8).images
    held = images.load()
    assert images[1, 2].shape == (8, 8)  # channel 2 of image 1, not the rows 1 and 2
    mask = torch.tensor([True, False, True])
    for index in [(1, 2), (0, slice(None), 4, 4), (slice(None), slice(None), 4, 4), (slice(0, 3, 2), 0), ([2, 0], 1),
                  (torch.tensor([2, 2]), slice(None), [0, 7]), (1, slice(None), [0, 1], [2, 3]), (mask, 0), (-1,), (..., 4, 4),
                  (torch.tensor(1), 0, 3), torch.tensor(2)]:
        got, want = images[index], held[index]
        assert got.shape == want.shape and torch.equal(got, want) and got.is_contiguous(), index


@needs_pillow
def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    save(tmp_path / "train" / "a" / "x.png", Image.fromarray(np.full((6, 6), 257 * 128, dtype=np.uint16)))
    assert load_dataset("image-folder", "train", tmp_path, image_size=4).in_memory().unique().tolist() == [128]


@needs_pillow
def test_corrupt_image_is_named(tmp_path):
    make_folder(tmp_path, colour=False)
    (tmp_path / "train" / "zebra" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(UserError, match=r"cannot be read:\n  .*broken\.png: "):
        load_dataset("image-folder", "train", tmp_path)


@needs_pillow
def test_empty_or_missing_folders_are_user_errors(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "test").mkdir()
    with pytest.raises(UserError, match="no images in"):
        load_dataset("image-folder", "train", tmp_path)
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(UserError, match="has no class folders"):
        load_dataset("image-folder", "train", tmp_path / "empty")
    with pytest.raises(UserError, match=r"test holds neither unlabeled/ nor train/; expected DIR/unlabeled/"):
        load_dataset("image-folder", "train", tmp_path / "test")
    with pytest.raises(UserError, match="needs a folder"):
        load_dataset("image-folder", "train")


@needs_pillow
def test_test_split_may_not_invent_classes(tmp_path):
    make_folder(tmp_path, colour=False)
    save(tmp_path / "test" / "unicorn" / "u.png", Image.new("L", (4, 4)))
    with pytest.raises(UserError, match="unicorn is a class that"):
        load_dataset("image-folder", "test", tmp_path)


@needs_pillow
def test_missing_pillow_says_what_to_install(tmp_path, monkeypatch):
    make_folder(tmp_path, colour=False)
    monkeypatch.setitem(sys.modules, "PIL", None)  # makes `from PIL import Image` raise ImportError
    with pytest.raises(UserError, match=r"pip install pillow.*nocollapse\[images\]"):
        load_dataset("image-folder", "train", tmp_path)


# ---------------------------------------------------------------- the container and the registry


def test_dataset_container_checks_itself():
    data = ImageDataset(torch.zeros(2, 1, 3, 3, dtype=torch.uint8), torch.tensor([0, 1]), ["a", "b"], "toy/train")
    assert len(data) == 2 and "toy/train" in repr(data) and "2×1×3×3" in repr(data)
    with pytest.raises(ValueError):
        ImageDataset(torch.zeros(2, 3, 3, dtype=torch.uint8), torch.tensor([0, 1]), ["a"], "bad")
    with pytest.raises(ValueError):
        ImageDataset(torch.zeros(2, 1, 3, 3, dtype=torch.uint8), torch.tensor([0]), ["a"], "bad")


def test_unknown_name_and_split():
    assert DATASETS == ("fashion-mnist", "cifar10", "cifar100", "stl10", "image-folder")
    with pytest.raises(UserError, match="fashion-mnist, cifar10"):
        load_dataset("mnist", "train")
    with pytest.raises(UserError, match="unknown split 'val'; choose one of unlabeled, train, test"):
        load_dataset("fashion-mnist", "val")
