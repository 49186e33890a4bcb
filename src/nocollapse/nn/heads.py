"""MLP heads: BYOL's projector and predictor, W-MSE's head."""

from __future__ import annotations

from torch import nn


def mlp(input_dim: int, hidden_dim: int, output_dim: int, *, num_layers: int = 2) -> nn.Sequential:
    """``Linear → BN → ReLU`` repeated ``num_layers − 1`` times, then ``Linear(hidden → output)``.

    With the defaults this is BYOL's projector/predictor and W-MSE's head ``Linear(D→h) → BN → ReLU →
    Linear(h→d)``. Hidden linears carry no bias: the BatchNorm after them makes it redundant.
    """
    if num_layers < 1:
        raise ValueError(f"an MLP needs at least one layer, got num_layers={num_layers}")
    layers: list[nn.Module] = []
    width = input_dim
    for _ in range(num_layers - 1):
        layers += [nn.Linear(width, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        width = hidden_dim
    layers.append(nn.Linear(width, output_dim))
    return nn.Sequential(*layers)
