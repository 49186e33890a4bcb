"""The training loop end to end on generated data: runs, checkpoints, resumes exactly, and its CLI."""

import hashlib
import json

import pytest
import torch

from conftest import TINY_RUN
from nocollapse.cli import main
from nocollapse.config import resolve_config
from nocollapse.report.runs import load_run
from nocollapse.report.seeds import setting_key
from nocollapse.train.loop import Trainer, changed_training_keys


def tiny_config(data_dir, out_dir, *extra):
    return resolve_config("fmnist", [*TINY_RUN, f"data.data_dir={data_dir}", f"run.out_dir={out_dir}", "run.device=cpu", *extra])


def test_a_short_run_trains_logs_and_checkpoints(tiny_data, tmp_path):
    trainer = Trainer(tiny_config(tiny_data, tmp_path, "run.name=a"), progress=False, log=lambda *_: None)
    before = [p.clone() for p in trainer.method.encoder.parameters()]
    run_dir = trainer.fit()
    assert trainer.step == trainer.total_steps == 8
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.method.encoder.parameters()))
    for name in ("config.json", "environment.json", "metrics.jsonl", "checkpoint.pt", "encoder.pt"):
        assert (run_dir / name).is_file(), name
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 4 and all(0 <= v <= 8 for v in losses)
    assert sum(1 for r in records if "knn_top1_k5" in r) == 2  # the monitor ran after each epoch
    assert json.loads((run_dir / "config.json").read_text())["optim"]["batch_size"] == 32


def test_the_target_follows_the_online_network(tiny_data, tmp_path):
    trainer = Trainer(tiny_config(tiny_data, tmp_path, "run.name=ema"), progress=False, log=lambda *_: None)
    target = trainer.method.target.network
    start = [p.clone() for p in target.parameters()]
    trainer.fit()
    online = list(trainer.method.encoder.parameters()) + list(trainer.method.projector.parameters())
    moved = [not torch.equal(a, b) for a, b in zip(start, target.parameters())]
    assert all(moved), "every target parameter must move by EMA"
    assert any(not torch.equal(a, b) for a, b in zip(online, target.parameters())), "the target lags the online network"
    assert all(not p.requires_grad for p in target.parameters())


@pytest.mark.parametrize("method", [[], ["method.name=msbreg", "augment.num_views=3", "regularizers.singular_value=1", "regularizers.brownian=0.5"]],
                         ids=["byol", "msbreg+sv+bd"])
def test_resume_from_a_mid_epoch_checkpoint_gives_the_uninterrupted_weights(tiny_data, tmp_path, monkeypatch, method):
    # MSBReg's Brownian kicks come from a per-step generator: a resumed run must draw the same ones.
    extra = ["optim.epochs=3", "run.checkpoint_every=3", "run.log_every=4", *method]
    straight = Trainer(tiny_config(tiny_data, tmp_path, "run.name=straight", *extra), progress=False, log=lambda *_: None)
    straight.fit()

    interrupted = Trainer(tiny_config(tiny_data, tmp_path, "run.name=resumed", *extra), progress=False, log=lambda *_: None)
    real_step = Trainer.train_step

    def crash_at_step_7(self, images, *generators):
        if self.step == 7:  # 4 steps an epoch: the last checkpoint is at step 6, mid-epoch and mid-log-window (log_every=4)
            raise KeyboardInterrupt
        return real_step(self, images, *generators)

    monkeypatch.setattr(Trainer, "train_step", crash_at_step_7)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    monkeypatch.setattr(Trainer, "train_step", real_step)

    resumed = Trainer(tiny_config(tiny_data, tmp_path, "run.name=resumed", *extra), resume=True, progress=False, log=lambda *_: None)
    assert resumed.step == 6
    resumed.fit()
    straight_state, resumed_state = straight.method.state_dict(), resumed.method.state_dict()
    assert straight_state.keys() == resumed_state.keys()
    for name, value in straight_state.items():
        assert torch.equal(value, resumed_state[name]), f"{name} differs after resume"
    straight_lines = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    resumed_lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    resumed_records = [json.loads(line) for line in resumed_lines]
    assert [r["step"] for r in resumed_records if "resumed" in r] == [6], "the resume is recorded with its environment"
    resumed_lines = [line for line, record in zip(resumed_lines, resumed_records) if "resumed" not in record]
    timings = ("img/s", "monitor_seconds")
    strip = lambda lines: [{k: v for k, v in json.loads(line).items() if k not in timings} for line in lines]
    assert strip(straight_lines) == strip(resumed_lines), "metrics after resume equal the uninterrupted run's"


def test_resume_refuses_a_changed_training_config(tiny_data, tmp_path):
    Trainer(tiny_config(tiny_data, tmp_path, "run.name=r"), progress=False, log=lambda *_: None).fit()
    with pytest.raises(Exception, match="optim.lr"):
        Trainer(tiny_config(tiny_data, tmp_path, "run.name=r", "optim.lr=0.1"), resume=True, progress=False, log=lambda *_: None)


def test_a_resume_may_move_and_re_evaluate_a_run_but_not_change_what_it_trains():
    saved = resolve_config("fmnist-byol", [])
    harmless = ["run.out_dir=elsewhere", "run.name=other", "run.device=cpu", "run.log_every=7", "data.data_dir=/data",
                "data.stream=disk", "eval.knn_k=5", "eval.linear_probe=false", "run.amp=false", "run.channels_last=false"]
    assert changed_training_keys(saved, resolve_config("fmnist-byol", harmless)) == []
    changed = changed_training_keys(saved, resolve_config("fmnist-byol", [*harmless, "run.seed=1", "optim.lr=0.1", "augment.crop_scale=0.2,1"]))
    assert changed == ["augment.crop_scale: (0.8, 1.0) → (0.2, 1.0)", "optim.lr: 1.0 → 0.1", "run.seed: 0 → 1"]


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_train_then_eval_prints_the_table_with_baselines(tiny_data, tmp_path, capsys):
    args = ["train", "--quiet", "--data-dir", str(tiny_data), *TINY_RUN, f"run.out_dir={tmp_path}", "run.name=cli", "run.device=cpu"]
    assert main(args) == 0
    out = capsys.readouterr().out
    for row in ("raw pixels", "random convnet", "byol convnet", "kNN k=5", "kNN k=20", "linear top1", "fashion-mnist test split, geometry of their embeddings", "byol projections"):
        assert row in out, row
    saved = json.loads((tmp_path / "cli" / "eval.json").read_text())
    assert [r["name"] for r in saved["rows"]] == ["raw pixels", "random convnet", "byol convnet"]
    assert [r["name"] for r in saved["projections"]] == ["random byol projections", "byol projections"]
    assert all(0 <= r["knn"]["5"] <= 1 for r in saved["rows"])

    written = setting_key(load_run(tmp_path / "cli"))
    assert main(["eval", str(tmp_path / "cli"), "eval.knn_k=3", "eval.linear_probe=false", "eval.baselines=false"]) == 0
    out = capsys.readouterr().out
    assert "kNN k=3" in out and "raw pixels" not in out
    # config.json keeps what training wrote; eval.json says what its figures came from, and the report reads that.
    assert json.loads((tmp_path / "cli" / "config.json").read_text())["eval"]["knn_k"] == [5, 20]
    assert json.loads((tmp_path / "cli" / "eval.json").read_text())["eval_config"]["knn_k"] == [3]
    record = load_run(tmp_path / "cli")
    assert record.final_eval["knn_k"] == (3,) and record.final_eval["baselines"] is False and record.config["eval"]["knn_k"] == (5, 20)
    assert setting_key(record) != written, "a run re-evaluated otherwise is not a seed of the same setting"
    assert main(["eval", str(tmp_path / "cli"), "eval.monitor_every=2"]) == 2
    assert "acts while training" in capsys.readouterr().err

    # Starting again in the same directory is refused and the finished run is untouched.
    checkpoint = tmp_path / "cli" / "checkpoint.pt"
    digest = sha(checkpoint)
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert sha(checkpoint) == digest


@pytest.mark.parametrize(
    "override, message",
    [("optim.lr=-1", "optim.lr=-1.0: must be a finite number > 0"), ("optim.batch_size=1", "optim.batch_size=1: must be an integer >= 2"), ("optim.momentun=0.9", "unknown config key")],
)
def test_cli_rejects_bad_settings_without_a_traceback(tiny_data, tmp_path, capsys, override, message):
    runs = tmp_path / "runs"
    assert main(["train", "--quiet", "--data-dir", str(tiny_data), f"run.out_dir={runs}", override]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not runs.exists(), "nothing is written for a rejected config"


def test_cli_reports_a_missing_dataset_with_the_fix(tmp_path, capsys):
    assert main(["train", "--quiet", "--data-dir", str(tmp_path / "nowhere"), f"run.out_dir={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err
    assert "apt-get install dataset-fashion-mnist" in err and "nocollapse download fashion-mnist" in err


def test_cli_reports_a_corrupt_dataset(tiny_data, tmp_path, capsys):
    images = tiny_data / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:100])  # truncated download
    assert main(["train", "--quiet", "--data-dir", str(tiny_data), f"run.out_dir={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte.gz" in err and "Traceback" not in err


def test_overrides_may_come_before_and_after_options_in_order(capsys):
    assert main(["config", "optim.lr=0.5", "--preset", "fmnist-wmse2", "optim.lr=0.25", "model.depth=2", "--json"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert (config["preset"], config["optim"]["lr"], config["model"]["depth"]) == ("fmnist-wmse2", 0.25, 2)
    with pytest.raises(SystemExit) as exit_:
        main(["config", "optim.lr=0.5", "--preset", "fmnist", "stray"])
    assert exit_.value.code == 2 and "unrecognized arguments: stray" in capsys.readouterr().err


def test_cli_compile_flag_compiles_the_methods_step(tiny_data, tmp_path, monkeypatch):
    """``--compile`` is ``run.compile=true``: the method the step calls is torch.compile's (spied on: compiling
    for real takes minutes on a CPU), and the run records the setting."""
    compiled = []

    def spy(model, **options):
        compiled.append(model)
        return model

    monkeypatch.setattr(torch, "compile", spy)
    args = ["train", "--compile", "--no-eval", "--no-report", "--quiet", *TINY_RUN, "optim.epochs=1", f"data.data_dir={tiny_data}",
            f"run.out_dir={tmp_path}", "run.name=compiled", "run.device=cpu"]
    assert main(args) == 0
    assert len(compiled) == 1 and hasattr(compiled[0], "update_target")  # the BYOL method itself, not a part of it
    assert json.loads((tmp_path / "compiled" / "config.json").read_text())["run"]["compile"] is True


def test_cli_help_documents_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in ("train", "eval", "config", "download"):
        assert command in out
    assert main(["config"]) == 0
    assert "optim.lr=" in capsys.readouterr().out


def test_cli_resume_takes_the_runs_own_settings(tiny_data, tmp_path, capsys, monkeypatch):
    base = ["train", "--quiet", "--no-eval", "--data-dir", str(tiny_data), *TINY_RUN, f"run.out_dir={tmp_path}", "run.name=long", "run.device=cpu"]
    real_step = Trainer.train_step

    def crash_at_step_6(self, images, *generators):
        if self.step == 6:
            raise KeyboardInterrupt
        return real_step(self, images, *generators)

    monkeypatch.setattr(Trainer, "train_step", crash_at_step_6)
    assert main([*base, "optim.epochs=3"]) == 130
    monkeypatch.setattr(Trainer, "train_step", real_step)
    metrics = tmp_path / "long" / "metrics.jsonl"
    with open(metrics, "a") as file:
        file.write('{"step": 7, "los')  # a line cut short by the kill
    # As documented: resume names the run only; its epochs (3, not the preset's 2) come from the run itself.
    assert main(["train", "--quiet", "--no-eval", "--resume", f"run.out_dir={tmp_path}", "run.name=long", "--data-dir", str(tiny_data)]) == 0
    assert json.loads(metrics.read_text().splitlines()[-1])["step"] == 12
    assert main(["train", "--quiet", "--resume", f"run.out_dir={tmp_path}", "run.name=long", "optim.lr=0.1"]) == 2
    assert "optim.lr" in capsys.readouterr().err


def test_each_step_uses_the_scheduled_lr_and_tau_and_updates_the_target_after_the_step(tiny_data, tmp_path, monkeypatch):
    from nocollapse.train.schedules import ema_momentum, warmup_cosine

    trainer = Trainer(tiny_config(tiny_data, tmp_path, "run.name=sched", "eval.monitor_every=0"), progress=False, log=lambda *_: None)
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in trainer.method.target.parameters()}, "the target is never optimised"
    assert {id(p) for p in trainer.method.predictor.parameters()} <= optimised
    excluded = {id(p) for g in trainer.optimizer.param_groups if g["lars_exclude"] for p in g["params"]}
    assert all((id(p) in excluded) == (p.ndim < 2) for p in trainer.method.parameters() if id(p) in optimised)

    seen = []
    real_update = type(trainer.method).update_target

    def spy(method, momentum):
        # Called after optimizer.step(): the lr of the step just taken is still in the groups.
        seen.append((trainer.step, trainer.optimizer.param_groups[0]["lr"], momentum))
        real_update(method, momentum)

    monkeypatch.setattr(type(trainer.method), "update_target", spy)
    trainer.fit()
    total, warmup, base_lr = trainer.total_steps, trainer.warmup_steps, trainer.base_lr
    assert [s for s, _, _ in seen] == list(range(total))
    for step, lr, tau in seen:
        assert lr == pytest.approx(warmup_cosine(step, total, base=base_lr, warmup_steps=warmup))
        assert tau == pytest.approx(ema_momentum(step, total, base=trainer.config.method.byol.ema_base))
