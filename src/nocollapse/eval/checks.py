"""Input checks shared by the evaluators (kNN, linear probe, geometry): what was wrong and how to fix it.

Problems with the data (shapes, dtypes, labels, non-finite features, too small a test split) are
:class:`~nocollapse.errors.UserError`s; ``who`` names the evaluator in the message ("kNN", "linear probe").
"""

from __future__ import annotations

import torch
from torch import Tensor

from nocollapse.errors import UserError


def check_split(features: Tensor, labels: Tensor | None, split: str, num_classes: int, who: str) -> None:
    """``features`` (N, D) floating point and non-empty; ``labels`` (N,) integer class indices in [0, C)."""
    if features.ndim != 2:
        raise UserError(f"{who}: {split} features must be 2-D (rows, dim), got shape {tuple(features.shape)}; "
                        "flatten images or pooled maps first")
    if not features.dtype.is_floating_point:
        raise UserError(f"{who}: {split} features must be floating point, got {features.dtype}; "
                        "convert uint8 pixels with .float() / 255")
    if features.shape[0] == 0:
        raise UserError(f"{who}: the {split} set is empty")
    check_finite(features, split, who)
    if labels is None:
        return
    if labels.ndim != 1 or labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise UserError(f"{who}: {split} labels must be a 1-D tensor of integer class indices, got shape "
                        f"{tuple(labels.shape)} and dtype {labels.dtype}")
    if labels.shape[0] != features.shape[0]:
        raise UserError(f"{who}: {split} features have {features.shape[0]} rows but {split} labels have "
                        f"{labels.shape[0]}; pass one label per feature row")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise UserError(f"{who}: {split} labels must lie in [0, {num_classes}) for num_classes={num_classes}, "
                        f"found values in [{low}, {high}]; check num_classes or the label encoding")


def check_same_dim(train_features: Tensor, test_features: Tensor, who: str) -> None:
    if train_features.shape[1] != test_features.shape[1]:
        raise UserError(f"{who}: train features have dimension {train_features.shape[1]} but test features have "
                        f"{test_features.shape[1]}; extract both with the same encoder")


def check_finite(features: Tensor, split: str, who: str) -> None:
    """Every row of the (N, D) ``features`` finite: NaN or Inf would silently decide kNN votes and fail an SVD."""
    broken = int((~torch.isfinite(features)).any(dim=1).sum())
    if broken:
        raise UserError(f"{who}: {broken} of {features.shape[0]} {split} feature rows contain NaN or Inf; the network's weights "
                        "or its inputs are not finite (a diverged training run: lower optim.lr or lengthen optim.warmup_epochs)")


def check_geometry_split(features: Tensor, labels: Tensor) -> None:
    """Enough (N, D) ``features`` for every geometry score: two rows (uniformity, std), and two classes of
    which one has two rows (class separability); all finite."""
    sizes = torch.unique(labels, return_counts=True)[1].tolist()
    if features.shape[0] < 2 or len(sizes) < 2 or max(sizes) < 2:
        raise UserError(f"geometry: the test split's {features.shape[0]} image(s) fall in classes of sizes {sizes}; its geometry "
                        "needs two classes and a class with two images (class separability): use a larger test split")
    check_finite(features, "test", "geometry")
