"""Loss functions: pure functions of tensors, their formula in the docstring."""

from nocollapse.losses.byol import byol_loss, normalized_mse
from nocollapse.losses.energy import hyperspherical_energy
from nocollapse.losses.kernels import SFRIK_KERNEL, GaussianKernel, GegenbauerKernel, gegenbauer, gegenbauer_all, kernel_uniformity, kernel_uniformity_path
from nocollapse.losses.msbreg import brownian_diffusive_loss, multiview_centroid_loss, singular_value_loss
from nocollapse.losses.uniformity import alignment_loss, info_nce_loss, uniformity_loss
from nocollapse.losses.whitening import WhiteningError, check_whitening_shapes, whiten, whitened_mse

__all__ = [
    "SFRIK_KERNEL", "GaussianKernel", "GegenbauerKernel", "WhiteningError", "alignment_loss", "brownian_diffusive_loss", "byol_loss", "check_whitening_shapes", "gegenbauer", "gegenbauer_all", "hyperspherical_energy", "info_nce_loss", "kernel_uniformity", "kernel_uniformity_path", "multiview_centroid_loss",
    "normalized_mse", "singular_value_loss", "uniformity_loss", "whiten", "whitened_mse",
]
