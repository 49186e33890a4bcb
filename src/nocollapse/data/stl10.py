"""STL-10 (Coates, Lee and Ng, 2011): 96×96 colour images of 10 classes, from the official binary files.

5 000 labelled training images, 8 000 test images and 100 000 unlabelled ones (2.8 GB) for pretraining. The
images are never decoded or loaded whole: each ``*_X.bin`` is raw uint8 pixels, one image after another, so
it is mapped as it lies (:class:`~nocollapse.data.mapped.MappedImages`) and a batch reads only its own rows.
Each image is stored channel by channel (red, green, blue), each channel column-major — the files were written
from MATLAB — hence layout "CWH"; rows come back row-major (B, 3, 96, 96) like every other reader's.
``*_y.bin`` holds one byte per image, the class 1..10; labels are returned 0-based.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from nocollapse.data.dataset import ImageDataset, candidate_dirs, describe_search
from nocollapse.data.mapped import MappedImages
from nocollapse.errors import UserError

FOLDER = "stl10_binary"  # the folder the official archive extracts to
ARCHIVE = "stl10_binary.tar.gz"
SPLITS = ("train", "test", "unlabeled")
# (images, labels) per split; the unlabelled split has no labels file.
FILES: dict[str, tuple[str, str | None]] = {
    "train": ("train_X.bin", "train_y.bin"),
    "test": ("test_X.bin", "test_y.bin"),
    "unlabeled": ("unlabeled_X.bin", None),
}
IMAGE_SHAPE = (3, 96, 96)  # (C, H, W)
IMAGE_BYTES = 3 * 96 * 96  # 27 648: one image, no header and no padding between images
NAMES_FILE = "class_names.txt"
# The official class_names.txt, in label order. Used when that file is absent: the labels' meaning is fixed by
# the dataset, not by the file, so a folder holding only the .bin files (copied by hand) still loads.
CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def _replace_hint(directory: Path) -> str:
    """How to get a good copy of a bad file in ``directory``: the download re-extracts over it."""
    root = directory.parent if directory.name == FOLDER else Path("DIR")
    return (f"replace it with the official file: `nocollapse download stl10 --to {root}` verifies the official "
            f"archive (downloading it only if it is not already there) and extracts it again into {root / FOLDER}")


def find_stl10(split: str, data_dir: str | os.PathLike | None = None) -> Path:
    """The directory holding the ``split`` files, from the first that holds them all.

    Search order: ``data_dir`` and ``data_dir/stl10_binary`` when given (nothing else then); otherwise
    ``$NOCOLLAPSE_DATA_DIR`` and its ``stl10_binary/``. A directory with the images of a labelled split but
    not its labels (or the reverse) is an error rather than skipped, since that is a half-finished extraction.
    """
    if split not in SPLITS:
        raise UserError(f"unknown STL-10 split {split!r}; choose one of {', '.join(SPLITS)}")
    needed = [f for f in FILES[split] if f is not None]
    searched = candidate_dirs(data_dir, FOLDER)
    for directory, _ in searched:
        present = [(directory / f).is_file() for f in needed]
        if all(present):
            return directory
        if any(present):
            missing = [f for f, ok in zip(needed, present) if not ok]
            raise UserError(f"{directory} is an incomplete STL-10 folder: it has {needed[present.index(True)]} but not "
                            f"{', '.join(missing)}; {_replace_hint(directory)}")
    raise UserError(
        f"STL-10 ({split} split) not found: looked for {' and '.join(needed)} in\n"
        f"{describe_search(searched, data_dir)}\n"
        "Get it with one of:\n"
        "  nocollapse download stl10 --to DIR      (the official 2.6 GB archive, SHA-256-checked and extracted)\n"
        f"  download http://ai.stanford.edu/~acoates/stl10/{ARCHIVE} and extract it into DIR\n"
        "then pass --data-dir DIR (data.data_dir=DIR) or set NOCOLLAPSE_DATA_DIR=DIR"
    )


def _map_images(path: Path) -> MappedImages:
    """The images of one ``*_X.bin``, mapped; its size must be a whole, non-zero number of images."""
    size = path.stat().st_size
    if size % IMAGE_BYTES:
        raise UserError(f"{path} is {size:,} bytes, not a multiple of {IMAGE_BYTES:,} (one 3×96×96 image): the file is "
                        f"truncated, by an interrupted download or extraction; {_replace_hint(path.parent)}")
    if size == 0:
        raise UserError(f"{path} is empty: no official STL-10 split is; {_replace_hint(path.parent)}")
    return MappedImages(path, offset=0, shape=(size // IMAGE_BYTES, *IMAGE_SHAPE), layout="CWH")


def _read_labels(path: Path, count: int, images_path: Path) -> torch.Tensor:
    """(count,) int64 labels 0..9 from one byte per image holding 1..10."""
    labels = np.fromfile(path, dtype=np.uint8)  # 5 000 or 8 000 bytes: read whole
    if labels.shape[0] != count:
        raise UserError(f"{images_path} holds {count:,} images but {path} holds {labels.shape[0]:,} labels; the two files "
                        f"come from different splits or one is truncated; {_replace_hint(path.parent)}")
    bad = (labels < 1) | (labels > len(CLASSES))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise UserError(f"{path} has label {int(labels[first])} at image {first} ({int(bad.sum())} labels out of range); "
                        f"STL-10 labels are 1..{len(CLASSES)}, one byte per image. Wrong file? {_replace_hint(path.parent)}")
    return torch.from_numpy(labels.astype(np.int64) - 1)


def _read_names(directory: Path) -> list[str]:
    """The class names of ``directory/class_names.txt`` (one per line), or the official ones when it is absent."""
    path = directory / NAMES_FILE
    if not path.is_file():
        return list(CLASSES)
    names = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    if len(names) != len(CLASSES):
        raise UserError(f"{path} lists {len(names)} class names, STL-10 has {len(CLASSES)} (one per line); "
                        f"delete the file to use the official names, or {_replace_hint(directory)}")
    return names


def load_stl10(split: str, data_dir: str | os.PathLike | None = None) -> ImageDataset:
    """STL-10 ``split`` ("train" 5 000, "test" 8 000, "unlabeled" 100 000) as mapped (N, 3, 96, 96) uint8 images.

    Labels are 0..9 with the class names of ``class_names.txt`` (the official names when it is absent); the
    unlabelled split has ``labels=None`` and no classes. Any whole number of images is accepted, so cut-down
    copies load too. Raises UserError naming the file and the fix when files are missing, truncated or bad.
    """
    directory = find_stl10(split, data_dir)
    images_name, labels_name = FILES[split]
    images = _map_images(directory / images_name)
    if labels_name is None:
        return ImageDataset(images=images, labels=None, classes=[], name=f"stl10/{split}")
    labels = _read_labels(directory / labels_name, len(images), images.path)
    return ImageDataset(images=images, labels=labels, classes=_read_names(directory), name=f"stl10/{split}")
