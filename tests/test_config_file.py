"""Config files: every preset survives a TOML and a JSON round trip, the command line wins over the file, and
every mistake in a file is named with the file, the key and what is allowed."""

import json

import pytest

from conftest import TINY_RUN
from nocollapse.cli import main
from nocollapse.config import PRESETS, resolve_config
from nocollapse.config_file import config_from_file, read_config_file, write_config_file
from nocollapse.errors import UserError


@pytest.mark.parametrize("suffix", [".toml", ".json"])
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_reads_back_from_its_file_as_the_same_config(tmp_path, preset, suffix):
    config = resolve_config(preset, ["optim.lr=0.123", "data.data_dir=/data/x", "augment.crop_scale=0.3,0.9"])
    path = write_config_file(config, tmp_path / f"c{suffix}")
    assert config_from_file(path).to_dict() == config.to_dict()


def test_an_unset_optional_value_and_an_empty_list_survive_the_round_trip(tmp_path):
    config = resolve_config("fmnist", ["data.data_dir=none", "optim.lr_decay_at=", "run.name="])
    assert config.data.data_dir is None and config.optim.lr_decay_at == ()
    read = config_from_file(write_config_file(config, tmp_path / "c.toml"))
    assert read.data.data_dir is None and read.optim.lr_decay_at == () and read.run.name == ""


def test_characters_beyond_the_basic_plane_survive_a_toml_file(tmp_path):
    config = resolve_config("fmnist", ["data.data_dir=/data/🐱 photos/été", 'run.name=a"b'])
    assert config_from_file(write_config_file(config, tmp_path / "c.toml")).to_dict() == config.to_dict()


def test_a_saved_toml_file_documents_each_key(tmp_path):
    text = write_config_file(resolve_config("fmnist"), tmp_path / "c.toml").read_text()
    assert 'preset = "fmnist"' in text.splitlines()[2]
    assert "\n[optim]\n" in text and "\n[method.byol]\n" in text
    assert "lr = 1.0  # base learning rate for a batch of 256" in text


def test_a_file_of_a_few_keys_starts_from_its_preset_and_the_command_line_wins(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('preset = "fmnist-byol"\n"optim.epochs" = 3\n[optim]\nlr = 0.3\n[augment]\ncrop_scale = [0.5, 1.0]\n')
    config = config_from_file(path)
    expected = resolve_config("fmnist-byol", ["optim.epochs=3", "optim.lr=0.3", "augment.crop_scale=0.5,1.0"])
    assert config.to_dict() == expected.to_dict()
    assert config_from_file(path, overrides=["optim.lr=0.7"]).optim.lr == 0.7
    other = config_from_file(path, preset="fmnist-wmse2")  # --preset on the command line replaces the file's
    assert other.method.name == "wmse" and other.optim.lr == 0.3 and other.preset == "fmnist-wmse2"


def test_a_runs_config_json_is_a_config_file(tiny_data, tmp_path):
    args = ["train", "--quiet", "--no-report", "--data-dir", str(tiny_data), *TINY_RUN, f"run.out_dir={tmp_path}", "run.name=first", "run.device=cpu"]
    assert main(args) == 0
    saved = tmp_path / "first" / "config.json"
    assert main(["train", "--quiet", "--no-report", "--config", str(saved), "run.name=again"]) == 0
    first, again = (json.loads((tmp_path / name / "config.json").read_text()) for name in ("first", "again"))
    assert again.pop("run")["name"] == "again" and first.pop("run")["name"] == "first"
    assert first == again
    scores = [[{key: value for key, value in row.items() if key != "seconds"} for row in json.loads((tmp_path / name / "eval.json").read_text())["rows"]]
              for name in ("first", "again")]
    assert scores[0] == scores[1]  # the same settings and seed: the same run


@pytest.mark.parametrize("name, text, message", [
    ("c.toml", "[optim]\nlrr = 0.5\n", "--config {path}: unknown config key 'optim.lrr'; did you mean optim.lr?"),
    ("c.toml", "[optim]\nlr = 'fast'\n", "--config {path}: optim.lr='fast': must be a number"),
    ("c.toml", "[optim]\nlr = -1\n", "(settings from --config {path} and the command line)"),
    ("c.toml", "[optim\nlr = 1\n", "--config {path}: not valid TOML"),
    ("c.toml", 'preset = "fmnst"\n', "--config {path}: unknown preset 'fmnst'; presets: fmnist,"),
    ("c.json", "[1, 2]", "--config {path}: the file must hold a table of settings (an object), not a list"),
    ("c.json", '{"optim": {"lr": 0.5,}}', "--config {path}: not valid JSON"),
    ("c.yaml", "optim: {lr: 1}", "--config {path}: the suffix must be .toml or .json"),
])
def test_a_mistake_in_a_file_names_the_file_and_what_is_allowed(tmp_path, capsys, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UserError) as caught:
        config_from_file(path)
    assert message.format(path=path) in str(caught.value)
    assert main(["train", "--config", str(path), f"run.out_dir={tmp_path / 'runs'}"]) == 2
    assert message.format(path=path) in capsys.readouterr().err
    assert not (tmp_path / "runs").exists(), "nothing is written for a rejected config"


def test_a_missing_file_says_how_to_write_one(tmp_path):
    with pytest.raises(UserError, match="no such file; `nocollapse config --preset P --save"):
        read_config_file(tmp_path / "nowhere.toml")


def test_config_save_writes_a_file_that_trains_the_same_settings_and_does_not_overwrite(tmp_path, capsys):
    path = tmp_path / "wmse.toml"
    assert main(["config", "--preset", "fmnist-wmse2", "optim.lr=0.002", "--save", str(path)]) == 0
    assert f"nocollapse train --config {path}" in capsys.readouterr().out
    assert config_from_file(path).to_dict() == resolve_config("fmnist-wmse2", ["optim.lr=0.002"]).to_dict()
    assert main(["config", "--preset", "fmnist", "--save", str(path)]) == 2
    assert "pass --force to overwrite" in capsys.readouterr().err
    assert main(["config", "--preset", "fmnist", "--save", str(path), "--force"]) == 0
    assert read_config_file(path)[0] == "fmnist"
    capsys.readouterr()
    assert main(["config", "--config", str(path), "optim.lr=0.25", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["optim"]["lr"] == 0.25
