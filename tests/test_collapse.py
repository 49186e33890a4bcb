"""Collapse warnings: a collapsing run says so in its log, its metrics and its report; a healthy one does not."""

import json
import math

import pytest
import torch

from conftest import TINY_RUN
from nocollapse.cli import main
from nocollapse.eval.geometry import embedding_std, geometry_scores
from nocollapse.methods.base import normalized_std
from nocollapse.train.collapse import STD_WARNING, CollapseWatch, rankme_warning_level


def test_the_batch_signal_is_the_geometry_std_of_each_view():
    views = torch.randn(3, 50, 16, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.1, 2, 16)
    expected = sum(embedding_std(view) for view in views) / 3
    assert normalized_std(views).item() == pytest.approx(expected, rel=1e-5)
    spread = torch.randn(1, 4000, 64, generator=torch.Generator().manual_seed(1))
    assert abs(normalized_std(spread).item() * math.sqrt(64) - 1) < 0.02  # about 1/√d on the sphere


def test_the_watch_warns_when_a_signal_falls_and_again_only_after_it_recovered():
    watch = CollapseWatch(projection_dim=64)
    healthy, collapsed = 0.9 / 8, 0.5 * STD_WARNING / 8  # std·√64 = 0.9 and half the warning level
    assert watch.check_batch_std(healthy) == []
    first = watch.check_batch_std(collapsed)
    assert len(first) == 1 and "online projections are collapsing" in first[0] and "0.05" in first[0]
    assert watch.check_batch_std(collapsed) == [], "a collapse still under way is not repeated every window"
    assert watch.check_batch_std(healthy) == []
    assert len(watch.check_batch_std(collapsed)) == 1, "a new collapse after a recovery warns again"

    resumed = CollapseWatch(projection_dim=64)
    resumed.load_state_dict(watch.state_dict())
    assert resumed.check_batch_std(collapsed) == [], "a resumed run warns where the uninterrupted one would"


def test_rankme_warnings_tell_dimensional_collapse_from_a_spread_representation():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(600) % 3
    spread = torch.randn(600, 128, generator=generator)
    on_a_line = torch.randn(600, 1, generator=generator) * torch.randn(1, 128, generator=generator) + 1e-4 * torch.randn(600, 128, generator=generator)
    watch = CollapseWatch(projection_dim=128)
    geometry = {"features": geometry_scores(spread, labels), "projections": geometry_scores(on_a_line, labels)}
    warnings = watch.check_geometry(geometry)
    assert len(warnings) == 1 and "test projections are collapsing: RankMe 1." in warnings[0]
    assert rankme_warning_level(128) == 2 and rankme_warning_level(2048) == 20.48


def tiny_sfrik(data, out, name, *extra):
    # SFRIK's invariance weight is scaled for q = 2048 (≈ 1.2·q); at q = 16 it overwhelms the MMD term and the run
    # collapses (with a high learning rate, within the 16 steps of 4 epochs). Scaled to this q (≈ 1.2·16 ≈ 20) the
    # same run stays spread.
    return ["train", "--quiet", "--no-eval", "--preset", "fmnist-sfrik", "--data-dir", str(data), *TINY_RUN,
            f"run.out_dir={out}", f"run.name={name}", "run.device=cpu", *extra]


def test_a_collapsing_run_warns_in_the_log_the_metrics_and_the_report(tiny_data, tmp_path, capsys):
    assert main(tiny_sfrik(tiny_data, tmp_path, "collapsing", "optim.lr=8", "optim.epochs=4")) == 0
    out = capsys.readouterr().out
    records = [json.loads(line) for line in (tmp_path / "collapsing" / "metrics.jsonl").read_text().splitlines()]
    warned = [r for r in records if "online projections are collapsing" in r.get("warning", "")]
    assert len(warned) == 1 and f"warning at step {warned[0]['step']}: the online projections are collapsing" in out
    warnings = [r["warning"] for r in records if "warning" in r]
    batch_std = {r["step"]: r["embedding_std"] * math.sqrt(16) for r in records if "embedding_std" in r}
    assert batch_std[warned[0]["step"]] < STD_WARNING <= min(std for step, std in batch_std.items() if step < warned[0]["step"])
    assert batch_std[2] > 0.4 and batch_std[16] < batch_std[2] / 8, "the signal really fell: this is a collapse, not a threshold artefact"
    page = (tmp_path / "collapsing" / "report" / "index.html").read_text()
    assert "collapse warning(s)" in page and page.count('<p class="warning">') == len(warnings)

    assert main([*tiny_sfrik(tiny_data, tmp_path, "spread", "method.sfrik.invariance=20"), "--no-report"]) == 0
    records = [json.loads(line) for line in (tmp_path / "spread" / "metrics.jsonl").read_text().splitlines()]
    assert not any("online projections" in r.get("warning", "") for r in records)
    assert min(r["embedding_std"] * math.sqrt(16) for r in records if "embedding_std" in r) > 0.5


def test_a_run_resumed_after_a_warning_warns_exactly_where_the_uninterrupted_run_does(tiny_data, tmp_path, capsys, monkeypatch):
    import os
    import signal

    from nocollapse.train.loop import Trainer

    straight = tiny_sfrik(tiny_data, tmp_path, "straight", "--no-report", "optim.epochs=3")
    assert main(straight) == 0
    real_step = Trainer.train_step

    def sigterm_in_the_last_step_of_epoch_1(self, images, *generators):
        if self.step == 3:  # stops at the end of epoch 1: after the monitor's RankMe warnings and the checkpoint
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(self, images, *generators)

    monkeypatch.setattr(Trainer, "train_step", sigterm_in_the_last_step_of_epoch_1)
    stopped = tiny_sfrik(tiny_data, tmp_path, "resumed", "--no-report", "optim.epochs=3")
    assert main(stopped) == 143
    monkeypatch.setattr(Trainer, "train_step", real_step)
    assert main([*stopped, "--resume"]) == 0

    def warnings(run):
        lines = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["warning"]) for r in lines if "warning" in r]

    assert any("RankMe" in w for _, w in warnings("straight")), "the run must warn from the monitor for this to test anything"
    assert warnings("resumed") == warnings("straight")
