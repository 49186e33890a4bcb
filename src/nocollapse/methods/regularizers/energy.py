"""Minimum hyperspherical energy of every conv and linear layer of the online networks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from nocollapse.losses.energy import hyperspherical_energy

LAYERS = (nn.Linear, nn.modules.conv._ConvNd)


@dataclass(frozen=True)
class HypersphericalEnergy:
    """``Σ_layers E(W_layer)``: :func:`~nocollapse.losses.energy.hyperspherical_energy` summed over the
    weights of the online networks' conv and linear layers (layers with one neuron have no pairs and
    are skipped). Biases are not neurons' directions and are left out; the EMA target is never seen,
    since methods pass only their online networks."""

    power: int = 2
    distance: str = "euclidean"
    half_space: bool = False
    consumes: ClassVar[tuple[str, ...]] = ("online",)

    def __call__(self, *, online: nn.Module) -> Tensor:
        weights = [m.weight for m in online.modules() if isinstance(m, LAYERS) and m.weight.shape[0] >= 2]
        if not weights:
            raise ValueError("the hyperspherical energy regularizer found no conv or linear layer with two or more neurons")
        energies = [hyperspherical_energy(w, power=self.power, distance=self.distance, half_space=self.half_space) for w in weights]
        return torch.stack(energies).sum()
