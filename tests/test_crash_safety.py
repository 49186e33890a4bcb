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
        finish = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=300)
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
