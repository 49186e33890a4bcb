"""Killed at any moment, a run loses nothing: SIGKILL leaves the last complete checkpoint, SIGTERM and
Ctrl-C save one at a step boundary, and the resumed run ends with the uninterrupted run's weights."""

import json
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
