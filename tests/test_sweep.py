"""Sweeps: the grid and its names, validation before any run, several runs at once, a failure recorded while the
others go on, finished runs skipped, and an interrupted sweep resumed from its runs' checkpoints."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import TINY_RUN
from nocollapse.cli import main
from nocollapse.errors import UserError
from nocollapse.sweep import SWEEP_FILE, plan_sweep, run_sweep
from nocollapse.train.loop import load_run_config

# No monitor, no report: the runs here test the sweep's bookkeeping, which their length does not change.
SWEEP_RUN = [*TINY_RUN, "eval.monitor_every=0", "eval.online_probe=false", "run.device=cpu"]


def fixed(data, *extra):
    return [*SWEEP_RUN, f"data.data_dir={data}", *extra]


def test_the_grid_is_every_combination_named_by_what_varies(tmp_path):
    runs = plan_sweep(["fmnist-byol", "fmnist-wmse2"], [0, 1], ["optim.lr=0.5,1", "augment.crop_scale=0.2,1|0.8,1", "optim.epochs=3"], tmp_path)
    assert len(runs) == 2 * 2 * 2 * 2
    assert [run.name for run in runs[:4]] == ["fmnist-byol-lr=0.5-crop_scale=0.2_1-seed0", "fmnist-byol-lr=0.5-crop_scale=0.2_1-seed1",
                                               "fmnist-byol-lr=0.5-crop_scale=0.8_1-seed0", "fmnist-byol-lr=0.5-crop_scale=0.8_1-seed1"]
    assert runs[-1].name == "fmnist-wmse2-wmse-lr=1-crop_scale=0.8_1-seed1"  # as `nocollapse train` names it
    config = runs[-1].config(tmp_path)
    assert (config.optim.lr, config.augment.crop_scale, config.optim.epochs, config.run.seed) == (1.0, (0.8, 1.0), 3, 1)
    assert config.method.name == "wmse" and config.run.name == runs[-1].name and config.run.out_dir == str(tmp_path)
    # A regularizer in the settings names the method, as `nocollapse train` does.
    assert [run.name for run in plan_sweep(["fmnist-byol"], [2], ["regularizers.uniformity=0,1"], tmp_path)] == [
        "fmnist-byol-uniformity=0-seed2", "fmnist-byol-byol+uniformity-uniformity=1-seed2"]


@pytest.mark.parametrize("settings, message", [
    (["optim.lr=0.5,-1"], "optim.lr=-1.0: must be a finite number > 0"),
    (["optim.lrr=0.5"], "unknown config key 'optim.lrr'"),
    (["run.seed=1,2"], "run.seed is set by --seeds"),
    (["optim.lr=0.5", "optim.lr=1"], "optim.lr is given twice"),
    (["optim.lr=0.5,0.5"], "a value is listed twice"),
    (["augment.crop_scale=0.2,1|0.5"], "augment.crop_scale='0.5': must be exactly 2 comma-separated values"),
    (["data.data_dir=a/b|a_b", "optim.lr=1"], "would share the run directory"),
])
def test_a_bad_grid_is_refused_before_any_run(tmp_path, capsys, settings, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan_sweep(["fmnist"], [0], settings, tmp_path / "sweep")
    assert main(["sweep", "--seeds", "0", *settings, "--out", str(tmp_path / "sweep")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "sweep").exists()


def test_runs_train_two_at_a_time_a_failure_is_recorded_and_a_rerun_skips_what_is_done(tiny_data, tmp_path, capsys):
    out, empty = tmp_path / "sweep", tmp_path / "empty"
    empty.mkdir()
    # An empty data.data_dir passes the config's checks, but the run finds no dataset there and fails; the others go on.
    settings = [*SWEEP_RUN, f"data.data_dir={tiny_data}|{empty}", "optim.lr=0.5,1"]
    assert main(["sweep", "--preset", "fmnist-byol", "--seeds", "0", *settings, "--out", str(out), "--jobs", "2", "--threads", "1",
                 "--no-report"]) == 1
    printed = capsys.readouterr().out
    assert "2 at a time with 1 thread(s) each" in printed and "FAILED" in printed and "2 of 4 runs done" in printed
    records = json.loads((out / SWEEP_FILE).read_text())["runs"]
    good = [record["name"] for record in records if f"data.data_dir={tiny_data}" in record["overrides"]]
    assert len(records) == 4 and len(good) == 2
    for record in records:
        if record["name"] in good:
            assert record["status"] == "done" and record["returncode"] == 0
            assert json.loads((out / record["name"] / "eval.json").read_text())["rows"][-1]["name"] == "byol convnet"
        else:
            assert record["status"] == "failed" and record["returncode"] == 2
            assert "no Fashion-MNIST" in record["error"] or str(empty) in record["error"], record["error"]
    assert sorted(load_run_config(out / name).optim.lr for name in good) == [0.5, 1.0]
    logs = {name: (out / "logs" / f"{name}.log").read_text() for name in good}

    # Again: the finished runs are not trained again (their logs unchanged), the failed ones are tried once more.
    assert main(["sweep", "--preset", "fmnist-byol", "--seeds", "0", *settings, "--out", str(out), "--jobs", "2", "--no-report"]) == 1
    assert "2 done before, 2 to train" in capsys.readouterr().out
    assert {name: (out / "logs" / f"{name}.log").read_text() for name in good} == logs
    records = json.loads((out / SWEEP_FILE).read_text())["runs"]
    assert sorted(record["attempts"] for record in records) == [1, 1, 2, 2]

    # A finished run whose directory was removed is trained again.
    shutil.rmtree(out / good[0])
    assert main(["sweep", "--preset", "fmnist-byol", "--seeds", "0", *settings, "--out", str(out), "--jobs", "2", "--no-report"]) == 1
    assert "1 done before, 3 to train" in capsys.readouterr().out and (out / good[0] / "eval.json").is_file()


def test_a_sweep_into_a_directory_holding_other_settings_is_refused(tiny_data, tmp_path):
    out = tmp_path / "sweep"
    runs = plan_sweep(["fmnist-byol"], [0], fixed(tiny_data), out)
    assert run_sweep(runs, out, reports=False, log=lambda *_: None).status[runs[0].name].status == "done"
    changed = plan_sweep(["fmnist-byol"], [0], fixed(tiny_data, "optim.weight_decay=0.001"), out)
    with pytest.raises(UserError, match=r"holds a run with other settings \(optim.weight_decay: 1e-05 → 0.001\)"):
        run_sweep(changed, out, reports=False, log=lambda *_: None)


def test_an_interrupted_sweep_resumes_its_runs_from_their_checkpoints(tiny_data, tmp_path):
    out = tmp_path / "sweep"
    # Long enough (100 steps of a few ms, a checkpoint after each epoch) to be stopped while training, after the first checkpoint.
    command = [sys.executable, "-m", "nocollapse", "sweep", "--preset", "fmnist-byol", "--seeds", "0", "--out", str(out), "--no-report",
               *[item for item in fixed(tiny_data) if not item.startswith("optim.epochs=")], "optim.epochs=25"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 120
    while not (out / "fmnist-byol-seed0" / "checkpoint.pt").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0]
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    printed = process.communicate(timeout=120)[0]
    assert process.returncode == 143, printed
    assert "run the same `nocollapse sweep ... --out" in printed
    records = {record["name"]: record for record in json.loads((out / SWEEP_FILE).read_text())["runs"]}
    assert records["fmnist-byol-seed0"]["status"] in ("interrupted", "done")  # it may have finished before the signal came

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    records = {record["name"]: record for record in json.loads((out / SWEEP_FILE).read_text())["runs"]}
    assert records["fmnist-byol-seed0"]["status"] == "done"
    attempts = [line for line in (out / "logs" / "fmnist-byol-seed0.log").read_text().splitlines() if line.startswith("# ")]
    if records_before_resume_said_interrupted := "resumed fmnist-byol-seed0" in resumed.stdout:
        assert len(attempts) == 2 and "--resume" in attempts[1] and "--resume" not in attempts[0]
    assert records_before_resume_said_interrupted or len(attempts) == 1
    assert (out / "fmnist-byol-seed0" / "encoder.safetensors").is_file()


def test_a_second_sweep_into_the_same_directory_waits_for_the_first(tiny_data, tmp_path):
    import fcntl

    out = tmp_path / "sweep"
    out.mkdir()
    with (out / ".sweep.lock").open("w") as held:  # a sweep at work holds the lock and wrote its pid
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("4242")
        held.flush()
        with pytest.raises(UserError, match=r"another sweep \(process 4242\) is training in"):
            run_sweep(plan_sweep(["fmnist-byol"], [0], fixed(tiny_data), out), out, reports=False, log=lambda *_: None)
    # The file of a sweep that has ended (killed or not) holds no lock: the next sweep takes it.
    sweep = run_sweep(plan_sweep(["fmnist-byol"], [0], fixed(tiny_data), out), out, reports=False, log=lambda *_: None)
    assert [status.status for status in sweep.status.values()] == ["done"]


def test_two_trainers_never_train_one_run_directory_at_once(tiny_data, tmp_path):
    import fcntl

    from nocollapse.config import resolve_config
    from nocollapse.train.loop import Trainer

    config = resolve_config("fmnist-byol", [*fixed(tiny_data), f"run.out_dir={tmp_path}", "run.name=busy"])
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "metrics.jsonl").write_text('{"step": 1}\n')
    with (tmp_path / "busy" / ".training.lock").open("w") as held:  # an orphaned run of a killed sweep, still training
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(UserError, match=r"another process \(\?\) is training in"):
            Trainer(config, progress=False, log=lambda *_: None)  # a new run there would rewrite its files
        assert (tmp_path / "busy" / "metrics.jsonl").read_text() == '{"step": 1}\n'
    trainer = Trainer(config, progress=False, log=lambda *_: None)
    with (tmp_path / "busy" / ".training.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(UserError, match=r"another process \(\?\) is training in"):
            trainer.fit()
    assert trainer.fit() == tmp_path / "busy"
