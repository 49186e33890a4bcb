"""Recipe tuning: the space around a preset, trials as runs scored by their own evaluation, pruning on the monitor, the best
trial as a config file, a label-free objective, and one study shared by two processes (SQLite, and PostgreSQL where a
server runs: .ci/run starts one and sets NOCOLLAPSE_TEST_POSTGRES)."""

import json
import os
import re
from pathlib import Path
import subprocess
import sys

import pytest

optuna = pytest.importorskip("optuna")

from conftest import TINY_RUN  # noqa: E402
from nocollapse.cli import main  # noqa: E402
from nocollapse.config import resolve_config  # noqa: E402
from nocollapse.config_file import config_from_file  # noqa: E402
from nocollapse.errors import UserError  # noqa: E402
from nocollapse.train.loop import load_run_config  # noqa: E402
from nocollapse.tune import BEST_FILE, Dimension, default_space, parse_space, tune  # noqa: E402
from test_folder_pretraining import make_folder  # noqa: E402

# Trials of the tiny run; optim.epochs comes from --budget-epochs, and the batch stays fixed (given here).
TRIAL = [item for item in TINY_RUN if not item.startswith(("optim.epochs=", "regularizers.uniformity="))] + ["eval.online_probe=false", "run.device=cpu"]
quiet = lambda *_: None


def test_the_default_space_is_built_around_the_presets_values():
    space = {d.key: d for d in default_space(resolve_config("fmnist"))}
    assert space["optim.lr"] == Dimension("optim.lr", 0.25, 4.0, log=True)
    assert space["method.byol.ema_base"] == Dimension("method.byol.ema_base", 0.8, 0.996)
    assert space["augment.crop_scale"] == Dimension("augment.crop_scale", 0.08, 0.9)
    assert space["optim.batch_size"].choices == ("64", "128", "256")
    assert space["regularizers.uniformity"] == Dimension("regularizers.uniformity", 0.1, 10.0, log=True)
    wmse = {d.key: d for d in default_space(resolve_config("fmnist-wmse2"))}
    assert "method.byol.ema_base" not in wmse and wmse["optim.batch_size"].choices == ("128", "256")  # w_size 128 divides them


def test_the_space_can_be_changed_and_a_bad_entry_says_what_is_allowed():
    base = default_space(resolve_config("fmnist"))
    space = {d.key: d for d in parse_space(["optim.lr=0.1:3:log", "method.byol.ema_base=off", "model.widths=32,64|16,32", "optim.epochs=2:6"], base)}
    assert space["optim.lr"] == Dimension("optim.lr", 0.1, 3.0, log=True)
    assert "method.byol.ema_base" not in space and space["model.widths"].choices == ("32,64", "16,32")
    assert space["optim.epochs"] == Dimension("optim.epochs", 2.0, 6.0)
    for entry, message in [("optim.lrr=1:2", "unknown config key 'optim.lrr'"), ("optim.lr=3:1", "LOW < HIGH"),
                           ("optim.lr=0:1:log", "LOW > 0 for log"), ("optim.lr=fast", "must be LOW:HIGH[:log]"),
                           ("optim.name=a:b", "must be LOW:HIGH[:log]"), ("run.device=1:2", "a range needs a numeric key"),
                           ("optim.name=lars|sgdd", "optim.name='sgdd': must be one of"), ("optim.eta=off", "is not searched")]:
        with pytest.raises(UserError, match=entry.split("=")[0] if "unknown" in message else None) as caught:
            parse_space([entry], base)
        assert message in str(caught.value), (entry, str(caught.value))


def test_trials_are_runs_scored_by_their_evaluation_and_the_best_becomes_a_config_file(tiny_data, tmp_path, capsys):
    out = tmp_path / "tune"
    assert main(["tune", "--preset", "fmnist-byol", *TRIAL, f"data.data_dir={tiny_data}", "--trials", "3", "--budget-epochs", "2",
                 "--out", str(out), "--space", "augment.crop_scale=off"]) == 0
    printed = capsys.readouterr().out
    assert "objective final kNN top-1" in printed and "searching optim.lr ∈ [0.25, 4] log; method.byol.ema_base ∈ [0.8, 0.996]" in printed
    study = optuna.load_study(study_name="tune", storage=f"sqlite:///{out / 'study.db'}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3 and {d.name for d in out.iterdir() if d.name.startswith("trial")} == {"trial000", "trial001", "trial002"}
    for trial in complete:
        run = out / f"trial{trial.number:03d}"
        config = load_run_config(run)
        assert config.optim.lr == pytest.approx(trial.params["optim.lr"]) and config.optim.epochs == 2
        assert config.method.byol.ema_base == pytest.approx(trial.params["method.byol.ema_base"])
        evaluation = json.loads((run / "eval.json").read_text())
        assert trial.value == evaluation["rows"][-1]["knn"]["5"]  # the objective is the trial's own final kNN (k = the smallest)
        assert [row["name"] for row in evaluation["rows"]] == ["byol convnet"]  # no baselines in trials
    best = max(complete, key=lambda t: t.value)
    config = config_from_file(out / BEST_FILE)
    assert (config.optim.lr, config.method.byol.ema_base, config.optim.epochs) == (pytest.approx(best.params["optim.lr"]),
                                                                                  pytest.approx(best.params["method.byol.ema_base"]), 2)
    assert config.run.out_dir == "runs" and config.eval.baselines  # trained with `train --config`, evaluated as usual

    # The same command again: the study already holds 3 finished trials, so none runs; one more is asked for: one runs.
    assert main(["tune", "--preset", "fmnist-byol", *TRIAL, f"data.data_dir={tiny_data}", "--trials", "4", "--budget-epochs", "2",
                 "--out", str(out), "--space", "augment.crop_scale=off"]) == 0
    assert "trial 3:" in capsys.readouterr().out and len(optuna.load_study(study_name="tune", storage=f"sqlite:///{out / 'study.db'}").trials) == 4


def test_a_trial_below_the_pruners_bar_is_stopped_at_its_monitor(tiny_data, tmp_path):
    out = tmp_path / "tune"
    # No accuracy reaches 200%: every trial is pruned at its first monitor, after one of its three epochs.
    with pytest.raises(UserError, match="no trial of tune finished"):
        tune("fmnist-byol", out, trials=2, budget_epochs=3, overrides=[*TRIAL, f"data.data_dir={tiny_data}"], log=quiet,
             pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    study = optuna.load_study(study_name="tune", storage=f"sqlite:///{out / 'study.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.PRUNED] * 2
    assert all(list(t.intermediate_values) == [1] for t in study.trials)
    for trial in study.trials:  # stopped after the first epoch's monitor: one monitor line, and no encoder
        lines = [json.loads(line) for line in (out / f"trial{trial.number:03d}" / "metrics.jsonl").read_text().splitlines()]
        assert sum("knn_top1_k5" in line for line in lines) == 1
        assert trial.intermediate_values[1] == next(line["knn_top1_k5"] for line in lines if "knn_top1_k5" in line)
        assert not (out / f"trial{trial.number:03d}" / "encoder.pt").exists()


def test_without_labels_the_objective_is_rankme_and_says_so(tmp_path, capsys):
    folder = make_folder(tmp_path / "photos", labelled=False)
    out = tmp_path / "tune"
    assert main(["tune", "--preset", "fmnist-byol", *TRIAL, "data.dataset=image-folder", f"data.data_dir={folder}", "data.image_size=16",
                 "augment.mean=0.5,0.5,0.5", "augment.std=0.25,0.25,0.25", "--trials", "2", "--budget-epochs", "1", "--out", str(out)]) == 0
    assert "objective RankMe of the features (label-free" in capsys.readouterr().out
    study = optuna.load_study(study_name="tune", storage=f"sqlite:///{out / 'study.db'}")
    for trial in study.trials:
        evaluation = json.loads((out / f"trial{trial.number:03d}" / "eval.json").read_text())
        assert trial.value == evaluation["rows"][-1]["geometry"]["rankme"]


def two_processes_share_one_study(tiny_data, out, storage):
    command = [sys.executable, "-m", "nocollapse", "tune", "--preset", "fmnist-byol", *TRIAL, f"data.data_dir={tiny_data}", "--trials", "4",
               "--budget-epochs", "1", "--out", str(out), "--study", "shared", "--storage", storage]
    processes = [subprocess.Popen([*command, "--seed", str(seed)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for seed in (0, 1)]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    study = optuna.load_study(study_name="shared", storage=storage)
    finished = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(finished) >= 4 and len({t.number for t in study.trials}) == len(study.trials)
    assert all(sum(f"trial {t.number}:" in output for output in outputs) == 1 for t in finished)  # each trial ran in one process
    # A study not named after OUT prefixes its trial directories with its name: two studies can share one OUT.
    assert all(Path(t.user_attrs["run_dir"]) == out / f"shared-trial{t.number:03d}" for t in finished)
    assert all((out / f"shared-trial{t.number:03d}" / "config.json").is_file() for t in finished)


def test_two_processes_share_one_sqlite_study(tiny_data, tmp_path):
    two_processes_share_one_study(tiny_data, tmp_path / "tune", f"sqlite:///{tmp_path / 'shared.db'}")


@pytest.mark.skipif(not os.environ.get("NOCOLLAPSE_TEST_POSTGRES"), reason="no PostgreSQL server (.ci/run starts one and sets NOCOLLAPSE_TEST_POSTGRES)")
def test_two_processes_share_one_postgresql_study(tiny_data, tmp_path):
    url = os.environ["NOCOLLAPSE_TEST_POSTGRES"]
    try:
        optuna.delete_study(study_name="shared", storage=url)  # left by an earlier run against the same server
    except KeyError:
        pass
    two_processes_share_one_study(tiny_data, tmp_path / "tune", url)


def test_a_storage_that_cannot_be_opened_is_a_clear_error(tiny_data, tmp_path):
    with pytest.raises(UserError, match="--storage nosuch://x: cannot open it"):
        tune("fmnist-byol", tmp_path / "tune", trials=1, budget_epochs=1, overrides=[*TRIAL, f"data.data_dir={tiny_data}"],
             storage="nosuch://x", log=quiet)


def test_a_trial_the_data_refuses_fails_with_its_reason_and_the_study_stops_after_three_in_a_row(tiny_data, tmp_path, capsys):
    overrides = [item for item in TRIAL if not item.startswith("optim.batch_size=")] + [f"data.data_dir={tiny_data}"]
    with pytest.raises(UserError, match="no trial of tune finished"):
        tune("fmnist-byol", tmp_path / "tune", trials=2, budget_epochs=1, overrides=overrides, space=["optim.batch_size=256|512"])
    printed = capsys.readouterr()
    failures = [line for line in printed.out.splitlines() if line.startswith("trial ")]
    assert len(failures) == 3, printed.out
    for n, line in enumerate(failures):
        assert re.fullmatch(rf"trial {n}: .*optim.batch_size=(\d+) → failed: optim.batch_size=\1 exceeds the 128 pretraining images; lower it", line), line
    assert "Traceback" not in printed.err
    study = optuna.load_study(study_name="tune", storage=f"sqlite:///{tmp_path / 'tune' / 'study.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 3
    # Settings that break a rule only together (a warm-up longer than the budget) fail when the trial's config is built.
    with pytest.raises(UserError, match="no trial of tune-rules finished"):
        tune("fmnist-byol", tmp_path / "tune-rules", trials=2, budget_epochs=1, overrides=[*TRIAL, f"data.data_dir={tiny_data}"],
             space=["optim.warmup_epochs=2:3"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("trial ")]
    assert len(lines) == 3 and all(re.search(r"→ failed: optim.warmup_epochs=2\.\d+: must be at most optim.epochs=1$", line) for line in lines), lines
