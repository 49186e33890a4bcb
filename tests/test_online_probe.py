"""The online linear probe: it learns from the training batches and leaves training bit for bit as it was. (Its resume is
tested with every metric line by tests/test_training.py's resume tests, where it is on by default.)"""

import json

import torch
from torch import nn

from conftest import TINY_RUN
from nocollapse.config import resolve_config
from nocollapse.data import ImageDataset
from nocollapse.train.loop import Trainer
from nocollapse.train.online_probe import UNLABELLED, OnlineProbe, pretraining_labels

quiet = lambda *_: None


def clustered(generator: torch.Generator, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` 8-d points around 4 well-separated centres, and their cluster as the label."""
    centres = torch.eye(4, 8) * 6
    labels = torch.randint(0, 4, (count,), generator=generator)
    return centres[labels] + torch.randn(count, 8, generator=generator), labels


def test_the_head_learns_separable_classes_from_the_features_the_encoder_computed():
    encoder = nn.Identity()
    probe = OnlineProbe(encoder, feature_dim=8, num_classes=4, device=torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    for step in range(300):
        x, y = clustered(generator, 32)
        with probe.catching():
            encoder(x), encoder(x + 0.1 * torch.randn(x.shape, generator=generator))  # two views, one pass each, as the methods do
        probe.update(y)
        if step == 0:
            correct, count = probe.take_window().tolist()
            assert count == 64 and correct == 2 * (y == 0).sum()  # before its first update the zero head predicts class 0
        elif step == 250:
            probe.take_window()
    correct, count = probe.take_window().tolist()
    assert count == 49 * 64 and correct / count > 0.95


def test_unlabelled_rows_teach_nothing_and_count_nowhere():
    encoder = nn.Identity()
    probe = OnlineProbe(encoder, feature_dim=8, num_classes=4, device=torch.device("cpu"))
    x, _ = clustered(torch.Generator().manual_seed(1), 16)
    with probe.catching():
        encoder(x)
    probe.update(torch.full((16,), UNLABELLED))
    assert probe.take_window().tolist() == [0.0, 0.0]
    assert not probe.weight.any() and not probe.bias.any()


def test_only_the_passes_inside_catching_are_caught():
    encoder = nn.Linear(8, 8)
    probe = OnlineProbe(encoder, feature_dim=8, num_classes=4, device=torch.device("cpu"))
    encoder(torch.randn(5, 8))  # the monitor's, the evaluation's or a user's own passes, in any mode
    assert probe._caught == []
    with probe.catching():
        encoder(torch.randn(5, 8))
    assert len(probe._caught) == 1 and not probe._caught[0].requires_grad
    encoder(torch.randn(5, 8))
    probe.close()
    with probe.catching():
        encoder(torch.randn(5, 8))
    assert len(probe._caught) == 1


def test_pretraining_labels_mark_the_unlabelled_split():
    images = torch.zeros(3, 1, 4, 4, dtype=torch.uint8)
    unlabelled = ImageDataset(images=images, labels=None, classes=[], name="x/unlabeled")
    labelled = ImageDataset(images=images[:2], labels=torch.tensor([1, 0]), classes=["a", "b"], name="x/train")
    labels, classes = pretraining_labels([unlabelled, labelled])
    assert labels.tolist() == [UNLABELLED] * 3 + [1, 0] and classes == 2
    assert pretraining_labels([unlabelled]) == (None, 0)


def test_training_is_bit_identical_with_and_without_the_probe_and_the_probe_logs_its_accuracy(tiny_data, tmp_path):
    states, records = {}, {}
    for probe in ("true", "false"):
        config = resolve_config("fmnist", [*TINY_RUN, f"data.data_dir={tiny_data}", f"run.out_dir={tmp_path}", "run.device=cpu",
                                           f"run.name={probe}", f"eval.online_probe={probe}"])
        trainer = Trainer(config, progress=False, log=quiet)
        trainer.fit()
        assert (trainer.online_probe is not None) == (probe == "true")
        states[probe] = trainer.method.state_dict()
        records[probe] = [json.loads(line) for line in (tmp_path / probe / "metrics.jsonl").read_text().splitlines()]
    assert states["true"].keys() == states["false"].keys()
    for name, value in states["true"].items():
        assert torch.equal(value, states["false"][name]), name
    windows = [r for r in records["true"] if "loss" in r]
    assert len(windows) == 4 and all(0 <= r["online_top1"] <= 1 for r in windows)
    assert not any("online_top1" in r for r in records["false"])
    # Everything else logged is the same, to the last bit.
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("online_top1", "img/s", "monitor_seconds")} for r in rs]
    assert strip(records["true"]) == strip(records["false"])
    checkpoint = torch.load(tmp_path / "true" / "checkpoint.pt", weights_only=False)
    assert checkpoint["online_probe"]["weight"].shape == (10, 16)
