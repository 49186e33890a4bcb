"""Minimum hyperspherical energy of a layer's neurons (Liu et al., NeurIPS 2018, arXiv 1805.09298).

Each neuron's weight vector is a point on the unit sphere; their energy is low when they are spread
apart, as charges repel on a sphere. Durrant & Leontidis minimise it layer-wise in BYOL's online
networks to spread the representations (``SPEC.md`` §5).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from nocollapse.losses.precision import float32_loss

POWERS = (0, 1, 2)
DISTANCES = ("euclidean", "angular")


def _pair_energies(cos: Tensor, *, power: int, distance: str, eps: float) -> Tensor:
    """Energy of each pair from its cosine: ``−log d²`` (s = 0), ``(d²)^(−s/2)`` (s = 1, 2)."""
    if distance == "euclidean":
        squared = (2 - 2 * cos).clamp_min(eps)
    else:  # the angle over π; cos is kept off ±1, where arccos' gradient is infinite
        squared = (torch.arccos(cos.clamp(-1 + eps, 1 - eps)) / math.pi).square()
    if power == 0:
        return -squared.log()
    return squared.pow(-power / 2)


def _block_energy(neurons: Tensor, start: int, *, block: int, power: int, distance: str, eps: float) -> Tensor:
    """Sum of the energies between rows ``start…start+block`` and every other row of ``neurons``."""
    cos = neurons[start : start + block] @ neurons.T  # (b, n)
    row = torch.arange(start, start + cos.shape[0], device=cos.device)
    self_pairs = row[:, None] == torch.arange(neurons.shape[0], device=cos.device)[None, :]  # (b, n)
    return _pair_energies(cos, power=power, distance=distance, eps=eps).masked_fill(self_pairs, 0).sum()


@float32_loss
def hyperspherical_energy(weight: Tensor, *, power: int = 2, distance: str = "euclidean", half_space: bool = False,
                          eps: float = 1e-6, block_size: int = 1024) -> Tensor:
    """Mean pairwise energy of the n neurons of one layer's weight.

    Each neuron (a row of the weight reshaped to (n, fan_in): one output channel of a conv or one
    output of a linear layer) is normalised to ``ŵᵢ``; for each pair i ≠ j, ``d²ᵢⱼ = ‖ŵᵢ − ŵⱼ‖² =
    2 − 2 cos θᵢⱼ`` (Euclidean) or ``(θᵢⱼ/π)²`` (angular), and

        ``E = 1/(n(n−1)) Σ_{i≠j} e(dᵢⱼ)``,  ``e = −log d²`` (s = 0), ``1/d`` (s = 1), ``1/d²`` (s = 2).

    The mean over ordered pairs equals the mean over i < j. ``s = 0`` uses ``−log d²`` (``SPEC.md``
    §5), twice the paper's ``log(1/d)``: the same minimiser. ``half_space`` appends the negated
    neurons (2n points), so a neuron and its negative, which define the same hyperplane, count as
    close to each other's neighbours (the paper's half-space MHE). Distances below ``eps`` are
    clamped, so duplicate neurons give a large but finite energy.

    Wide layers are done in blocks of ``block_size`` rows, each recomputed in the backward pass
    (activation checkpointing), so memory is O(block_size · n) instead of O(n²).

    Args:
        weight: (n, ...) a conv or linear weight; n ≥ 2 neurons.
        power: s ∈ {0, 1, 2}.
        distance: ``"euclidean"`` or ``"angular"``.

    Returns:
        A scalar, float32 at least (autocast is off inside: in bf16 the cosines of close neurons round
        to 1, and their energy to the ``eps`` clamp's).
    """
    if power not in POWERS:
        raise ValueError(f"power={power} is not one of {POWERS}")
    if distance not in DISTANCES:
        raise ValueError(f"distance={distance!r} is not one of {DISTANCES}")
    if weight.ndim < 2 or weight.shape[0] < 2:
        raise ValueError(f"hyperspherical_energy wants a weight with n >= 2 neurons along dim 0, got shape {tuple(weight.shape)}")
    neurons = F.normalize(weight.flatten(1), dim=1)  # (n, fan_in)
    if half_space:
        neurons = torch.cat([neurons, -neurons])
    n = neurons.shape[0]
    settings = {"block": block_size, "power": power, "distance": distance, "eps": eps}
    if n <= block_size:
        total = _block_energy(neurons, 0, **settings)
    else:
        total = sum(checkpoint(_block_energy, neurons, start, **settings, use_reentrant=False)
                    for start in range(0, n, block_size))
    return total / (n * (n - 1))
