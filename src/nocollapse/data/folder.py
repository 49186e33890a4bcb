"""Your own images: ``DIR/train/<class>/*.png`` and ``DIR/test/<class>/*.png``, decoded with Pillow.

Every image is decoded once, centre-cropped to a square and resized to ``image_size`` (so aspect ratios are kept,
not squashed), and stored as uint8 like the built-in datasets. Channels: 1 (mode "L") when every image of
both splits is grayscale, otherwise 3 (RGB; grayscale images are repeated over the channels, alpha is dropped).
Both splits are inspected so that train and test always agree on the channel count (the encoder is built from
the training set and evaluated on the test set); reading only the other split's headers keeps that cheap.

Any Pillow mode loads: palette images take their palette colours, CMYK is converted to RGB, bilevel images
become 0/255, 16/32-bit integer grayscale is scaled from 0..65535, and 32-bit float grayscale ("F", TIFF) is
read as 0..1 when all its values lie in [0, 1] (the usual float-image convention), otherwise as 0..255
(Pillow's). Animated GIFs and multi-page TIFFs give their first frame. Files Pillow cannot read are never
skipped, since that would silently change the dataset: they are all collected and reported in one error, so
that one pass fixes them all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nocollapse.data.dataset import ImageDataset
from nocollapse.errors import UserError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")
# Pillow modes that carry no colour; "I" and "I;16*" are 16/32-bit grayscale (16-bit PNGs), "F" 32-bit float.
GRAYSCALE_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_LAYOUT = f"expected DIR/train/<class>/<image> and DIR/test/<class>/<image> ({', '.join(e[1:] for e in EXTENSIONS)})"
_MAX_LISTED = 10  # unreadable files named in the error; the rest are counted


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
    """(file, label) for every image under ``split_dir/<class>/`` (recursively), sorted for a stable order.

    Labels are indices into ``classes`` by construction, so they are always in range. Broken symbolic links
    are listed too (``is_symlink``): they fail to open and are reported instead of silently dropped.
    """
    index = {name: i for i, name in enumerate(classes)}
    found: list[tuple[Path, int]] = []
    for folder in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if folder.name not in index:
            raise UserError(f"{folder} is a class that {split_dir.parent / 'train'} does not have; "
                            "both splits must use the training classes (labels are their sorted order)")
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS and (p.is_file() or p.is_symlink())
                       and not any(part.startswith(".") for part in p.relative_to(folder).parts))
        found += [(path, index[folder.name]) for path in files]
    return found


# Pillow reports undecodable files as OSError (UnidentifiedImageError, "image file is truncated"), SyntaxError
# or ValueError (e.g. an unsupported mode conversion); an image over Image.MAX_IMAGE_PIXELS × 2 is a DecompressionBombError.
def _pillow_errors(Image: Any) -> tuple[type[BaseException], ...]:
    return (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _reason(Image: Any, path: Path, error: BaseException) -> str:
    """Why ``path`` could not be read, in words (Pillow's own messages repeat the path or name no cause)."""
    from PIL import UnidentifiedImageError

    if isinstance(error, Image.DecompressionBombError):
        return (f"{error} Downscale the image, or if you trust the file raise PIL.Image.MAX_IMAGE_PIXELS before loading "
                f"(now {Image.MAX_IMAGE_PIXELS}; Pillow refuses images of more than twice that)")
    if isinstance(error, UnidentifiedImageError):
        try:
            empty = path.stat().st_size == 0
        except OSError:
            empty = False
        return "empty file (0 bytes)" if empty else "not an image file Pillow can read (wrong extension, or corrupt)"
    if isinstance(error, OSError) and error.strerror:  # PermissionError, FileNotFoundError (a broken link), ...
        return error.strerror
    return str(error) or type(error).__name__


def _unreadable_error(root: Path, unreadable: dict[Path, str]) -> UserError:
    """One error naming every unreadable file (the first _MAX_LISTED of them), so one pass fixes them all."""
    paths = sorted(unreadable)
    lines = [f"  {path}: {unreadable[path]}" for path in paths[:_MAX_LISTED]]
    if len(paths) > _MAX_LISTED:
        lines.append(f"  and {len(paths) - _MAX_LISTED} more")
    count = "1 image file" if len(paths) == 1 else f"{len(paths)} image files"
    return UserError(f"{count} under {root} cannot be read:\n" + "\n".join(lines) + "\n"
                     "Delete or replace them (they are not skipped, since that would silently change the dataset).")


def _mode(Image: Any, path: Path) -> str:
    """The image's Pillow mode, from its header alone (no pixel decoding)."""
    with Image.open(path) as image:
        return image.mode


def _to_grayscale_uint8(Image: Any, image: Any) -> Any:
    """A mode "L" copy of a high-depth grayscale image; convert("L") would clip every value above 255."""
    if image.mode == "F":
        pixels = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0)
        in_unit_range = pixels.size > 0 and pixels.min() >= 0.0 and pixels.max() <= 1.0
        scaled = pixels * 255.0 if in_unit_range else pixels
    else:  # "I", "I;16*": integer grayscale (16-bit PNG, TIFF), read as 0..65535
        scaled = np.asarray(image, dtype=np.float32) / 257.0
    return Image.fromarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8))


def _decode(Image: Any, path: Path, image_size: int, mode: str) -> np.ndarray:
    """One image as (S, S) uint8 for ``mode`` "L" or (S, S, 3) for "RGB", centre-cropped and resized to S = image_size.

    Raises Pillow's errors (see :func:`_pillow_errors`); the caller collects them per file.
    """
    from PIL import ImageOps

    with Image.open(path) as image:
        image.load()  # decode now, so truncated files fail here (ImageFile.LOAD_TRUNCATED_IMAGES stays off)
        image = ImageOps.exif_transpose(image)  # phone photos store their rotation in EXIF
        if image.mode == "F" or image.mode.startswith("I"):
            image = _to_grayscale_uint8(Image, image)
        elif image.mode in ("P", "PA"):
            # Through RGBA: the palette's colours, and transparency (bytes in PNG) without Pillow's warning
            image = image.convert("RGBA")
        bicubic = getattr(Image, "Resampling", Image).BICUBIC  # Image.Resampling arrived in Pillow 9.1
        image = ImageOps.fit(image.convert(mode), (image_size, image_size), method=bicubic)
        return np.asarray(image, dtype=np.uint8)


def load_image_folder(split: str, data_dir: str | os.PathLike | None, *, image_size: int = 32) -> ImageDataset:
    """Read ``data_dir/<split>/<class>/*`` as (N, C, image_size, image_size) uint8; C is 1 or 3 (see module doc).

    Class names are the sorted folder names of ``data_dir/train``; a test folder may lack some classes but
    may not add new ones. Unreadable files (of this split, or whose header fails in the other split) raise
    one UserError that lists them all.
    """
    if data_dir is None:
        raise UserError(f"the image-folder dataset needs a folder: pass --data-dir DIR (data.data_dir=DIR); {_LAYOUT}")
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
        raise UserError(f"image_size must be a positive integer, got {image_size!r}")
    Image = _import_pillow()
    errors = _pillow_errors(Image)
    root = Path(os.path.expanduser(os.fspath(data_dir)))
    classes = class_names(root)
    split_dir = root / split
    if not split_dir.is_dir():
        raise UserError(f"{split_dir} is not a folder; {_LAYOUT}")
    files = _list_images(split_dir, classes)
    if not files:
        raise UserError(f"no images in {split_dir} (hidden files and other extensions are ignored); {_LAYOUT}")
    other_dir = root / ("test" if split == "train" else "train")
    other = _list_images(other_dir, classes) if other_dir.is_dir() else []
    unreadable: dict[Path, str] = {}
    modes: list[str] = []
    for path, _ in files + other:
        try:
            modes.append(_mode(Image, path))
        except errors as error:
            unreadable[path] = _reason(Image, path, error)
    mode = "L" if all(m in GRAYSCALE_MODES for m in modes) else "RGB"
    decoded: list[np.ndarray] = []
    for path, _ in files:
        if path in unreadable:
            continue
        try:
            decoded.append(_decode(Image, path, image_size, mode))
        except errors as error:
            unreadable[path] = _reason(Image, path, error)
    if unreadable:
        raise _unreadable_error(root, unreadable)
    images = np.stack(decoded)
    images = images[:, None] if mode == "L" else images.transpose(0, 3, 1, 2)  # (N, 1, S, S) or (N, 3, S, S)
    return ImageDataset(
        images=torch.from_numpy(np.ascontiguousarray(images)),
        labels=torch.tensor([label for _, label in files], dtype=torch.int64),
        classes=classes,
        name=f"image-folder/{split}",
    )
