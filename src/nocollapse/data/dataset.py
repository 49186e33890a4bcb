"""The container every reader returns, and the rule for where readers look for files."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nocollapse.data.mapped import MappedImages

# A data root that holds one folder per dataset (fashion-mnist/, cifar-10-batches-py/, ...).
DATA_DIR_ENV = "NOCOLLAPSE_DATA_DIR"


# eq=False: comparing tensors element-wise inside a generated __eq__ raises; identity is what callers need.
# repr=False: the generated repr would print pixel tensors.
@dataclass(eq=False, repr=False)
class ImageDataset:
    """An image set as uint8 (N, C, H, W), labelled or not.

    ``images`` is a tensor held in memory (Fashion-MNIST 47 MB, CIFAR 150 MB: the training loop moves it to
    the device once and indexes batches there) or a :class:`~nocollapse.data.mapped.MappedImages`, rows of a
    file read on demand (STL-10's 100k unlabelled images, a decoded image folder's cache), which indexes
    the same way: ``images[index]`` is a uint8 tensor of those rows. ``labels`` is None for an unlabelled split.
    """

    images: torch.Tensor | MappedImages  # (N, C, H, W) uint8, CPU; a tensor is contiguous
    labels: torch.Tensor | None  # (N,) int64, values in [0, len(classes)); None: unlabelled
    classes: list[str]  # class names, index = label; empty when unlabelled
    name: str  # "<dataset>/<split>", e.g. "fashion-mnist/train"
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason) of images left out (data.skip_unreadable)

    def __post_init__(self) -> None:
        # Programming errors, not user errors: a reader (or a test) built an inconsistent dataset.
        if len(self.images.shape) != 4 or self.images.dtype != torch.uint8:
            raise ValueError(f"images must be (N, C, H, W) uint8, got {tuple(self.images.shape)} {self.images.dtype}")
        if self.labels is None:
            return
        if self.labels.ndim != 1 or self.labels.dtype != torch.int64:
            raise ValueError(f"labels must be (N,) int64, got {tuple(self.labels.shape)} {self.labels.dtype}")
        if self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(f"{self.images.shape[0]} images but {self.labels.shape[0]} labels")
        # Every reader checks its labels with a message for the user; this catches a reader that forgot to.
        if self.labels.numel() and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise ValueError(f"labels span {int(self.labels.min())}..{int(self.labels.max())}, "
                             f"expected 0..{len(self.classes) - 1} for {len(self.classes)} classes")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    def in_memory(self) -> torch.Tensor:
        """All the images as one uint8 tensor (read whole from the file of mapped images)."""
        return self.images if isinstance(self.images, torch.Tensor) else self.images.load()

    def __repr__(self) -> str:
        shape = "×".join(str(d) for d in self.images.shape)
        where = "" if isinstance(self.images, torch.Tensor) else ", mapped"
        return f"ImageDataset(name={self.name!r}, images={shape} uint8{where}, classes={len(self.classes) if self.labelled else 'none'})"


def candidate_dirs(data_dir: str | os.PathLike | None, subfolder: str) -> list[tuple[Path, str]]:
    """Directories to search for a dataset, in order, each with a note saying where it came from.

    An explicit ``data_dir`` is authoritative: only ``data_dir`` and ``data_dir/subfolder`` are searched,
    so a mistyped path is reported instead of silently replaced by another copy. Without it the order
    is ``$NOCOLLAPSE_DATA_DIR``, ``$NOCOLLAPSE_DATA_DIR/subfolder``, and a reader appends its own
    system locations (see :func:`searches_system_dirs`).
    """
    found: list[tuple[Path, str]] = []
    roots = [(data_dir, "data_dir")] if data_dir is not None else [(os.environ.get(DATA_DIR_ENV) or None, f"${DATA_DIR_ENV}")]
    for root, note in roots:
        if root is None:
            continue
        root = Path(os.path.expanduser(os.fspath(root)))
        found += [(root, note), (root / subfolder, note)]
    return found


def searches_system_dirs(data_dir: str | os.PathLike | None) -> bool:
    """Whether a reader may fall back to system-wide copies: only when no ``data_dir`` was given."""
    return data_dir is None


def describe_search(searched: list[tuple[Path, str]], data_dir: str | os.PathLike | None) -> str:
    """The indented list of places searched, for a "not found" message (says when a source was unset)."""
    lines = [f"  {path}  ({note})" for path, note in searched]
    if data_dir is None:
        lines.insert(0, "  (no data_dir given)")
        if not os.environ.get(DATA_DIR_ENV):
            lines.insert(1, f"  (${DATA_DIR_ENV} not set)")
    return "\n".join(lines)
