"""Input checks shared by the kNN and linear-probe evaluators: what was wrong and how to fix it.

Problems with the data (shapes, dtypes, labels) are :class:`~nocollapse.errors.UserError`s; ``who``
names the evaluator in the message ("kNN", "linear probe").
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
