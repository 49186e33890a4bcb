"""Your own images: ``DIR/unlabeled/**`` (any nesting, no labels) and/or ``DIR/train/<class>/**`` and
``DIR/test/<class>/**`` (labelled, for evaluation), decoded with Pillow.

Every image is decoded once, centre-cropped to a square and resized to ``image_size`` (so aspect ratios are kept,
not squashed), into a uint8 cache on disk (:mod:`nocollapse.data.cache`) that later runs reuse and training
reads row by row, so a collection need not fit in memory. Channels: 1 (mode "L") when every image of every
split is grayscale, otherwise 3 (RGB; grayscale images are repeated over the channels, alpha is dropped).
All splits are inspected so that they always agree on the channel count (the encoder is built from the
pretraining split and evaluated on the others); only their headers are read, and only when a cache is built.

Any Pillow mode loads: palette images take their palette colours, CMYK is converted to RGB, bilevel images
become 0/255, 16/32-bit integer grayscale is scaled from 0..65535, and 32-bit float grayscale ("F", TIFF) is
read as 0..1 when all its values lie in [0, 1] (the usual float-image convention), otherwise as 0..255
(Pillow's). Animated GIFs and multi-page TIFFs give their first frame. Files Pillow cannot read are not skipped
silently, since that would change the dataset unseen: they are all collected and reported in one error, so
that one pass fixes them all, or, with ``skip_unreadable``, left out and listed in ``ImageDataset.skipped``
(the trainer writes them to the run directory and the log).
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nocollapse.data.cache import cached_images, default_cache_dir, file_records, folder_digest
from nocollapse.data.dataset import ImageDataset
from nocollapse.errors import UserError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")
# Pillow modes that carry no colour; "I" and "I;16*" are 16/32-bit grayscale (16-bit PNGs), "F" 32-bit float.
GRAYSCALE_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
FOLDER_SPLITS = ("unlabeled", "train", "test")
MAX_IMAGE_SIZE = 1024  # pixels: larger sides are a mistyped setting (a 1024² RGB image is 3 MB per row of the cache)
_LAYOUT = (f"expected DIR/unlabeled/**/<image> (any nesting, no labels) and/or DIR/train/<class>/<image> with DIR/test/<class>/<image> "
           f"({', '.join(e[1:] for e in EXTENSIONS)})")
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


def _image_files(folder: Path) -> list[Path]:
    """Every image file under ``folder``, recursively, sorted for a stable order. Hidden files and folders are skipped;
    links to folders are followed (collections are often assembled from links), each folder once, so a loop of links
    ends. A folder that cannot be listed is an error: leaving its images out would change the dataset unseen."""
    found: list[Path] = []
    unlisted: list[OSError] = []
    visited: set[tuple[int, int]] = set()
    for directory, subfolders, names in os.walk(folder, onerror=unlisted.append, followlinks=True):
        status = os.stat(directory)
        if (status.st_dev, status.st_ino) in visited:
            subfolders[:] = []
            continue
        visited.add((status.st_dev, status.st_ino))
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))  # sorted: a linked folder gets one path
        # Regular files, and broken links, which are listed so that their failure is reported (never a FIFO: it would block).
        found += [path for name in names if not name.startswith(".") and Path(name).suffix.lower() in EXTENSIONS
                  and ((path := Path(directory, name)).is_file() or path.is_symlink())]
    if unlisted:
        listed = "\n".join(f"  {error.filename}: {error.strerror or error}" for error in unlisted[:_MAX_LISTED])
        raise UserError(f"{len(unlisted)} folder(s) under {folder} cannot be listed:\n{listed}\n"
                        "Make them readable (chmod), or move them out of the folder; their images would be missing otherwise.")
    return sorted(found)


def folder_splits(data_dir: str | os.PathLike) -> list[str]:
    """The splits of FOLDER_SPLITS that ``data_dir`` holds as folders."""
    root = Path(os.path.expanduser(os.fspath(data_dir)))
    return [split for split in FOLDER_SPLITS if (root / split).is_dir()]


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
        found += [(path, index[folder.name]) for path in _image_files(folder)]
    return found


# Pillow reports undecodable files as OSError (UnidentifiedImageError, "image file is truncated"), SyntaxError
# or ValueError (e.g. an unsupported mode conversion); an image over Image.MAX_IMAGE_PIXELS × 2 is a DecompressionBombError.
def _pillow_errors(Image: Any) -> tuple[type[BaseException], ...]:
    return (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _reason(path: Path, error: BaseException) -> str:
    """Why ``path`` could not be read, in words (Pillow's own messages repeat the path or name no cause)."""
    from PIL import Image, UnidentifiedImageError

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


def _unreadable_error(root: Path, unreadable: dict[Path, str], *, skippable: bool) -> UserError:
    """One error naming every unreadable file (the first _MAX_LISTED of them), so one pass fixes them all."""
    paths = sorted(unreadable)
    lines = [f"  {path}: {unreadable[path]}" for path in paths[:_MAX_LISTED]]
    if len(paths) > _MAX_LISTED:
        lines.append(f"  and {len(paths) - _MAX_LISTED} more")
    count = "1 image file" if len(paths) == 1 else f"{len(paths)} image files"
    fix = ("Delete or replace them, or set data.skip_unreadable=true to leave them out (listed in the run directory and the log)"
           if skippable else "None of the images can be read: check the folder (not images, or the wrong folder)")
    return UserError(f"{count} under {root} cannot be read:\n" + "\n".join(lines) + "\n" + fix + ".")


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


def _decoder_settings() -> dict[str, Any]:
    """Pillow's version and the global switches that decide what a file decodes to or whether it decodes at all (a
    truncated file fails only while ImageFile.LOAD_TRUNCATED_IMAGES is off; a large one past Image.MAX_IMAGE_PIXELS).
    They are part of the cache's digest, so that a cache, and the files it found unreadable, is never reused under
    other settings (raising MAX_IMAGE_PIXELS as the error advises, then loading again, decodes again)."""
    import PIL
    from PIL import Image, ImageFile

    return {"pillow": PIL.__version__, "load_truncated_images": bool(ImageFile.LOAD_TRUNCATED_IMAGES),
            "max_image_pixels": Image.MAX_IMAGE_PIXELS}


def _decode_with(settings: dict[str, Any], path: Path, image_size: int, mode: str) -> np.ndarray:
    """:func:`_decode` under the caller's Pillow ``settings`` (:func:`_decoder_settings`): a decoding process that was
    spawned rather than forked starts from Pillow's defaults, not from what the caller set."""
    from PIL import Image, ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = settings["load_truncated_images"]
    Image.MAX_IMAGE_PIXELS = settings["max_image_pixels"]
    return _decode(path, image_size, mode)


def _decode(path: Path, image_size: int, mode: str) -> np.ndarray:
    """The file at ``path`` decoded by :func:`fit_image`. Raises Pillow's errors (see :func:`_pillow_errors`); the cache's
    decoding processes collect them per file."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()  # decode now, so truncated files fail here (ImageFile.LOAD_TRUNCATED_IMAGES stays off)
        return fit_image(image, image_size, mode)


def fit_image(image: Any, image_size: int, mode: str) -> np.ndarray:
    """A Pillow image as (S, S) uint8 for ``mode`` "L" or (S, S, 3) for "RGB", turned upright (EXIF), centre-cropped to a
    square and resized to S = ``image_size`` (bicubic): what every image of a folder becomes, for training and embedding."""
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)  # phone photos store their rotation in EXIF
    if image.mode == "F" or image.mode.startswith("I"):
        image = _to_grayscale_uint8(Image, image)
    elif image.mode in ("P", "PA"):
        # Through RGBA: the palette's colours, and transparency (bytes in PNG) without Pillow's warning
        image = image.convert("RGBA")
    bicubic = getattr(Image, "Resampling", Image).BICUBIC  # Image.Resampling arrived in Pillow 9.1
    image = ImageOps.fit(image.convert(mode), (image_size, image_size), method=bicubic)
    return np.asarray(image, dtype=np.uint8)


def load_image_folder(split: str, data_dir: str | os.PathLike | None, *, image_size: int = 32, cache_dir: str | os.PathLike | None = None,
                      skip_unreadable: bool = False, progress: bool = True, log: Any = print) -> ImageDataset:
    """Read ``data_dir/<split>`` (FOLDER_SPLITS) as (N, C, image_size, image_size) uint8 images from its cache
    (built in ``cache_dir``, default :func:`~nocollapse.data.cache.default_cache_dir`, when missing or stale);
    C is 1 or 3 (see the module doc).

    ``unlabeled`` has no labels; ``train`` and ``test`` are labelled by the sorted class folder names of
    ``data_dir/train`` (a test folder may lack some classes but may not add new ones). Unreadable files raise
    one UserError that lists them all, or with ``skip_unreadable`` are left out and listed in ``skipped``.
    """
    if data_dir is None:
        raise UserError(f"the image-folder dataset needs a folder: pass --data-dir DIR (data.data_dir=DIR); {_LAYOUT}")
    if not isinstance(image_size, int) or isinstance(image_size, bool) or not 1 <= image_size <= MAX_IMAGE_SIZE:
        raise UserError(f"data.image_size={image_size!r}: must be an integer from 1 to {MAX_IMAGE_SIZE} (pixels per side)")
    if split not in FOLDER_SPLITS:
        raise UserError(f"unknown split {split!r} of an image folder; choose one of {', '.join(FOLDER_SPLITS)}")
    _import_pillow()
    root = Path(os.path.expanduser(os.fspath(data_dir)))
    if not root.is_dir():
        raise UserError(f"{root} is not a folder; {_LAYOUT}")
    present = folder_splits(root)
    if "test" in present and "train" not in present:
        raise UserError(f"{root} has test/ but no train/: the labelled splits go together (the kNN bank and the linear probe "
                        "fit on train/ and score on test/); add train/<class>/ or remove test/")
    if not present:
        raise UserError(f"{root} holds neither unlabeled/ nor train/; {_LAYOUT}")
    if split not in present:
        raise UserError(f"{root / split} is not a folder; {_LAYOUT}")
    classes = class_names(root) if "train" in present else []
    listed = {name: ([(path, None) for path in _image_files(root / name)] if name == "unlabeled" else _list_images(root / name, classes))
              for name in present}
    if not listed[split]:
        raise UserError(f"no images in {root / split} (hidden files and other extensions are ignored); {_LAYOUT}")
    records = {name: file_records(root, [path for path, _ in entries]) for name, entries in listed.items()}
    files = [path for path, _ in listed[split]]

    def choose_mode() -> str:
        from PIL import Image

        modes = []
        for entries in listed.values():
            for path, _ in entries:
                try:
                    modes.append(_mode(Image, path))
                except _pillow_errors(Image):
                    pass  # its decode fails too, and is reported there
        return "L" if all(m in GRAYSCALE_MODES for m in modes) else "RGB"

    from PIL import Image

    settings = _decoder_settings()
    images, rows, unreadable = cached_images(
        root, split, files, records[split], digest=folder_digest(records, settings), image_size=image_size, choose_mode=choose_mode,
        cache_dir=Path(cache_dir).expanduser() if cache_dir else default_cache_dir(), decode=partial(_decode_with, settings), reason=_reason,
        errors=_pillow_errors(Image), progress=progress, log=log)
    if unreadable and not (skip_unreadable and rows):
        raise _unreadable_error(root, {root / path: why for path, why in unreadable.items()}, skippable=bool(rows))
    labels = None if split == "unlabeled" else torch.tensor([listed[split][row][1] for row in rows], dtype=torch.int64)
    return ImageDataset(images=images, labels=labels, classes=[] if split == "unlabeled" else classes, name=f"image-folder/{split}",
                        skipped=[(str(root / path), why) for path, why in sorted(unreadable.items())])
