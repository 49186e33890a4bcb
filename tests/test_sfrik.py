"""SFRIK as a method and kernel uniformity as a regularizer: terms, settings, a short run from the CLI."""

import json

import pytest
import torch

from conftest import TINY_RUN
from nocollapse.cli import main
from nocollapse.config import resolve_config
from nocollapse.errors import UserError
from nocollapse.losses import SFRIK_KERNEL, GegenbauerKernel, gegenbauer, kernel_uniformity
from nocollapse.methods import SFRIK, build_method
from nocollapse.nn import ConvNet


def reference_psi(z: torch.Tensor, weights, dim: int) -> torch.Tensor:
    """Ψ by its definition: the full kernel matrix of the normalised rows, Gegenbauer by SPEC's explicit P₁–P₃."""
    u = torch.nn.functional.normalize(z, dim=-1)
    t = u @ u.T
    explicit = [t, (dim * t**2 - 1) / (dim - 1), ((dim + 2) * t**3 - 3 * t) / (dim - 1)]
    return sum(b * p for b, p in zip(weights, explicit)).mean()


def test_sfrik_is_invariance_mse_plus_the_mean_kernel_uniformity_of_the_views():
    torch.manual_seed(0)
    method = SFRIK(ConvNet(1, (8, 16)), projector_hidden=32, projection_dim=24, invariance=50.0, mmd=2.0, kernel_weights=(1, 4, 3)).double()
    assert not hasattr(method, "update_target") and not hasattr(method, "predictor")
    views = torch.randn(2, 16, 1, 28, 28, dtype=torch.float64)
    terms = method(views)
    # Each view through encoder and projector on its own, as the official code: BatchNorm statistics per view.
    projections = torch.stack([method.projector(method.encoder(v)) for v in views])
    pooled = method.projector(torch.cat([method.encoder(v) for v in views])).view(2, 16, -1)
    assert (pooled - projections).abs().max() > 1e-3  # pooling the views' statistics would be a different method
    u = torch.nn.functional.normalize(projections, dim=-1)
    assert terms["invariance"].item() == pytest.approx(50.0 * torch.nn.functional.mse_loss(u[0], u[1]).item(), rel=1e-10)
    psi = (reference_psi(projections[0], (1, 4, 3), 24) + reference_psi(projections[1], (1, 4, 3), 24)) / 2
    assert terms["mmd"].item() == pytest.approx(2.0 * psi.item(), rel=1e-10)
    assert terms["loss"].item() == pytest.approx((terms["invariance"] + terms["mmd"]).item(), rel=1e-12)
    terms["loss"].backward()
    assert method.encoder.features[0].weight.grad.abs().sum() > 0


def test_the_mmd_term_spreads_a_clustered_batch():
    """Every embedding in a tight cluster: Ψ is close to its maximum Σb, and steps on the MMD term alone
    spread the batch over the sphere (the invariance term alone would leave it clustered)."""
    torch.manual_seed(0)
    z = (torch.randn(1, 64) + 0.1 * torch.randn(128, 64)).requires_grad_()
    optimizer = torch.optim.Adam([z], lr=0.05)
    kernel = GegenbauerKernel((1.0, 40.0, 40.0))
    start = kernel_uniformity(z, kernel).item()
    assert start > 0.9 * sum(kernel.weights)
    for _ in range(100):
        optimizer.zero_grad()
        kernel_uniformity(z, kernel).backward()
        optimizer.step()
    assert kernel_uniformity(z, kernel).item() < 0.2 * start


def test_the_kernel_uniformity_regularizer_attaches_to_byol_with_its_weights():
    config = resolve_config("fmnist-byol", ["model.widths=8,16", "model.projector_hidden=32", "model.projection_dim=16", "model.predictor_hidden=32",
                                       "regularizers.kernel_uniformity=0.5", "regularizers.kernel_weights=2,5"])
    torch.manual_seed(0)
    method = build_method(config, in_channels=1).double()
    views = torch.randn(2, 8, 1, 28, 28, dtype=torch.float64)
    terms = method(views)
    torch.manual_seed(0)
    projections, _, _ = method.branches(views)
    expected = (reference_psi(projections[0], (2, 5), 16) + reference_psi(projections[1], (2, 5), 16)) / 2
    assert terms["kernel_uniformity"].item() == pytest.approx(expected.item(), rel=1e-10)
    assert terms["loss"].item() == pytest.approx((terms["byol"] + 0.5 * terms["kernel_uniformity"]).item(), rel=1e-12)


def test_the_sfrik_kernel_is_the_papers():
    assert SFRIK_KERNEL.weights == (1.0, 40.0, 40.0)
    t = torch.linspace(-1, 1, 11, dtype=torch.float64)
    q = 2048
    expected = t + 40 * (q * t**2 - 1) / (q - 1) + 40 * ((q + 2) * t**3 - 3 * t) / (q - 1)
    assert torch.allclose(SFRIK_KERNEL(t, q), expected) and torch.allclose(gegenbauer(t, 3, q), ((q + 2) * t**3 - 3 * t) / (q - 1))


@pytest.mark.parametrize("overrides, message", [
    (["method.sfrik.kernel_weights=1,-40"], "method.sfrik.kernel_weights"),
    (["method.sfrik.mmd=0"], "collapses"),
    (["regularizers.kernel_weights=0,0"], "regularizers.kernel_weights"),
    (["method.name=sfrik", "augment.num_views=1"], "num_views"),
])
def test_bad_sfrik_settings_are_refused_with_the_key(overrides, message):
    with pytest.raises(UserError, match=message):
        resolve_config("fmnist-sfrik", overrides)


def test_cli_trains_and_evaluates_sfrik(tiny_data, tmp_path, capsys):
    assert main(["train", "--quiet", "--preset", "fmnist-sfrik", "--data-dir", str(tiny_data), *TINY_RUN, "model.projection_dim=64",
                 "optim.epochs=1", "optim.warmup_epochs=0", f"run.out_dir={tmp_path}", "run.name=s", "run.device=cpu"]) == 0
    out = capsys.readouterr().out
    assert "sfrik convnet" in out and "raw pixels" in out and "sfrik projections" in out
    records = [json.loads(line) for line in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "loss" in r]
    assert logged and all({"invariance", "mmd"} <= r.keys() and "tau" not in r for r in logged)
    assert all(0 <= r["mmd"] <= 81 for r in logged), "Ψ lies between 0 and Σb = 81"
