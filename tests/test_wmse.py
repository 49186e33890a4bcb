"""W-MSE as a method: start-up checks, a short run from the CLI, and collapse reported with the step."""

import json

import pytest
import torch
from torch import nn

from conftest import TINY_RUN
from nocollapse.cli import main
from nocollapse.config import resolve_config
from nocollapse.errors import UserError
from nocollapse.methods import WMSE
from nocollapse.nn import ConvNet
from nocollapse.train.loop import Trainer

TINY_WMSE = [*TINY_RUN, "model.projection_dim=8", "method.wmse.w_size=16"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.projection_dim=16", "method.wmse.w_size=16"], "must exceed"),
        (["optim.batch_size=40", "method.wmse.w_size=16"], "divis"),
        (["optim.batch_size=8", "method.wmse.w_size=16"], "smaller than"),
    ],
)
def test_bad_whitening_shapes_are_configuration_errors(overrides, message):
    with pytest.raises(UserError, match=message):
        resolve_config("fmnist-wmse2", [*TINY_RUN, "model.projection_dim=8", *overrides])


def test_wmse_has_no_target_and_whitens_its_embeddings():
    torch.manual_seed(0)
    method = WMSE(ConvNet(1, (8, 16)), head_hidden=32, embedding_dim=4, w_size=8)
    assert not hasattr(method, "update_target") and not hasattr(method, "target")
    views = torch.randn(4, 16, 1, 28, 28)
    loss = method(views)["loss"]
    assert 0 <= loss.item() <= 4
    loss.backward()
    assert method.encoder.features[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("preset", ["fmnist-wmse2", "fmnist-wmse4"])
def test_cli_trains_and_evaluates_wmse(preset, tiny_data, tmp_path, capsys):
    assert main(["train", "--quiet", "--preset", preset, "--data-dir", str(tiny_data), *TINY_WMSE,
                 f"run.out_dir={tmp_path}", "run.name=w", "run.device=cpu"]) == 0
    out = capsys.readouterr().out
    assert "wmse convnet" in out and "raw pixels" in out and "kNN-euclid k=5" in out, "W-MSE presets report the paper's kNN too"
    saved = json.loads((tmp_path / "w" / "eval.json").read_text())
    assert all(0 <= row["knn_euclidean"]["5"] <= 1 for row in saved["rows"])
    records = [json.loads(line) for line in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses and all(0 <= v <= 4 for v in losses)
    assert all("tau" not in r for r in records), "W-MSE has no target momentum to log"


class CollapseAfter(nn.Module):
    """Wraps a head; once ``collapsed`` is set, every embedding is the same vector (rank 0 covariance)."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head, self.collapsed = head, False

    def forward(self, x):
        out = self.head(x)
        return out * 0 + 1 if self.collapsed else out


def test_collapse_stops_training_with_the_step_and_keeps_the_checkpoint(tiny_data, tmp_path):
    config = resolve_config("fmnist-wmse2", [*TINY_WMSE, f"data.data_dir={tiny_data}", f"run.out_dir={tmp_path}", "run.device=cpu", "eval.monitor_every=0"])
    trainer = Trainer(config, progress=False, log=lambda *_: None)
    trainer.method.head = CollapseAfter(trainer.method.head)
    real_step = Trainer.train_step

    def step(self, images, *generators):
        self.method.head.collapsed = self.step >= 6
        return real_step(self, images, *generators)

    trainer.train_step = step.__get__(trainer)
    checkpoint = trainer.run_dir / "checkpoint.pt"
    with pytest.raises(UserError) as error:
        trainer.fit()
    message = str(error.value)
    assert "step 7" in message and "collaps" in message and "eps" in message and "kept" in message
    assert "run.max_skipped_steps=N skips up to N such steps instead" in message
    state = torch.load(checkpoint, weights_only=True)
    assert state["step"] == 4, "the last good checkpoint is the end of epoch 1"
    assert all(torch.isfinite(v).all() for v in state["method"].values() if v.is_floating_point())
    last = json.loads((trainer.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 7 and "error" in last
