"""CIFAR-10 and CIFAR-100 (Krizhevsky, 2009) from the official "python version" pickle batches.

The batches are pickles, and unpickling runs whatever callables a file names. The official files name only
numpy's array constructors, so :func:`load_pickle` refuses every other global: a tampered download fails with
a clear error instead of running code.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nocollapse.data.dataset import ImageDataset, candidate_dirs, describe_search
from nocollapse.errors import UserError


@dataclass(frozen=True)
class CifarSpec:
    """Where one CIFAR variant keeps its files and what they are called."""

    folder: str  # the folder the official archive extracts to
    archive: str  # the official archive's file name
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    label_key: str  # CIFAR-100 batches carry both; we train and evaluate on the 100 fine labels
    names_key: str
    num_classes: int


CIFAR = {
    "cifar10": CifarSpec("cifar-10-batches-py", "cifar-10-python.tar.gz", tuple(f"data_batch_{i}" for i in range(1, 6)),
                         ("test_batch",), "batches.meta", "labels", "label_names", 10),
    "cifar100": CifarSpec("cifar-100-python", "cifar-100-python.tar.gz", ("train",), ("test",), "meta",
                          "fine_labels", "fine_label_names", 100),
}
ROW_BYTES = 3 * 32 * 32  # one image: 1024 red, then 1024 green, then 1024 blue bytes, each 32×32 row-major


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR pickle may name: numpy's array and dtype reconstructors.

    Python-2 era files (the official ones) name ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray`` and
    ``numpy.dtype``; files re-pickled under numpy 2 name ``numpy._core.*`` instead, and protocol 5 uses
    ``_frombuffer``. None of these can run arbitrary code: they build arrays of a dtype from bytes.
    """
    try:  # numpy >= 2
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle asked for a global outside the allow-list."""


class _RestrictedUnpickler(pickle.Unpickler):
    _allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise ForbiddenGlobal(f"{module}.{name}") from None


def load_pickle(path: str | os.PathLike) -> Any:
    """Unpickle a CIFAR file with every global refused except numpy's array reconstructors.

    Strings from the Python 2 pickles come back as bytes (``encoding="bytes"``), as in the official
    Python 3 recipe. Any failure raises UserError naming the file.
    """
    path = Path(path)
    try:
        with path.open("rb") as file:
            return _RestrictedUnpickler(file, encoding="bytes").load()
    except ForbiddenGlobal as error:
        raise UserError(f"refusing to load {path}: it asks to import {error}, which no official CIFAR file does; "
                        "the file was tampered with or is not a CIFAR batch. Delete it and extract the official archive again") from None
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror or error}") from None
    except Exception as error:  # noqa: BLE001 — a corrupt pickle fails in many ways (EOFError, UnpicklingError, ValueError, ...)
        raise UserError(f"{path} is not a readable CIFAR pickle ({type(error).__name__}: {error}); the file is truncated or "
                        "corrupt. Delete the folder and extract the official archive again") from None


def _field(batch: Any, key: str, path: Path) -> Any:
    """``batch[key]`` for bytes keys (official files) or str keys (files re-pickled under Python 3)."""
    if not isinstance(batch, dict):
        raise UserError(f"{path} holds a {type(batch).__name__}, a CIFAR file holds a dict; wrong file?")
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    keys = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in batch)
    raise UserError(f"{path} has no {key!r} entry (it has {keys}); is it a batch of the other CIFAR variant?")


def _read_batch(path: Path, spec: CifarSpec) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 3072) uint8, labels (n,) int64) of one batch file, validated."""
    batch = load_pickle(path)
    data = _field(batch, "data", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != ROW_BYTES:
        got = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise UserError(f"{path}: 'data' must be a uint8 array of shape (n, {ROW_BYTES}) (one 3×32×32 image per row), got {got}")
    if data.shape[0] == 0:  # no official batch is empty: the file was rewritten or cut down
        raise UserError(f"{path} holds no images (its 'data' has 0 rows); the file is corrupt or not an official batch. "
                        "Delete the folder and extract the official archive again")
    try:
        labels = np.asarray(_field(batch, spec.label_key, path))
    except ValueError:
        labels = np.asarray([])  # ragged nested lists: rejected just below
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise UserError(f"{path}: {spec.label_key!r} must be a list of integers")
    if labels.shape[0] != data.shape[0]:
        raise UserError(f"{path} holds {data.shape[0]} images but {labels.shape[0]} labels; the file is corrupt")
    if labels.size and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise UserError(f"{path}: labels span {labels.min()}..{labels.max()}, expected 0..{spec.num_classes - 1}; "
                        "is it a batch of the other CIFAR variant?")
    return data, labels.astype(np.int64)


def _read_names(path: Path, spec: CifarSpec) -> list[str]:
    names = _field(load_pickle(path), spec.names_key, path)
    if not isinstance(names, list) or len(names) != spec.num_classes or not all(isinstance(n, (bytes, str)) for n in names):
        raise UserError(f"{path}: {spec.names_key!r} must list {spec.num_classes} class names")
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names]


def find_cifar(name: str, split: str, data_dir: str | os.PathLike | None = None) -> Path:
    """The directory holding the ``split`` batches and the meta file of ``name`` ("cifar10" or "cifar100").

    Search order: ``data_dir``, ``data_dir/<official folder>``, ``$NOCOLLAPSE_DATA_DIR`` (and its official folder).
    """
    spec = CIFAR[name]
    needed = (*getattr(spec, split), spec.meta)
    searched = candidate_dirs(data_dir, spec.folder)
    for directory, _ in searched:
        present = [(directory / f).is_file() for f in needed]
        if all(present):
            return directory
        # Our batch names are distinctive enough ("data_batch_1", "meta") that a partial set means a broken extraction.
        if any(present) and (directory / spec.meta).is_file():
            missing = [f for f, ok in zip(needed, present) if not ok]
            raise UserError(f"{directory} is an incomplete {name} folder: missing {', '.join(missing)}; extract the official archive again")
    raise UserError(
        f"{name} ({split} split) not found: looked for {', '.join(needed)} in\n"
        f"{describe_search(searched, data_dir)}\n"
        "Get it with one of:\n"
        f"  nocollapse download {name} --to DIR      (the official archive, MD5-checked and extracted)\n"
        f"  download https://www.cs.toronto.edu/~kriz/{spec.archive} and extract it into DIR\n"
        "then pass --data-dir DIR (data.data_dir=DIR) or set NOCOLLAPSE_DATA_DIR=DIR"
    )


def load_cifar(name: str, split: str, data_dir: str | os.PathLike | None = None) -> ImageDataset:
    """Read CIFAR-10 or CIFAR-100 (``name``) ``split`` as (N, 3, 32, 32) uint8 (train 50 000, test 10 000)."""
    spec = CIFAR[name]
    directory = find_cifar(name, split, data_dir)
    batches = [_read_batch(directory / f, spec) for f in getattr(spec, split)]
    classes = _read_names(directory / spec.meta, spec)
    images = np.concatenate([b[0] for b in batches])  # (N, 3072); also copies, so torch owns writable memory
    labels = np.concatenate([b[1] for b in batches])
    return ImageDataset(
        images=torch.from_numpy(images.reshape(-1, 3, 32, 32)),  # channel planes, each row-major: a plain reshape
        labels=torch.from_numpy(labels),
        classes=classes,
        name=f"{name}/{split}",
    )
