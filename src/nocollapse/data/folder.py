"""Your own images: ``DIR/train/<class>/*.png`` and ``DIR/test/<class>/*.png``, decoded with Pillow.

Every image is decoded once, centre-cropped to a square and resized to ``image_size`` (so aspect ratios are kept,
not squashed), and stored as uint8 like the built-in datasets. Channels: 1 (mode "L") when every image of
both splits is grayscale, otherwise 3 (RGB; grayscale images are repeated over the channels, alpha is dropped).
Both splits are inspected so that train and test always agree on the channel count (the encoder is built from
the training set and evaluated on the test set); reading only the other split's headers keeps that cheap.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nocollapse.data.dataset import ImageDataset
from nocollapse.errors import UserError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# Pillow modes that carry no colour; "I" and "I;16*" are 16/32-bit grayscale (16-bit PNGs).
GRAYSCALE_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_LAYOUT = "expected DIR/train/<class>/<image> and DIR/test/<class>/<image> (png, jpg, jpeg, bmp, webp)"


def _import_pillow() -> Any:
    """Pillow is an optional dependency: only this reader needs it."""
    try:
        from PIL import Image
    except ImportError:
        raise UserError("reading an image folder needs Pillow: `pip install pillow` (or `pip install nocollapse[images]`)") from None
    return Image


def class_names(root: str | os.PathLike) -> list[str]:
    """Sorted class folder names under ``root/train`` (hidden folders skipped); they define the labels of both splits."""
    train = Path(root) / "train"
    if not train.is_dir():
        raise UserError(f"{train} is not a folder; {_LAYOUT}")
    names = sorted(p.name for p in train.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise UserError(f"{train} has no class folders; {_LAYOUT}")
    return names


def _list_images(split_dir: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """(file, label) for every image under ``split_dir/<class>/`` (recursively), sorted for a stable order."""
    index = {name: i for i, name in enumerate(classes)}
    found: list[tuple[Path, int]] = []
    for folder in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if folder.name not in index:
            raise UserError(f"{folder} is a class that {split_dir.parent / 'train'} does not have; "
                            "both splits must use the training classes (labels are their sorted order)")
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(folder).parts))
        found += [(path, index[folder.name]) for path in files]
    return found


def _open_error(path: Path, error: Exception) -> UserError:
    return UserError(f"cannot read image {path}: {error}; delete or replace the file")


# Pillow reports undecodable files as OSError (UnidentifiedImageError), SyntaxError or ValueError.
def _pillow_errors(Image: Any) -> tuple[type[BaseException], ...]:
    return (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _is_grayscale(Image: Any, path: Path) -> bool:
    """Whether the image has no colour, from its header alone (no pixel decoding)."""
    try:
        with Image.open(path) as image:
            return image.mode in GRAYSCALE_MODES
    except _pillow_errors(Image) as error:
        raise _open_error(path, error) from None


def _decode(Image: Any, path: Path, image_size: int, mode: str) -> np.ndarray:
    """One image as (S, S) uint8 for ``mode`` "L" or (S, S, 3) for "RGB", centre-cropped and resized to S = image_size."""
    from PIL import ImageOps

    try:
        with Image.open(path) as image:
            image.load()  # decode now, so truncated files fail here, inside the try
            image = ImageOps.exif_transpose(image)  # phone photos store their rotation in EXIF
            if image.mode.startswith("I"):
                # 16/32-bit grayscale (16-bit PNG): scale 0..65535 to 0..255; convert("L") would clip everything above 255
                scaled = np.clip(np.asarray(image, dtype=np.float32) / 257.0 + 0.5, 0, 255).astype(np.uint8)
                image = Image.fromarray(scaled)
            bicubic = getattr(Image, "Resampling", Image).BICUBIC  # Image.Resampling arrived in Pillow 9.1
            image = ImageOps.fit(image.convert(mode), (image_size, image_size), method=bicubic)
            return np.asarray(image, dtype=np.uint8)
    except _pillow_errors(Image) as error:
        raise _open_error(path, error) from None


def load_image_folder(split: str, data_dir: str | os.PathLike | None, *, image_size: int = 32) -> ImageDataset:
    """Read ``data_dir/<split>/<class>/*`` as (N, C, image_size, image_size) uint8; C is 1 or 3 (see module doc).

    Class names are the sorted folder names of ``data_dir/train``; a test folder may lack some classes but
    may not add new ones.
    """
    if data_dir is None:
        raise UserError(f"the image-folder dataset needs a folder: pass --data-dir DIR (data.data_dir=DIR); {_LAYOUT}")
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
        raise UserError(f"image_size must be a positive integer, got {image_size!r}")
    Image = _import_pillow()
    root = Path(os.path.expanduser(os.fspath(data_dir)))
    classes = class_names(root)
    split_dir = root / split
    if not split_dir.is_dir():
        raise UserError(f"{split_dir} is not a folder; {_LAYOUT}")
    files = _list_images(split_dir, classes)
    if not files:
        raise UserError(f"no images in {split_dir}; {_LAYOUT}")
    other_dir = root / ("test" if split == "train" else "train")
    other = _list_images(other_dir, classes) if other_dir.is_dir() else []
    grayscale = all(_is_grayscale(Image, path) for path, _ in files + other)
    if grayscale:
        images = np.stack([_decode(Image, path, image_size, "L") for path, _ in files])[:, None]  # (N, 1, S, S)
    else:
        images = np.stack([_decode(Image, path, image_size, "RGB") for path, _ in files]).transpose(0, 3, 1, 2)  # (N, 3, S, S)
    return ImageDataset(
        images=torch.from_numpy(np.ascontiguousarray(images)),
        labels=torch.tensor([label for _, label in files], dtype=torch.int64),
        classes=classes,
        name=f"image-folder/{split}",
    )
