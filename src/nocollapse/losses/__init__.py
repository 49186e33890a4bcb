"""Loss functions: pure functions of tensors, their formula in the docstring."""

from nocollapse.losses.byol import byol_loss, normalized_mse
from nocollapse.losses.whitening import WhiteningError, check_whitening_shapes, whiten, whitened_mse

__all__ = ["WhiteningError", "byol_loss", "check_whitening_shapes", "normalized_mse", "whiten", "whitened_mse"]
