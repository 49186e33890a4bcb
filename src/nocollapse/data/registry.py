"""Datasets by name: :func:`load_dataset` is the one entry point the training loop uses."""

from __future__ import annotations

import os
from collections.abc import Callable

from nocollapse.data.cifar import load_cifar
from nocollapse.data.dataset import ImageDataset
from nocollapse.data.fashion_mnist import load_fashion_mnist
from nocollapse.data.folder import folder_splits, load_image_folder
from nocollapse.data.stl10 import load_stl10
from nocollapse.errors import UserError

DATASETS = ("fashion-mnist", "cifar10", "cifar100", "stl10", "image-folder")
SPLITS = ("unlabeled", "train", "test")
NATIVE_SIZE = {"fashion-mnist": 28, "cifar10": 32, "cifar100": 32, "stl10": 96}  # image-folder: data.image_size (default 32)
DEFAULT_FOLDER_SIZE = 32


def dataset_splits(name: str, data_dir: str | os.PathLike | None) -> list[str]:
    """The splits dataset ``name`` has (for an image folder: the ones ``data_dir`` holds), in SPLITS order."""
    if name == "image-folder":
        return folder_splits(data_dir) if data_dir is not None else []
    return ["unlabeled", "train", "test"] if name == "stl10" else ["train", "test"]


def load_dataset(name: str, split: str, data_dir: str | os.PathLike | None = None, *, image_size: int = 0,
                 cache_dir: str | os.PathLike | None = None, skip_unreadable: bool = False, progress: bool = True,
                 log: Callable[[str], object] = print) -> ImageDataset:
    """Load ``split`` (one of SPLITS: "unlabeled" where the dataset has one, "train", or "test", the official
    held-out split) of dataset ``name`` (one of DATASETS).

    ``data_dir`` is searched first, then ``$NOCOLLAPSE_DATA_DIR``, then system copies (Fashion-MNIST from the
    Debian package); for "image-folder" it is required (see :mod:`nocollapse.data.folder` for its layout, its
    decoded cache in ``cache_dir`` and ``skip_unreadable``). ``image_size`` is the square side image-folder
    images are resized to (0: 32); the other datasets keep their native size (NATIVE_SIZE), and another
    value is refused. Raises UserError saying what to do when files are missing or bad.
    """
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if name == "image-folder":
        return load_image_folder(split, data_dir, image_size=image_size or DEFAULT_FOLDER_SIZE, cache_dir=cache_dir,
                                 skip_unreadable=skip_unreadable, progress=progress, log=log)
    if image_size not in (0, NATIVE_SIZE[name]):
        raise UserError(f"data.image_size={image_size}: {name} images are {NATIVE_SIZE[name]} px and are not resized; "
                        "leave data.image_size=0 (resizing applies to image folders)")
    if split not in dataset_splits(name, data_dir):
        raise UserError(f"{name} has no {split!r} split; its splits: {', '.join(dataset_splits(name, data_dir))}")
    if name == "fashion-mnist":
        return load_fashion_mnist(split, data_dir)
    if name == "stl10":
        return load_stl10(split, data_dir)
    return load_cifar(name, split, data_dir)
