"""Typed config: presets, dotted overrides, validation with useful messages."""

import typing

import pytest

from nocollapse.config import PRESETS, Config, describe, resolve_config, valid_keys
from nocollapse.errors import UserError


def test_overrides_are_parsed_to_the_field_types():
    config = resolve_config("fmnist", ["optim.lr=0.5", "optim.epochs=3", "run.amp=false", "augment.blur_prob=0.5,0.1", "data.data_dir=/tmp/x"])
    assert config.optim.lr == 0.5 and config.optim.epochs == 3 and config.run.amp == "false"
    assert config.augment.blur_prob == (0.5, 0.1)
    assert config.data.data_dir == "/tmp/x"
    assert resolve_config("fmnist", ["data.data_dir=none"]).data.data_dir is None


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_resolves_and_round_trips(preset):
    config = resolve_config(preset)
    assert Config.from_dict(config.to_dict()) == config


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(UserError) as error:
        resolve_config("fmnist", ["optim.learning_rate=1"])
    assert "optim.learning_rate" in str(error.value) and "optim.lr" in str(error.value)


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lr=-1", r"optim.lr=-1.0: must be a finite number > 0"),
        ("optim.batch_size=1", "optim.batch_size=1: must be an integer >= 2"),
        ("optim.epochs=abc", "optim.epochs='abc': must be an integer"),
        ("method.byol.ema_base=1.5", "ema_base"),
        ("model.backbone=vit", "model.backbone='vit': must be one of: convnet"),
        ("augment.crop_scale=0.9,0.1", "crop_scale"),
        ("optim.lr", "key=value"),
    ],
)
def test_invalid_values_are_rejected_with_the_field_named(override, message):
    with pytest.raises(UserError, match=message):
        resolve_config("fmnist", [override])


def test_unknown_preset():
    with pytest.raises(UserError, match="presets"):
        resolve_config("imagenet-9000")


def test_describe_shows_values_and_comments():
    text = describe(resolve_config("fmnist"))
    assert "optim.lr=" in text and "base learning rate" in text


@pytest.mark.parametrize("key, suggestion, listed", [
    ("optim.momentun", "did you mean optim.momentum?", "The keys of optim: optim.batch_size"),
    ("regularizers.uniformty", "did you mean regularizers.uniformity", "regularizers.uniformity_t"),
    ("optm.lr", "did you mean optim.lr", "The sections: augment, data, distributed"),
])
def test_an_unknown_key_suggests_the_closest_and_lists_its_section(key, suggestion, listed):
    with pytest.raises(UserError) as error:
        resolve_config("fmnist", [f"{key}=1"])
    assert suggestion in str(error.value) and listed in str(error.value)


def bad_value(key: str) -> tuple[str, str]:
    """A value out of ``key``'s range, chosen by its type, and how the error message shows it."""
    by_key = {"preset": "..", "data.data_dir": "x\0y", "data.cache_dir": "x\0y", "model.init_from": "x\0y", "run.out_dir": "x\0y", "run.name": "a/b", "run.device": "gpu"}
    if key in by_key:
        return by_key[key], repr(by_key[key])
    # Tuples of names: shown comma-separated, unquoted, as on the command line.
    tuple_of_names = {"data.pretrain_splits": "train,nope", "eval.transfer": "cifar10,nope"}
    if key in tuple_of_names:
        return tuple_of_names[key], f"={tuple_of_names[key]}:"
    *sections, name = key.split(".")
    section: object = Config()
    for part in sections:
        section = getattr(section, part)
    kind = str(typing.get_type_hints(type(section))[name])
    if "bool" in kind:
        return "maybe", "'maybe'"
    if "str" in kind:  # a choice
        return "nope", "'nope'"
    if "int" in kind:  # every int setting counts something, from 0 or 1: -1 is out of range
        return "-1", "-1"
    if "float, float" in kind:
        return "nan,1", "nan,1"
    return "nan", "nan"  # every float must be finite


@pytest.mark.parametrize("key", valid_keys())
def test_every_key_refuses_a_bad_value_naming_the_key_and_the_value(key):
    text, shown = bad_value(key)
    with pytest.raises(UserError) as error:
        resolve_config("fmnist", {key: text})
    message = str(error.value)
    assert message.startswith(f"{key}=") and shown in message and "must be" in message, message


@pytest.mark.parametrize("override, message", [
    # Floats are finite: nan fails every comparison by itself, inf passes "> 0" unless checked.
    ("optim.lr=inf", "optim.lr=inf: must be a finite number > 0"),
    ("regularizers.uniformity_t=inf", "regularizers.uniformity_t=inf: must be a finite number > 0"),
    ("augment.crop_ratio=0.5,inf", "augment.crop_ratio=0.5,inf: must be two finite numbers"),
    ("augment.mean=inf", "augment.mean=inf: must be comma-separated values, each a finite number"),
    ("method.sfrik.kernel_weights=1,inf", "method.sfrik.kernel_weights=1.0,inf: must be one or more"),
    ("optim.lr_decay_at=0.5,nan", "optim.lr_decay_at=0.5,nan: must be comma-separated values, each a finite number in (0, 1]"),
    # Sections the chosen method does not read are checked too: a typo there is still a mistake.
    ("method.wmse.eps=1", "method.wmse.eps=1.0: must be a finite number in [0, 1)"),
    ("method.sfrik.mmd=0", "method.sfrik.mmd=0.0: must be a finite number > 0"),
    # Integers and their ranges.
    ("run.seed=9223372036854775808", "run.seed=9223372036854775808: must be an integer in [0, 9223372036854775807]"),
    ("run.seed=1.5", "run.seed='1.5': must be an integer"),
    ("optim.epochs=inf", "optim.epochs='inf': must be an integer"),
    ("model.projector_hidden=0", "model.projector_hidden=0: must be an integer >= 1"),
    ("run.log_every=0", "run.log_every=0: must be an integer >= 1"),
    ("regularizers.mhe_power=3", "regularizers.mhe_power=3: must be one of: 0, 1, 2"),
    # Tuples: lengths and items.
    ("augment.crop_scale=0.2", "augment.crop_scale='0.2': must be exactly 2 comma-separated values, each a number; got 1"),
    ("augment.crop_scale=0.2,0.5,0.9", "augment.crop_scale='0.2,0.5,0.9': must be exactly 2"),
    ("augment.crop_scale=", "augment.crop_scale='': must be exactly 2"),
    ("eval.knn_k=", "eval.knn_k='': must be one or more comma-separated values, each an integer >= 1"),
    ("eval.knn_k=5,0", "eval.knn_k=5,0: must be one or more"),
    ("eval.knn_k=5,x", "eval.knn_k='5,x': must be comma-separated values, each an integer"),
    ("model.widths=8,0", "model.widths=8,0: must be one or more comma-separated values, each an integer >= 1"),
    ("data.pretrain_splits=train,train", "data.pretrain_splits=train,train: must be comma-separated distinct splits out of unlabeled, train, test"),
    ("data.pretrain_splits=val", "data.pretrain_splits=val: must be comma-separated distinct splits"),
    ("augment.blur_prob=", "augment.blur_prob='': must be one or more comma-separated values, each a finite number in [0, 1]"),
    # Names and paths.
    ("run.name=..", "run.name='..': must be empty (the default"),
    ("run.name=a\\b", "run.name='a\\\\b': must be empty"),
    ("run.out_dir=runs\0x", "run.out_dir='runs\\x00x': must be a directory path without NUL bytes"),
    ("run.device=cuda:128", "run.device='cuda:128': must be one of: auto, cpu, cuda, cuda:N (N in 0..127), mps"),
    # Relations between keys.
    ("optim.warmup_epochs=8", "optim.warmup_epochs=8.0: must be at most optim.epochs=7"),
    ("augment.crop_scale=0.9,0.1", "augment.crop_scale=0.9,0.1: must be two finite numbers min,max with 0 < min <= max <= 1"),
    ("augment.std=0.3,0.3", "augment.std=0.3,0.3: must be as many values as augment.mean (1)"),
])
def test_messages_name_the_key_the_value_and_what_is_allowed(override, message):
    with pytest.raises(UserError) as error:
        resolve_config("fmnist", [override])
    assert str(error.value).startswith(message), str(error.value)


@pytest.mark.parametrize("overrides", [["method.name=sfrik", "model.projection_dim=1"],
                                       ["regularizers.kernel_uniformity=1", "model.projection_dim=1"]])
def test_the_kernel_uniformity_needs_two_dimensions(overrides):
    with pytest.raises(UserError, match=r"model.projection_dim=1: must be at least 2 with"):
        resolve_config("fmnist", overrides)


def test_a_blank_run_name_is_refused_but_an_empty_one_means_the_default():
    assert resolve_config("fmnist", {"run.name": ""}).run.name == ""
    with pytest.raises(UserError, match="run.name='  '"):
        resolve_config("fmnist", {"run.name": "  "})
