"""The images of a run, as its settings (``data.*``) name them: one place for the trainer and the evaluation.

A run pretrains on ``data.pretrain_splits`` (default: ``unlabeled`` where the dataset has it, else ``train``).
Its evaluation (the monitor's and the final one) fits the kNN bank and the linear probe on ``train`` and scores
on ``test`` when the dataset has both; without them it measures the geometry of a fixed subset of the
pretraining images (:func:`unlabelled_probe`), which needs no labels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from nocollapse.config import DataConfig
from nocollapse.data import ImageDataset, load_dataset
from nocollapse.data.prefetch import concatenate
from nocollapse.data.registry import dataset_splits
from nocollapse.errors import UserError

UNLABELLED_PROBE_IMAGES = 2048  # pretraining images whose geometry is followed when there is no test split


@dataclass(frozen=True)
class RunData:
    """The pretraining splits (read where they lie: in memory, or from their file) and the labelled evaluation
    splits, held in memory (every evaluation encodes them whole); ``train`` and ``test`` are both set or both None."""

    pretrain: list[ImageDataset]
    train: ImageDataset | None
    test: ImageDataset | None

    @property
    def labelled(self) -> bool:
        return self.test is not None

    @property
    def pretrain_images(self) -> Any:
        """The pretraining splits' images as one source, indexed as if stacked (a tensor when all are in memory)."""
        return concatenate([dataset.images for dataset in self.pretrain])

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """(file, reason) of each file ``data.skip_unreadable`` left out, in any split read."""
        seen = {id(dataset): dataset for dataset in [*self.pretrain, self.train, self.test] if dataset is not None}
        return sorted({entry for dataset in seen.values() for entry in dataset.skipped})


def pretraining_splits(data: DataConfig) -> tuple[str, ...]:
    """``data.pretrain_splits``, or the default: ``unlabeled`` where the dataset has it, else ``train``."""
    available = dataset_splits(data.dataset, data.data_dir)
    splits = data.pretrain_splits or (("unlabeled",) if "unlabeled" in available else ("train",))
    missing = [split for split in splits if split not in available]
    if missing and available:
        raise UserError(f"data.pretrain_splits={','.join(splits)}: {data.dataset} has no {', '.join(missing)} split here; its splits: "
                        f"{', '.join(available)}")
    return tuple(splits)


def load_run_data(data: DataConfig, *, pretrain: bool = True, progress: bool = True, log: Callable[[str], object] = print) -> RunData:
    """The splits of a run with settings ``data`` (the pretraining ones only when ``pretrain``); each split is read once."""
    available = dataset_splits(data.dataset, data.data_dir)
    loaded: dict[str, ImageDataset] = {}

    def load(split: str) -> ImageDataset:
        if split not in loaded:
            loaded[split] = load_dataset(data.dataset, split, data.data_dir, image_size=data.image_size, cache_dir=data.cache_dir,
                                         skip_unreadable=data.skip_unreadable, progress=progress, log=log)
        return loaded[split]

    pretrain_sets = [load(split) for split in pretraining_splits(data)] if pretrain else []
    labelled = "train" in available and "test" in available
    return RunData(pretrain=pretrain_sets, train=held(load("train")) if labelled else None, test=held(load("test")) if labelled else None)


def held(dataset: ImageDataset) -> ImageDataset:
    """``dataset`` with its images in memory."""
    if isinstance(dataset.images, Tensor):
        return dataset
    return ImageDataset(images=dataset.in_memory(), labels=dataset.labels, classes=dataset.classes, name=dataset.name, skipped=dataset.skipped)


def bank_rows(count: int, size: int, seed: int) -> Tensor:
    """Sorted rows of a fixed subset of ``size`` of ``count`` training images, drawn from ``seed`` (all of them when ``size``
    is 0 or at least ``count``): the kNN bank of the monitor (``eval.monitor_train_samples``) and what the final evaluation
    fits on (``eval.train_samples``), the same images when the two sizes agree."""
    if size == 0 or size >= count:
        return torch.arange(count)
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:size].sort().values


def fitting_set(train_set: ImageDataset, size: int, seed: int) -> ImageDataset:
    """The labelled training images the final evaluation fits on (``eval.train_samples``): ``train_set`` itself when
    ``size`` is 0 or covers it, else its :func:`bank_rows`. The evaluation then treats them as the whole split: the
    label fractions and fine-tuning's "100%" are of them."""
    if size == 0 or size >= len(train_set):
        return train_set
    rows = bank_rows(len(train_set), size, seed)
    return ImageDataset(images=train_set.images[rows], labels=train_set.labels[rows], classes=train_set.classes, name=train_set.name)


def unlabelled_probe(images: Any, seed: int) -> Tensor:
    """A fixed subset (drawn from ``seed``) of UNLABELLED_PROBE_IMAGES of ``images``, on the CPU: what the monitor and
    the evaluation measure the geometry of when there is no test split."""
    rows = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:UNLABELLED_PROBE_IMAGES].sort().values
    device = images.device if isinstance(images, Tensor) else "cpu"
    return images[rows.to(device)].cpu()
