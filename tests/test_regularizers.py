"""Regularizers attach to any method by name and weight; MSBReg is BYOL's architecture plus three forces."""

import dataclasses
import json
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from conftest import TINY_RUN
from nocollapse.cli import main
from nocollapse.config import RegularizerConfig, field_comments, resolve_config
from nocollapse.errors import UserError
from nocollapse.losses import alignment_loss, info_nce_loss, uniformity_loss
from nocollapse.losses.byol import byol_loss
from nocollapse.losses.energy import hyperspherical_energy
from nocollapse.losses.msbreg import brownian_diffusive_loss, multiview_centroid_loss, singular_value_loss
from nocollapse.methods import REGULARIZERS, build_method, method_label
from nocollapse.methods.regularizers import INPUTS
from nocollapse.train.loop import run_directory

TINY_MODEL = ["model.widths=8,16", "model.projector_hidden=32", "model.projection_dim=16", "model.predictor_hidden=32", "optim.batch_size=8"]


def tiny_method(*overrides, preset="fmnist-byol"):
    torch.manual_seed(0)
    return build_method(resolve_config(preset, [*TINY_MODEL, *overrides]), in_channels=1).double()


def test_every_registered_regularizer_has_a_documented_weight_and_declares_known_inputs():
    weights = {f.name: f for f in dataclasses.fields(RegularizerConfig)}
    comments = field_comments()
    for name, build in REGULARIZERS.items():
        assert name in weights and weights[name].type in (float, "float"), f"RegularizerConfig needs a float field {name!r}"
        assert f"regularizers.{name}" in comments, f"regularizers.{name} needs a comment (its help text)"
        assert set(build(RegularizerConfig()).consumes) <= set(INPUTS)


def test_the_loss_is_the_method_term_plus_the_weighted_regularizers():
    method = tiny_method("regularizers.singular_value=0.5", "regularizers.brownian=0.2", "regularizers.brownian_sigma=3")
    views = torch.randn(2, 8, 1, 28, 28, dtype=torch.float64)
    terms = method(views, torch.Generator().manual_seed(7))
    assert set(terms) == {"loss", "byol", "singular_value", "brownian", "embedding_std"}
    torch.manual_seed(1)  # BatchNorm in train mode: the same views give the same outputs
    projections, predictions, targets = method.branches(views)
    assert terms["byol"].item() == pytest.approx(byol_loss(predictions, targets).item(), rel=1e-12)
    assert terms["singular_value"].item() == pytest.approx(singular_value_loss(projections).item(), rel=1e-12)
    brownian = brownian_diffusive_loss(projections, sigma=3, generator=torch.Generator().manual_seed(7))
    assert terms["brownian"].item() == pytest.approx(brownian.item(), rel=1e-12)
    expected = terms["byol"] + 0.5 * terms["singular_value"] + 0.2 * terms["brownian"]
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-12)
    # The collapse signal, not a loss term: per view, the std over the batch of the unit projections, averaged.
    unit = projections / projections.norm(dim=-1, keepdim=True)
    expected_std = sum(unit[m].std(dim=0, unbiased=True).mean() for m in range(2)) / 2
    assert not terms["embedding_std"].requires_grad
    assert terms["embedding_std"].item() == pytest.approx(expected_std.item(), rel=1e-6)


def test_regularizers_attach_to_wmse_too():
    method = tiny_method("method.name=wmse", "method.wmse.w_size=32", "optim.batch_size=32", "regularizers.singular_value=1", preset="fmnist-wmse2")
    terms = method(torch.randn(2, 32, 1, 28, 28, dtype=torch.float64))
    assert set(terms) == {"loss", "wmse", "singular_value", "embedding_std"}
    assert terms["loss"].item() == pytest.approx((terms["wmse"] + terms["singular_value"]).item(), rel=1e-12)


@dataclass(frozen=True)
class WeightNorm:
    """A user's own regularizer on the weights: Σ‖W‖² of the online networks."""

    consumes: ClassVar[tuple[str, ...]] = ("online",)

    def __call__(self, *, online):
        return sum(p.square().sum() for p in online.parameters())


def test_a_weight_regularizer_sees_the_online_networks_and_never_the_target():
    method = tiny_method()
    method.attach("weight_norm", 1e-3, WeightNorm())
    online = {id(p) for p in method.online_networks().parameters()}
    assert online == {id(p) for m in (method.encoder, method.projector, method.predictor) for p in m.parameters()}
    assert not online & {id(p) for p in method.target.parameters()}
    terms = method(torch.randn(2, 8, 1, 28, 28, dtype=torch.float64))
    expected = sum(p.square().sum() for p in method.online_networks().parameters())
    assert terms["weight_norm"].item() == pytest.approx(expected.item())


def test_attach_refuses_unknown_inputs_and_duplicate_names():
    @dataclass(frozen=True)
    class NeedsLabels:
        consumes: ClassVar[tuple[str, ...]] = ("labels",)

        def __call__(self, *, labels):
            return labels

    method = tiny_method("regularizers.singular_value=1")
    with pytest.raises(ValueError, match="labels"):
        method.attach("cheat", 1.0, NeedsLabels())
    with pytest.raises(ValueError, match="already"):
        method.attach("singular_value", 1.0, WeightNorm())


def test_msbreg_is_the_centroid_loss_on_byols_branches():
    for variant in ("per_view", "mean"):
        method = tiny_method("method.name=msbreg", "augment.num_views=3", f"method.msbreg.centroid={variant}")
        views = torch.randn(3, 8, 1, 28, 28, dtype=torch.float64)
        terms = method(views)
        torch.manual_seed(2)
        _, predictions, targets = method.branches(views)
        assert set(terms) == {"loss", "centroid", "embedding_std"}
        assert terms["centroid"].item() == pytest.approx(multiview_centroid_loss(predictions, targets, variant=variant).item(), rel=1e-12)


def test_bad_regularizer_settings_are_refused_with_the_key():
    with pytest.raises(UserError, match=r"regularizers.brownian=-1.0: must be a finite number >= 0"):
        resolve_config("fmnist", ["regularizers.brownian=-1"])
    with pytest.raises(UserError, match="unknown config key 'regularizers.singular'"):
        resolve_config("fmnist", ["regularizers.singular=1"])
    with pytest.raises(UserError, match="method.msbreg.centroid"):
        resolve_config("fmnist-msbreg", ["method.msbreg.centroid=median"])


@pytest.mark.parametrize("method", [
    ["--preset", "fmnist-msbreg", "augment.num_views=3"],
    ["regularizers.singular_value=1", "regularizers.brownian=0.1"],
    ["--preset", "byol+mhe", "regularizers.contrastive=0.1", "regularizers.uniformity=0.1"],
], ids=["msbreg", "byol+sv+bd", "byol+mhe+contrastive+uniformity"])
def test_a_few_steps_from_the_command_line_log_each_term(tiny_data, tmp_path, capsys, method):
    preset = method[:2] if method[0] == "--preset" else []
    overrides = method[len(preset):]
    argv = ["train", "--quiet", *preset, "--data-dir", str(tiny_data), *TINY_RUN, *overrides,
            "optim.epochs=1", "optim.warmup_epochs=0", f"run.out_dir={tmp_path}", "run.name=r", "run.device=cpu"]
    assert main(argv) == 0
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "loss" in r]
    names = {"fmnist-msbreg": {"centroid", "singular_value", "brownian"}, "byol+mhe": {"byol", "mhe", "contrastive", "uniformity"}}.get(
        preset[1] if preset else "", {"byol", "singular_value", "brownian"})
    assert logged and all(names <= r.keys() for r in logged)
    assert "RankMe" in capsys.readouterr().out


def test_a_regularizer_may_not_hide_one_of_the_methods_own_terms():
    method = tiny_method()
    method.attach("byol", 1.0, WeightNorm())
    with pytest.raises(ValueError, match="own loss terms"):
        method(torch.randn(2, 8, 1, 28, 28, dtype=torch.float64))


def test_contrastive_uniformity_and_alignment_terms_are_the_losses_of_the_online_projections():
    method = tiny_method("regularizers.contrastive=0.5", "regularizers.contrastive_temperature=0.3", "regularizers.uniformity=0.25",
                         "regularizers.uniformity_t=1.5", "regularizers.alignment=2")
    views = torch.randn(2, 8, 1, 28, 28, dtype=torch.float64)
    terms = method(views)
    torch.manual_seed(1)
    projections, _, _ = method.branches(views)
    assert terms["contrastive"].item() == pytest.approx(info_nce_loss(projections, temperature=0.3).item(), rel=1e-12)
    assert terms["uniformity"].item() == pytest.approx(uniformity_loss(projections, t=1.5).item(), rel=1e-12)
    assert terms["alignment"].item() == pytest.approx(alignment_loss(projections).item(), rel=1e-12)
    expected = terms["byol"] + 0.5 * terms["contrastive"] + 0.25 * terms["uniformity"] + 2 * terms["alignment"]
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-12)


def test_mhe_sums_the_energy_of_every_online_conv_and_linear_layer_and_never_touches_the_target():
    method = tiny_method("regularizers.mhe=1", "regularizers.mhe_power=1", "regularizers.mhe_distance=angular", "regularizers.mhe_half_space=true")
    layers = [m.weight for net in (method.encoder, method.projector, method.predictor) for m in net.modules()
              if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(layers) == 2 + 2 + 2  # two conv stages, two linear layers in each head
    expected = sum(hyperspherical_energy(w, power=1, distance="angular", half_space=True) for w in layers)
    terms = method(torch.randn(2, 8, 1, 28, 28, dtype=torch.float64))
    assert terms["mhe"].item() == pytest.approx(expected.item(), rel=1e-12)
    with torch.no_grad():
        for p in method.target.parameters():
            p.mul_(-3.0)
    assert method(torch.randn(2, 8, 1, 28, 28, dtype=torch.float64))["mhe"].item() == pytest.approx(expected.item(), rel=1e-12)
    terms["mhe"].backward()
    assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in layers)
    assert all(p.grad is None for p in method.target.parameters())


def test_the_uniformity_presets_are_the_plain_byol_run_plus_one_term():
    base = resolve_config("fmnist-byol").to_dict()
    for term in ("contrastive", "uniformity", "mhe"):
        config = resolve_config(f"byol+{term}")
        assert config.method.name == "byol" and getattr(config.regularizers, term) > 0
        others = {name for name, weight in dataclasses.asdict(config.regularizers).items()
                  if name in REGULARIZERS and name != term and weight != 0}
        assert not others
        differing = {key for key, value in config.to_dict().items() if key not in ("preset", "regularizers") and value != base[key]}
        assert not differing, f"byol+{term} changes {differing} besides its regularizer: the comparison would not be like for like"


def test_bad_uniformity_settings_are_refused_with_the_key():
    with pytest.raises(UserError, match="regularizers.contrastive_temperature"):
        resolve_config("fmnist", ["regularizers.contrastive_temperature=0"])
    with pytest.raises(UserError, match="regularizers.mhe_power=3"):
        resolve_config("fmnist", ["regularizers.mhe_power=3"])
    with pytest.raises(UserError, match="regularizers.mhe_distance"):
        resolve_config("fmnist", ["regularizers.mhe_distance=geodesic"])


def test_the_run_directory_and_the_tables_name_the_regularizers_a_method_trains_with():
    plain, added = resolve_config("fmnist-byol"), resolve_config("fmnist-byol", ["regularizers.uniformity=1", "regularizers.singular_value=30"])
    assert (method_label(plain), run_directory(plain).name) == ("byol", "fmnist-byol-seed0")
    assert (method_label(added), run_directory(added).name) == ("byol+singular_value+uniformity", "fmnist-byol-byol+singular_value+uniformity-seed0")
    assert run_directory(resolve_config("fmnist-sfrik")).name == "fmnist-sfrik-seed0"
    assert run_directory(resolve_config("fmnist")).name == "fmnist-byol+uniformity-seed0", "the default says it adds the uniformity loss"
    assert run_directory(resolve_config("byol+uniformity")).name == "byol+uniformity-seed0", "the preset's name says it already"
    assert method_label(resolve_config("fmnist-msbreg")) == "msbreg+singular_value+brownian"
    assert method_label(resolve_config("fmnist-msbreg", ["regularizers.brownian=0"])) == "msbreg+singular_value", "an ablation reads apart"


def test_a_run_named_before_the_label_named_its_regularizers_is_found_to_resume(tmp_path):
    config = resolve_config("byol+uniformity", [f"run.out_dir={tmp_path}"])
    earlier = tmp_path / "byol+uniformity-byol-seed0"  # the name such a run had before
    earlier.mkdir()
    (earlier / "checkpoint.pt").write_bytes(b"")
    (earlier / "config.json").write_text(resolve_config("fmnist-byol").to_json())
    assert run_directory(config, resuming=True) == tmp_path / "byol+uniformity-seed0", "a run of another method is not taken for it"
    (earlier / "config.json").write_text(config.to_json())
    assert run_directory(config, resuming=True) == earlier
    assert run_directory(config) == tmp_path / "byol+uniformity-seed0", "a new run takes the new name"
    (tmp_path / "byol+uniformity-seed0").mkdir()
    assert run_directory(config, resuming=True) == tmp_path / "byol+uniformity-seed0", "the new name wins where both exist"
