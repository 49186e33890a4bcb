"""The MLP heads of every method have the biases of its official code."""

from __future__ import annotations

import pytest
from torch import nn

from nocollapse.config import resolve_config
from nocollapse.methods import build_method

TINY = ["model.widths=8,16", "model.projector_hidden=32", "model.projection_dim=16", "model.predictor_hidden=32"]


def linears(head: nn.Module) -> list[nn.Linear]:
    return [m for m in head.modules() if isinstance(m, nn.Linear)]


# method → (its heads, whether the output linear has a bias): DeepMind's BYOL MLP (hidden with_bias=True, output
# with_bias=False; MSBReg shares BYOL's heads), SFRIK's Projector (output bias=False), W-MSE's get_head (nn.Linear).
HEADS = {
    "byol": (("projector", "predictor"), False),
    "msbreg": (("projector", "predictor"), False),
    "sfrik": (("projector",), False),
    "wmse": (("head",), True),
}


@pytest.mark.parametrize("method", sorted(HEADS))
def test_hidden_linears_have_a_bias_and_the_output_one_follows_the_reference(method: str) -> None:
    overrides = [*TINY, f"method.name={method}"] + (["method.wmse.w_size=32", "optim.batch_size=64"] if method == "wmse" else [])
    built = build_method(resolve_config("fmnist", overrides), in_channels=1)
    names, output_bias = HEADS[method]
    for name in names:
        *hidden, output = linears(getattr(built, name))
        assert hidden and all(layer.bias is not None for layer in hidden), name
        assert (output.bias is not None) is output_bias, name


def test_predictor_hidden_0_is_byol_without_its_predictor() -> None:
    """BYOL's ablation (Table 5): the online projection itself regresses the target's; the claims page trains it."""
    import torch

    method = build_method(resolve_config("fmnist-byol", [*TINY[:-1], "model.predictor_hidden=0"]), in_channels=1)
    assert isinstance(method.predictor, nn.Identity) and not list(method.predictor.parameters())
    views = torch.rand(2, 4, 1, 28, 28)
    projections, predictions, _ = method.branches(views)
    assert torch.equal(projections, predictions)
