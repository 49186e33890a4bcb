"""Shared fixtures: a tiny generated Fashion-MNIST and the settings of a seconds-long training run."""

from pathlib import Path

import numpy as np
import pytest

from nocollapse.data import write_idx

# Small enough that a whole train + evaluate run takes a few seconds on 2 CPU cores.
TINY_RUN = [
    "regularizers.uniformity=0",  # plain BYOL: the default preset adds the uniformity loss, whose own tests are in test_regularizers.py
    "run.amp=false",  # float32 on every machine: the suite's figures must not depend on the CPU it runs on (tests/test_amp.py runs bf16)
    "model.widths=8,16",
    "model.projector_hidden=32",
    "model.projection_dim=16",
    "model.predictor_hidden=32",
    "optim.batch_size=32",
    "optim.epochs=2",
    "optim.warmup_epochs=0.5",
    "eval.knn_k=5,20",
    "eval.probe_epochs=3",
    "eval.probe_min_steps=0",  # 3 epochs of one step: the tiny runs test the plumbing, not the probe's convergence
    "eval.monitor_train_samples=0",
    "run.log_every=2",
]


def write_tiny_fashion_mnist(directory: Path, train: int = 128, test: int = 64, seed: int = 0) -> Path:
    """IDX files of 28×28 images whose class sets the position of a bright bar (learnable, not trivial)."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train), ("t10k", test)):
        labels = rng.integers(0, 10, size=count).astype(np.uint8)
        images = rng.integers(0, 60, size=(count, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            images[i, 2 + 2 * label : 5 + 2 * label, 4:24] = 255
        write_idx(directory / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(directory / f"{split}-labels-idx1-ubyte.gz", labels)
    return directory


def write_random_photos(folder: Path, count: int = 40, side: int = 20, seed: int = 0) -> Path:
    """``folder/unlabeled/<i>.png``: ``count`` random RGB images of ``side`` px, an unlabelled image folder (needs Pillow)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (folder / "unlabeled").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(folder / "unlabeled" / f"{i}.png")
    return folder


def write_labelled_folder(root: Path, side: int = 20) -> Path:
    """``root/train|test/<class>/*.png``: RGB images whose class sets the colour of a square (learnable)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    colours = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
    for split, count in (("train", 12), ("test", 6)):
        for name, colour in colours.items():
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 80, (side, side, 3), dtype=np.uint8)
                pixels[4:16, 4:16] = colour
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    return write_tiny_fashion_mnist(tmp_path / "data")


@pytest.fixture(autouse=True)
def image_cache(tmp_path_factory, monkeypatch) -> Path:
    """Each test decodes image folders into a cache of its own, never the user's ~/.cache."""
    directory = tmp_path_factory.mktemp("image-cache")
    monkeypatch.setenv("NOCOLLAPSE_CACHE_DIR", str(directory))
    return directory
