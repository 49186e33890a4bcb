"""Fine-tuning: a copy of the encoder and a head learn the labels, reproducibly; a run compares it with training from scratch."""

import json

import torch

from conftest import TINY_RUN
from nocollapse.cli import main
from nocollapse.eval.finetune import FinetuneRecipe, finetune
from nocollapse.eval.linear import fit_linear_classifier, linear_probe
from nocollapse.nn.convnet import ConvNet


def stripes(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """28×28 uint8 images of three classes a pooled ConvNet can tell apart wherever they are cropped: horizontal
    stripes, vertical stripes, no stripes; all over uniform noise."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (count,), generator=generator)
    images = torch.randint(0, 100, (count, 1, 28, 28), generator=generator)
    lines = (torch.arange(28) % 4 < 2)
    images[labels == 0] += 150 * lines.view(1, 1, 28, 1)
    images[labels == 1] += 150 * lines.view(1, 1, 1, 28)
    return images.to(torch.uint8), labels


def test_finetuning_learns_the_labels_from_scratch_reproducibly_and_touches_neither_the_encoder_nor_the_rng():
    (train_images, train_labels), (test_images, test_labels) = stripes(256, seed=0), stripes(128, seed=1)
    torch.manual_seed(0)
    encoder = ConvNet(1, widths=(8, 16))
    before = {name: value.clone() for name, value in encoder.state_dict().items()}
    state = torch.random.get_rng_state()
    recipe = FinetuneRecipe(epochs=1, min_steps=60, lr=0.05)
    first = finetune(encoder, train_images, train_labels, test_images, test_labels, num_classes=3, recipe=recipe, head_from_probe=False, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(value, before[name]) for name, value in encoder.state_dict().items())
    again = finetune(encoder, train_images, train_labels, test_images, test_labels, num_classes=3, recipe=recipe, head_from_probe=False, seed=3)
    assert first == {**again, "seconds": first["seconds"]}
    assert first["steps"] == 60
    # 60 steps from random weights tell the stripes apart; chance is a third.
    assert first["top1"] > 0.9


def test_the_probe_head_with_its_standardisation_folded_in_predicts_what_the_probe_predicts():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 12, generator=generator)
    train_labels, test_labels = torch.randint(0, 4, (300,), generator=generator), torch.randint(0, 4, (200,), generator=generator)
    scale = torch.logspace(-2, 1, 12)  # features of very different scales: the standardisation matters
    train = (centres[train_labels] + torch.randn(300, 12, generator=generator)) * scale + 5
    test = (centres[test_labels] + torch.randn(200, 12, generator=generator)) * scale + 5
    weight, bias = fit_linear_classifier(train, train_labels, num_classes=4, epochs=5, min_steps=200, seed=1)
    folded = ((test @ weight.t() + bias).argmax(dim=1) == test_labels).float().mean().item()
    probe = linear_probe(train, train_labels, test, test_labels, num_classes=4, epochs=5, min_steps=200, seed=1)["top1"]
    assert abs(folded - probe) <= 1 / 200  # the same fit; at most a near-tie flips under the other rounding
    assert probe > 0.5


def test_a_feature_that_barely_varies_gets_no_huge_weight_in_the_folded_head():
    generator = torch.Generator().manual_seed(0)
    features, labels = torch.rand(10, 8, generator=generator), torch.arange(10)  # one image per class
    features[:, 0] = 0
    features[3, 0] = 1e-5  # a channel active on one image only: σ ≈ 3e-6, just above the probe's 1e-6 floor
    weight, _ = fit_linear_classifier(features, labels, num_classes=10, epochs=5, min_steps=200)
    assert weight[:, 0].abs().max() < 1e4 * weight[:, 1:].abs().max()  # unfolded from σ ≈ 3e-6, it would be ~1e5 times


def test_the_budget_is_epochs_over_the_labels_with_a_floor():
    recipe = FinetuneRecipe(epochs=3, min_steps=500)
    assert recipe.steps(60000) == 3 * 469 and recipe.steps(600) == 500
    assert "3 epoch(s) (at least 500 steps)" in recipe.describe()


def test_a_run_fine_tunes_on_all_labels_and_each_subset_beside_the_same_network_from_scratch(tiny_data, tmp_path, capsys):
    args = ["train", "--quiet", "--no-report", "--data-dir", str(tiny_data), *TINY_RUN, f"run.out_dir={tmp_path}", "run.name=ft",
            "eval.finetune_epochs=1", "eval.finetune_min_steps=6", "eval.label_fractions=0.5", "eval.label_draws=2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "after fine-tuning end to end: SGD Nesterov 0.9, lr 0.05 cosine" in out
    entries = json.loads((tmp_path / "ft" / "eval.json").read_text())["finetune"]
    assert [(e["subset"], e["labels"], e["draws"], e["steps"]) for e in entries] == [("100%", 128, 1, 6), ("50%", entries[1]["labels"], 2, 6)]
    assert 55 <= entries[1]["labels"] <= 73  # half of each class of the 128 images, rounded per class
    for entry in entries:
        assert len(entry["pretrained"]) == len(entry["scratch"]) == entry["draws"]
        assert all(0 <= value <= 1 for value in entry["pretrained"] + entry["scratch"])
