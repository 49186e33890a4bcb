"""Typed config: presets, dotted overrides, validation with useful messages."""

import pytest

from nocollapse.config import PRESETS, Config, describe, resolve_config
from nocollapse.errors import UserError


def test_overrides_are_parsed_to_the_field_types():
    config = resolve_config("fmnist", ["optim.lr=0.5", "optim.epochs=3", "run.amp=false", "augment.blur_prob=0.5,0.1", "data.data_dir=/tmp/x"])
    assert config.optim.lr == 0.5 and config.optim.epochs == 3 and config.run.amp is False
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
        ("optim.lr=-1", "optim.lr must be positive"),
        ("optim.batch_size=1", "at least 2"),
        ("optim.epochs=abc", "not a valid int"),
        ("method.byol.ema_base=1.5", "ema_base"),
        ("model.backbone=vit", "not one of"),
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
