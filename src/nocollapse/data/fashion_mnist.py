"""Fashion-MNIST (Xiao et al., 2017): 70 000 grayscale 28×28 images of 10 clothing classes, IDX files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from nocollapse.data.dataset import ImageDataset, candidate_dirs, describe_search, searches_system_dirs
from nocollapse.data.idx import read_idx
from nocollapse.errors import UserError

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
# (images, labels) file names per split, without the .gz that the official files carry.
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Where the Debian/Ubuntu package `dataset-fashion-mnist` installs the files; searched last.
SYSTEM_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)


def _find_file(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):  # official name first; also the extracted copy
        if (directory / name).is_file():
            return directory / name
    return None


def find_fashion_mnist(split: str, data_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """The (images, labels) files of ``split``, from the first directory that holds both.

    Search order: ``data_dir`` and ``data_dir/fashion-mnist`` when given (nothing else then); otherwise
    ``$NOCOLLAPSE_DATA_DIR`` (and its ``fashion-mnist/``), then the Debian package's
    ``/usr/share/datasets/fashion-mnist``. A directory with
    only one of the two files is an error rather than skipped, since that is a half-finished download.
    """
    stems = FILES[split]
    searched = candidate_dirs(data_dir, "fashion-mnist")
    if searches_system_dirs(data_dir):
        searched += [(d, "Debian/Ubuntu package") for d in SYSTEM_DIRS]
    for directory, _ in searched:
        found = [_find_file(directory, stem) for stem in stems]
        if all(found):
            return found[0], found[1]
        if any(found):
            missing = [stem for stem, path in zip(stems, found) if path is None]
            raise UserError(f"{directory} holds {next(p for p in found if p).name} but not {missing[0]}[.gz]: "
                            f"incomplete download; run `nocollapse download fashion-mnist --to {directory}`")
    raise UserError(
        f"Fashion-MNIST ({split} split) not found: looked for {stems[0]}[.gz] and {stems[1]}[.gz] in\n"
        f"{describe_search(searched, data_dir)}\n"
        "Get it with one of:\n"
        "  sudo apt-get install dataset-fashion-mnist      (Debian/Ubuntu; found automatically)\n"
        "  nocollapse download fashion-mnist --to DIR      then pass --data-dir DIR (data.data_dir=DIR) or set NOCOLLAPSE_DATA_DIR=DIR"
    )


def load_fashion_mnist(split: str, data_dir: str | os.PathLike | None = None) -> ImageDataset:
    """Read the Fashion-MNIST ``split`` ("train": 60 000 images, "test": 10 000) as (N, 1, 28, 28) uint8.

    Any IDX image size is accepted (so MNIST-format look-alikes load too); labels must lie in 0..9 (the IDX type
    byte is checked to be unsigned, so negative labels cannot occur), and an empty split is refused.
    """
    images_path, labels_path = find_fashion_mnist(split, data_dir)
    images = read_idx(images_path, ndim=3)  # (N, H, W)
    labels = read_idx(labels_path, ndim=1)  # (N,)
    if 0 in images.shape:  # a valid IDX header may say 0 images (or 0×0 pixels): nothing to train on
        raise UserError(f"{images_path} holds no images (its header says shape {images.shape}); the file is not a real "
                        "Fashion-MNIST split — download it again (`nocollapse download fashion-mnist --to DIR`)")
    if images.shape[0] != labels.shape[0]:
        raise UserError(f"{images_path} holds {images.shape[0]} images but {labels_path} holds {labels.shape[0]} labels; "
                        "the two files come from different splits or downloads — download both again")
    if labels.size and labels.max() >= len(CLASSES):
        raise UserError(f"{labels_path} has label {int(labels.max())}, Fashion-MNIST labels are 0..9; wrong file?")
    return ImageDataset(
        images=torch.from_numpy(images[:, None]).contiguous(),  # (N, 1, H, W)
        labels=torch.from_numpy(labels.astype(np.int64)),
        classes=list(CLASSES),
        name=f"fashion-mnist/{split}",
    )
