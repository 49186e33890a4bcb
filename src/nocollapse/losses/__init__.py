"""Loss functions: pure functions of tensors, their formula in the docstring."""

from nocollapse.losses.byol import byol_loss, normalized_mse

__all__ = ["byol_loss", "normalized_mse"]
