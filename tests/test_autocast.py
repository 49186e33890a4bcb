"""Every loss and every regularizer gives its float32 value under bf16 autocast.

The training loop runs the method under bf16 autocast on CUDA; CPU autocast casts the same matrix
products to bf16, so it stands in here. The inputs are the ones bf16 ruins: near-duplicate rows
(cosines within 1e-5 of 1), close neurons, covariances with a large mean. The cases are enumerated
from ``nocollapse.losses.__all__`` and the regularizer registry: a loss or regularizer added later
without :func:`~nocollapse.losses.precision.float32_loss` fails here until it has a case and the guard.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import nocollapse.losses as losses
from nocollapse.config import RegularizerConfig
from nocollapse.losses import SFRIK_KERNEL, GaussianKernel
from nocollapse.methods.regularizers import INPUTS, REGULARIZERS

# Exports that are not losses, and why they need no guard.
NOT_LOSSES = {
    "SFRIK_KERNEL": "a kernel constant, exercised through kernel_uniformity",
    "GaussianKernel": "a kernel class, exercised through kernel_uniformity",
    "GegenbauerKernel": "a kernel class, exercised through kernel_uniformity",
    "WhiteningError": "an exception",
    "check_whitening_shapes": "a check of integers, no tensors",
    "kernel_uniformity_path": "the name of a path, from shapes",
    "gegenbauer": "an elementwise polynomial, the kernels' building block: no matrix product for autocast to cast",
    "gegenbauer_all": "elementwise polynomials, the kernels' building block: no matrix product for autocast to cast",
}

Call = tuple[tuple[Any, ...], dict[str, Any]]


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def near_duplicates(*shape: int, scale: float = 1e-3) -> Tensor:
    """(..., N, d) rows within ``scale`` of one random direction: their cosines are within ~1e-6 of 1."""
    g = _generator()
    return torch.randn(shape[-1], generator=g) + scale * torch.randn(shape, generator=g)


def predictions_near_targets(*shape: int, scale: float = 1e-2) -> tuple[Tensor, Tensor]:
    """(M, N, d) predictions and targets of M views, all within ``scale`` of their image's point (the
    last two dimensions): BYOL's late-training regime, where the loss is a small difference of cosines."""
    g = _generator(1)
    images = torch.randn(shape[-2:], generator=g)
    return images + scale * torch.randn(shape, generator=g), images + scale * torch.randn(shape, generator=g)


def offset_rows(*shape: int) -> Tensor:
    """(..., m, d) unit-variance rows around a mean of 30: a covariance bf16 cannot form."""
    return 30 + torch.randn(shape, generator=_generator(2))


def close_neurons(n: int, *fan_in: int) -> Tensor:
    """A (n, *fan_in) weight whose n neurons lie 1e-3 apart around one direction."""
    g = _generator(3)
    size = math.prod(fan_in)
    return (torch.randn(size, generator=g) + 1e-3 * torch.randn(n, size, generator=g)).reshape(n, *fan_in)


# name[variant] → the arguments of one call, built afresh for each call (a generator argument restarts).
LOSS_CASES: dict[str, Callable[[], Call]] = {
    "alignment_loss": lambda: ((predictions_near_targets(2, 32, 16)[0],), {}),
    "brownian_diffusive_loss": lambda: ((near_duplicates(2, 32, 16),), {"generator": _generator()}),
    "byol_loss": lambda: (predictions_near_targets(2, 32, 16), {}),
    "hyperspherical_energy[linear]": lambda: ((close_neurons(8, 16),), {}),
    "hyperspherical_energy[conv, s=0, half-space]": lambda: ((close_neurons(8, 4, 3, 3),), {"power": 0, "half_space": True}),
    "hyperspherical_energy[angular, s=1]": lambda: ((close_neurons(8, 16),), {"power": 1, "distance": "angular"}),
    "info_nce_loss": lambda: ((near_duplicates(2, 32, 16),), {}),
    "kernel_uniformity[gram]": lambda: ((near_duplicates(2, 32, 16), SFRIK_KERNEL), {"path": "gram"}),
    "kernel_uniformity[moments]": lambda: ((near_duplicates(2, 64, 4), SFRIK_KERNEL), {"path": "moments"}),
    "kernel_uniformity[gaussian]": lambda: ((near_duplicates(2, 32, 16), GaussianKernel(t=2.0)), {}),
    "multiview_centroid_loss": lambda: (predictions_near_targets(4, 32, 16), {}),
    "normalized_mse": lambda: (predictions_near_targets(32, 16), {}),
    "singular_value_loss[covariance]": lambda: ((near_duplicates(2, 32, 16),), {"form": "covariance"}),
    "singular_value_loss[gram, mean]": lambda: ((near_duplicates(2, 32, 16),), {"form": "gram", "target": "mean"}),
    "uniformity_loss": lambda: ((near_duplicates(2, 32, 16),), {}),
    "whiten": lambda: ((offset_rows(32, 8),), {}),
    "whitened_mse": lambda: ((offset_rows(2, 64, 8),), {"w_size": 32, "generator": _generator()}),
}


def loss_name(case: str) -> str:
    return case.partition("[")[0]


def exported_losses() -> list[str]:
    return sorted(set(losses.__all__) - set(NOT_LOSSES))


def test_every_public_callable_is_exported_and_classified() -> None:
    public = {name for name, value in vars(losses).items() if not name.startswith("_") and callable(value) and not inspect.ismodule(value)}
    assert public <= set(losses.__all__), f"public but not in nocollapse.losses.__all__: {sorted(public - set(losses.__all__))}"
    assert set(NOT_LOSSES) <= set(losses.__all__), f"stale entries in NOT_LOSSES: {sorted(set(NOT_LOSSES) - set(losses.__all__))}"


def assert_float32_under_autocast(compute: Callable[[], Tensor]) -> None:
    reference = compute()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        guarded = compute()
    assert reference.dtype == torch.float32 and guarded.dtype == torch.float32, (reference.dtype, guarded.dtype)
    assert torch.isfinite(reference).all()
    torch.testing.assert_close(guarded, reference, rtol=1e-5, atol=0)


@pytest.mark.parametrize("name", exported_losses())
def test_every_loss_gives_its_float32_value_under_bf16_autocast(name: str) -> None:
    cases = [case for case in LOSS_CASES if loss_name(case) == name]
    if not cases:
        pytest.fail(f"nocollapse.losses.{name} has no case here: add one to LOSS_CASES (inputs that stress precision), "
                    f"or to NOT_LOSSES with the reason it needs no float32 guard")
    loss = getattr(losses, name)
    for case in cases:
        def compute(case: str = case) -> Tensor:
            args, kwargs = LOSS_CASES[case]()
            return loss(*args, **kwargs)

        try:
            assert_float32_under_autocast(compute)
        except AssertionError as error:
            raise AssertionError(f"{case}: {error}") from None


def test_every_case_names_an_exported_loss() -> None:
    assert {loss_name(case) for case in LOSS_CASES} <= set(exported_losses())


def regularizer_inputs() -> dict[str, Any]:
    """One of each input a method offers its regularizers (``INPUTS``), built to stress precision."""
    online = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Flatten(), nn.Linear(16, 8))
    with torch.no_grad():
        online[0].weight.copy_(close_neurons(8, 4, 3, 3))
        online[2].weight.copy_(close_neurons(8, 16))
    return {"embeddings": near_duplicates(2, 32, 16), "online": online, "generator": _generator()}


@pytest.mark.parametrize("name", sorted(REGULARIZERS))
def test_every_regularizer_gives_its_float32_value_under_bf16_autocast(name: str) -> None:
    regularizer = REGULARIZERS[name](RegularizerConfig())
    assert set(INPUTS) == set(regularizer_inputs()), "a new regularizer input: add it to regularizer_inputs"

    def compute() -> Tensor:
        inputs = regularizer_inputs()
        return regularizer(**{key: inputs[key] for key in regularizer.consumes})

    assert_float32_under_autocast(compute)
