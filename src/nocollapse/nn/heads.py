"""MLP heads: BYOL's projector and predictor, SFRIK's projector, W-MSE's head."""

from __future__ import annotations

from torch import nn


def mlp(input_dim: int, hidden_dim: int, output_dim: int, *, num_layers: int = 2, output_bias: bool = False) -> nn.Sequential:
    """``Linear → BN → ReLU`` repeated ``num_layers − 1`` times, then ``Linear(hidden → output)``.

    With the defaults this is BYOL's projector/predictor ``Linear(D→h) → BN → ReLU → Linear(h→d)``.
    The biases follow the official code of each method:

    - hidden linears always have one, as in all three (DeepMind's BYOL ``hk.Linear(with_bias=True)``,
      SFRIK's VICReg-style ``Projector``, W-MSE's ``get_head``). The BatchNorm after each cancels it, so
      it stays at its initial value, but the heads keep the references' parameters;
    - the output linear has none in BYOL (``with_bias=False``; MSBReg shares BYOL's heads) and SFRIK
      (``bias=False``), one in W-MSE (``nn.Linear``'s default): ``output_bias=True`` there.
    """
    if num_layers < 1:
        raise ValueError(f"an MLP needs at least one layer, got num_layers={num_layers}")
    layers: list[nn.Module] = []
    width = input_dim
    for _ in range(num_layers - 1):
        layers += [nn.Linear(width, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        width = hidden_dim
    layers.append(nn.Linear(width, output_dim, bias=output_bias))
    return nn.Sequential(*layers)
