"""Regularizers that attach to any method, by name, with a weight: ``regularizers.NAME=weight``.

Adding one: a small file here with a class following :class:`~.base.Regularizer` (the loss maths
itself lives in ``nocollapse.losses``), a line in :data:`REGULARIZERS`, and its weight (and any
parameter) as a commented field of :class:`~nocollapse.config.RegularizerConfig`, where the help
text lives.
"""

from __future__ import annotations

from collections.abc import Callable

from nocollapse.config import RegularizerConfig
from nocollapse.losses.kernels import GegenbauerKernel
from nocollapse.methods.regularizers.base import INPUTS, Regularizer
from nocollapse.methods.regularizers.brownian import Brownian
from nocollapse.methods.regularizers.energy import HypersphericalEnergy
from nocollapse.methods.regularizers.kernel import KernelUniformity
from nocollapse.methods.regularizers.singular_value import SingularValue
from nocollapse.methods.regularizers.uniformity import Alignment, Contrastive, Uniformity

# name (= its weight's field in RegularizerConfig) → builder from the config section
REGULARIZERS: dict[str, Callable[[RegularizerConfig], Regularizer]] = {
    "singular_value": lambda config: SingularValue(target=config.singular_value_target),
    "brownian": lambda config: Brownian(sigma=config.brownian_sigma),
    "contrastive": lambda config: Contrastive(temperature=config.contrastive_temperature),
    "uniformity": lambda config: Uniformity(t=config.uniformity_t),
    "alignment": lambda config: Alignment(),
    "kernel_uniformity": lambda config: KernelUniformity(GegenbauerKernel(config.kernel_weights)),
    "mhe": lambda config: HypersphericalEnergy(power=config.mhe_power, distance=config.mhe_distance, half_space=config.mhe_half_space),
}


def build_regularizers(config: RegularizerConfig) -> list[tuple[str, float, Regularizer]]:
    """``(name, weight, regularizer)`` for every regularizer whose weight in ``config`` is not 0."""
    return [(name, getattr(config, name), build(config)) for name, build in REGULARIZERS.items() if getattr(config, name) != 0]


__all__ = [
    "INPUTS", "REGULARIZERS", "Alignment", "Brownian", "Contrastive", "HypersphericalEnergy", "KernelUniformity", "Regularizer", "SingularValue",
    "Uniformity", "build_regularizers",
]
