"""Killed at any moment, a run loses nothing: SIGKILL leaves the last complete checkpoint, SIGTERM and
Ctrl-C save one at a step boundary, and the resumed run ends with the uninterrupted run's weights."""

import errno
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import TINY_RUN
from nocollapse.cli import main
from nocollapse.train.loop import Trainer

LONGER = [*TINY_RUN, "optim.epochs=6", "run.checkpoint_every=1", "eval.monitor_every=3"]  # 24 steps, a checkpoint after each


def train_args(data, out, name, *extra):
    return ["train", "--quiet", "--no-eval", "--no-report", "--data-dir", str(data), *LONGER, f"run.out_dir={out}", f"run.name={name}",
            "run.device=cpu", *extra]


def encoder_weights(run_dir):
    return torch.load(run_dir / "encoder.pt", weights_only=True)


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "Ctrl-C"])
def test_a_stop_signal_saves_a_checkpoint_at_the_step_boundary_and_the_resume_is_exact(tiny_data, tmp_path, capsys, monkeypatch, signum, status):
    assert main(train_args(tiny_data, tmp_path, "straight")) == 0
    real_step = Trainer.train_step

    def signal_during_step_5(self, images, *generators):
        if self.step == 5:
            os.kill(os.getpid(), signum)  # arrives mid-step: the step must still complete before the stop
        return real_step(self, images, *generators)

    monkeypatch.setattr(Trainer, "train_step", signal_during_step_5)
    assert main(train_args(tiny_data, tmp_path, "stopped", "run.checkpoint_every=0")) == status
    err = capsys.readouterr().err
    assert f"{signal.Signals(signum).name} received: stopped after step 6" in err and "--resume" in err
    assert torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=True)["step"] == 6
    last = json.loads((tmp_path / "stopped" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last == {"step": 6, "epoch": 1.5, "stopped": signal.Signals(signum).name}
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are gone once training ends

    monkeypatch.setattr(Trainer, "train_step", real_step)
    assert main(["train", "--quiet", "--no-eval", "--no-report", "--resume", f"run.out_dir={tmp_path}", "run.name=stopped", "--data-dir", str(tiny_data)]) == 0
    assert_same_weights(encoder_weights(tmp_path / "stopped"), encoder_weights(tmp_path / "straight"))


def test_sigkill_at_several_moments_never_loses_the_run(tiny_data, tmp_path):
    """A real process, killed with SIGKILL at staggered moments (during start-up, steps, checkpoint writes,
    the monitor), then resumed from whatever it left: the final weights are those of an uninterrupted run."""
    assert main(train_args(tiny_data, tmp_path, "straight")) == 0
    command = [sys.executable, "-m", "nocollapse", *train_args(tiny_data, tmp_path, "killed")]
    run_dir = tmp_path / "killed"
    kills = 0
    for delay in (1.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.5):
        resume = ["--resume"] if (run_dir / "checkpoint.pt").exists() else []
        process = subprocess.Popen(command + resume, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait(timeout=60)
        if (run_dir / "checkpoint.pt").exists():  # whatever survived must load: never half a file
            torch.load(run_dir / "checkpoint.pt", weights_only=True)
        if (run_dir / "encoder.pt").exists():
            break
    assert kills >= 2, "the kills came too late to test anything; the machine is much faster than expected"
    if not (run_dir / "encoder.pt").exists():
        resume = ["--resume"] if (run_dir / "checkpoint.pt").exists() else []  # a loaded machine may kill every try before the first
        finish = subprocess.run(command + resume, capture_output=True, text=True, timeout=300)
        assert finish.returncode == 0, finish.stderr[-2000:]
    assert_same_weights(encoder_weights(run_dir), encoder_weights(tmp_path / "straight"))
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert steps == sorted(set(steps)) and steps[-1] == 24  # each window logged once, in order, despite the kills


class RunsCodeOnLoad:
    """A pickle that would create a file when unpickled: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_malicious_pickle_checkpoint_is_refused_without_running_its_code(tiny_data, tmp_path, capsys):
    args = train_args(tiny_data, tmp_path, "victim", "optim.epochs=1", "run.checkpoint_every=0")
    assert main(args) == 0
    marker = tmp_path / "pwned"
    state = torch.load(tmp_path / "victim" / "checkpoint.pt", weights_only=True)
    state["payload"] = RunsCodeOnLoad(marker)
    torch.save(state, tmp_path / "victim" / "checkpoint.pt")
    assert main(["train", "--quiet", "--no-eval", "--resume", f"run.out_dir={tmp_path}", "run.name=victim", "--data-dir", str(tiny_data)]) == 2
    err = capsys.readouterr().err
    assert "cannot read checkpoint" in err and "Traceback" not in err
    assert not marker.exists(), "loading the checkpoint ran code from it"
    torch.load(tmp_path / "victim" / "checkpoint.pt", weights_only=False)  # control: an unguarded load does run it
    assert marker.exists()


def test_the_encoder_is_exported_as_safetensors_with_its_architecture(tiny_data, tmp_path):
    from safetensors import safe_open

    from nocollapse.nn.backbones import build_backbone

    assert main(train_args(tiny_data, tmp_path, "export", "optim.epochs=1", "run.checkpoint_every=0")) == 0
    with safe_open(str(tmp_path / "export" / "encoder.safetensors"), framework="pt") as file:
        meta = file.metadata()
        tensors = {key: file.get_tensor(key) for key in file.keys()}
    assert_same_weights(tensors, encoder_weights(tmp_path / "export"))
    encoder = build_backbone(meta["backbone"], in_channels=int(meta["in_channels"]), widths=[int(w) for w in meta["widths"].split(",")],
                             depth=int(meta["depth"]), stem=meta["stem"])
    encoder.load_state_dict(tensors)  # the metadata alone rebuilds the network the weights belong to


def test_a_non_finite_gradient_stops_the_run_with_a_diagnostic_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path, capsys, monkeypatch):
    real_step = Trainer.train_step

    def poison_step_5(self, images, *generators):
        if self.step == 5:  # the loss stays finite; one weight's gradient does not
            next(self.method.encoder.parameters()).register_hook(lambda grad: grad * float("nan"))
        return real_step(self, images, *generators)

    monkeypatch.setattr(Trainer, "train_step", poison_step_5)
    assert main(train_args(tiny_data, tmp_path, "nan", "run.checkpoint_every=0")) == 2
    err = capsys.readouterr().err
    assert "non-finite grad_norm in the steps up to 6" in err and "the last finite window (step 4)" in err
    checkpoint = torch.load(tmp_path / "nan" / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 4 and all(torch.isfinite(v).all() for v in checkpoint["method"].values() if v.is_floating_point())
    records = [json.loads(line) for line in (tmp_path / "nan" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["error"] == "non-finite grad_norm" and records[-1]["step"] == 6
    assert all(math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0 for r in records[:-1] if "grad_norm" in r)


def test_a_full_disk_at_a_checkpoint_is_a_clear_error_and_the_previous_checkpoint_survives(tiny_data, tmp_path, capsys, monkeypatch):
    from nocollapse.train import checkpoint

    real_fsync, writes = os.fsync, []

    def disk_full_on_the_third_checkpoint(fd):
        writes.append(fd)
        if len(writes) == 3 + 2:  # config.json and environment.json come first
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(checkpoint.os, "fsync", disk_full_on_the_third_checkpoint)
    assert main(train_args(tiny_data, tmp_path, "full")) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "the previous checkpoint.pt is intact" in err and "Traceback" not in err
    assert torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)["step"] == 2  # the second checkpoint, whole
    assert not list((tmp_path / "full").glob(".*.tmp"))  # the half-written file is gone


def poison(steps):
    """A Trainer.train_step that makes one weight's gradient NaN at each step index in ``steps`` (the loss stays finite)."""
    real_step = Trainer.train_step

    def step(self, images, *generators):
        if self.step not in steps:
            return real_step(self, images, *generators)
        hook = next(self.method.encoder.parameters()).register_hook(lambda grad: grad * float("nan"))
        try:
            return real_step(self, images, *generators)
        finally:
            hook.remove()

    return step


def failing_loss(trainer):
    """``trainer.compute_losses`` that runs the forward pass (BatchNorm statistics move) and then fails, as W-MSE's whitening can."""
    from nocollapse.errors import CollapseError

    real_losses = trainer.compute_losses

    def fail(views, noise):
        real_losses(views, noise)
        raise CollapseError("whitening failed")

    return fail


@pytest.mark.parametrize("fault", ["non-finite gradient", "failed loss"])
def test_a_skipped_step_moves_nothing(tiny_data, tmp_path, fault):
    """Weights, optimiser state, EMA target and BatchNorm statistics are exactly as before a skipped step."""
    from nocollapse.config import resolve_config
    from nocollapse.errors import CollapseError, NonFiniteStep

    config = resolve_config("fmnist", [*TINY_RUN, f"data.data_dir={tiny_data}", f"run.out_dir={tmp_path}", "run.device=cpu", "run.max_skipped_steps=1"])
    trainer = Trainer(config, progress=False, log=lambda *_: None)
    images = trainer.pretrain_images[:32]
    trainer.train_step(images, torch.Generator().manual_seed(0))  # a real step first, so the optimiser has state
    method_before = {k: v.clone() for k, v in trainer.method.state_dict().items()}
    momentum_before = [s["momentum_buffer"].clone() for s in trainer.optimizer.state.values() if "momentum_buffer" in s]
    assert momentum_before and any(k.endswith("running_mean") for k in method_before)
    if fault == "failed loss":
        trainer.compute_losses = failing_loss(trainer)
        with pytest.raises(CollapseError, match="whitening failed"):
            trainer.train_step(images, torch.Generator().manual_seed(1))
    else:
        with pytest.raises(NonFiniteStep) as error:
            poison({1})(trainer, images, torch.Generator().manual_seed(1))
        assert "non-finite grad_norm (nan)" in str(error.value) and "finite: loss" in str(error.value)
    assert trainer.step == 1  # the loop, not the step, decides what a skipped step counts for
    assert_same_weights(trainer.method.state_dict(), method_before)  # also the BatchNorm running statistics and the target
    momentum_after = [s["momentum_buffer"] for s in trainer.optimizer.state.values() if "momentum_buffer" in s]
    assert all(torch.equal(a, b) for a, b in zip(momentum_before, momentum_after))
    assert all(p.grad is None for p in trainer.method.parameters())


def test_non_finite_steps_are_skipped_up_to_the_bound_then_stop_the_run(tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Trainer, "train_step", poison({5}))
    short = ["optim.epochs=3", "eval.monitor_every=0", "run.max_skipped_steps=1"]  # 12 steps, a checkpoint after each
    assert main(train_args(tiny_data, tmp_path, "one", *short)) == 0
    records = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    skipped = [r for r in records if "skipped" in r]
    assert len(skipped) == 1 and skipped[0]["step"] == 6 and skipped[0]["skipped_steps"] == 1
    assert "non-finite grad_norm" in skipped[0]["skipped"]
    assert "warning: skipped step 6 (1 of run.max_skipped_steps=1)" in capsys.readouterr().out
    windows = [r for r in records if "loss" in r]
    # A window closes after every step here (a checkpoint each): the skipped step's has nothing to log.
    assert [w["step"] for w in windows] == [s for s in range(1, 13) if s != 6] and all(math.isfinite(w["grad_norm"]) for w in windows)
    assert all(torch.isfinite(v).all() for v in encoder_weights(tmp_path / "one").values() if v.is_floating_point())
    assert torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)["skipped_steps"] == 1

    monkeypatch.setattr(Trainer, "train_step", poison({5, 7}))
    assert main(train_args(tiny_data, tmp_path, "two", *short)) == 2
    err = capsys.readouterr().err
    assert "training stopped at step 8: non-finite grad_norm" in err and "after skipping 1 step(s), the most run.max_skipped_steps=1 allows" in err
    checkpoint = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 7 and all(torch.isfinite(v).all() for v in checkpoint["method"].values() if v.is_floating_point())

    monkeypatch.setattr(Trainer, "train_step", poison({5, 6}))
    assert main(train_args(tiny_data, tmp_path, "diverged", *short, "run.max_skipped_steps=5")) == 2
    assert "training stopped at step 7" in (err := capsys.readouterr().err) and "two faults in a row are diverged weights" in err


def test_weights_that_overflow_are_never_checkpointed(tiny_data, tmp_path, capsys, monkeypatch):
    """Finite losses and gradients can still give an update that overflows: the checkpoint after it is refused."""
    real_step = Trainer.train_step

    def overflow_at_step_3(self, images, *generators):
        terms = real_step(self, images, *generators)
        if self.step == 3:
            with torch.no_grad():
                next(self.method.encoder.parameters()).mul_(float("inf"))
        return terms

    monkeypatch.setattr(Trainer, "train_step", overflow_at_step_3)
    assert main(train_args(tiny_data, tmp_path, "overflow")) == 2
    err = capsys.readouterr().err
    assert "the weights are no longer finite after step 3" in err and "Traceback" not in err
    assert torch.load(tmp_path / "overflow" / "checkpoint.pt", weights_only=True)["step"] == 2


@pytest.fixture
def small_filesystem(tmp_path):
    """A 4 MB tmpfs mounted for the test: a disk that really fills up (needs root and mount; skipped elsewhere)."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
                                                   capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("mounting a small tmpfs needs root and mount")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_a_really_full_disk_stops_the_run_cleanly_and_it_resumes_once_there_is_room(tiny_data, tmp_path, small_filesystem, capsys, monkeypatch):
    assert main(train_args(tiny_data, tmp_path, "straight")) == 0
    real_step, ballast = Trainer.train_step, small_filesystem / "ballast"

    def fill_the_disk_at_step_10(self, images, *generators):
        if self.step == 10:
            free = os.statvfs(small_filesystem)
            with open(ballast, "wb") as file:  # every free block but a few hundred bytes' worth
                file.write(b"\0" * (free.f_bavail * free.f_frsize - 512))
        return real_step(self, images, *generators)

    monkeypatch.setattr(Trainer, "train_step", fill_the_disk_at_step_10)
    assert main(train_args(tiny_data, small_filesystem, "full")) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "intact" in err and "Traceback" not in err
    run_dir = small_filesystem / "full"
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"] == 10  # the last checkpoint before the disk filled
    assert not list(run_dir.glob(".*.tmp"))

    ballast.unlink()
    monkeypatch.setattr(Trainer, "train_step", real_step)
    assert main([*train_args(tiny_data, small_filesystem, "full"), "--resume"]) == 0
    assert_same_weights(encoder_weights(run_dir), encoder_weights(tmp_path / "straight"))
