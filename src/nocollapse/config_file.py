"""Config files: a preset name plus overrides, in TOML or JSON, with the command line's keys.

``read_config_file(path)`` returns ``(preset, overrides)`` for :func:`~nocollapse.config.resolve_config`;
``write_config_file(config, path)`` saves a resolved config as a file that reads back to the same config.
A file may nest its keys in sections (``[optim]`` then ``lr = 0.5``, or a run's ``config.json``) or spell
them dotted (``"optim.lr" = 0.5``); both mean the override ``optim.lr=0.5``. Values keep their types
(``crop_scale = [0.8, 1.0]``), and an empty string stands for an unset optional value (``data_dir = ""``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from nocollapse.config import PRESETS, Config, field_comments, flatten, resolve_config, set_value, split_overrides, validate
from nocollapse.errors import UserError
from nocollapse.train.checkpoint import atomic_write_bytes

SUFFIXES = (".toml", ".json")


def read_config_file(path: str | Path) -> tuple[str | None, dict[str, Any]]:
    """The file's ``preset`` (None when it names none) and its other keys, flattened to dotted overrides."""
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise UserError(f"--config {path}: the suffix must be .toml or .json, which says how to read it")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"--config {path}: no such file; `nocollapse config --preset P --save {path}` writes one") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"--config {path}: cannot read it ({error})") from None
    values = _parse_toml(text, path) if path.suffix == ".toml" else _parse_json(text, path)
    if not isinstance(values, dict):
        raise UserError(f"--config {path}: the file must hold a table of settings (an object), not a {type(values).__name__}")
    overrides = flatten(values)
    preset = overrides.pop("preset", None)
    if preset is not None and preset not in PRESETS:
        raise UserError(f"--config {path}: unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    return preset, overrides


def _parse_toml(text: str, path: Path) -> Any:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise UserError(f"--config {path}: reading TOML on Python 3.10 needs `pip install tomli` (or write the file as JSON)") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"--config {path}: not valid TOML: {error}") from None


def _parse_json(text: str, path: Path) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"--config {path}: not valid JSON: {error}") from None


def config_from_file(path: str | Path, preset: str | None = None, overrides: list[str] | None = None) -> Config:
    """The config a file describes, with ``preset`` (when given) instead of the file's and ``overrides``
    (``["optim.lr=0.5"]``) applied after its keys: the command line wins over the file."""
    file_preset, file_overrides = read_config_file(path)
    config = resolve_config(preset or file_preset or "fmnist")
    for key, value in file_overrides.items():
        try:
            set_value(config, key, value)
        except UserError as error:  # a key or value the file got wrong: say which file
            raise UserError(f"--config {path}: {error}") from None
    for key, value in split_overrides(overrides or []):
        set_value(config, key, value)
    try:
        validate(config)
    except UserError as error:
        raise UserError(f"{error} (settings from --config {path} and the command line)") from None
    return config


def write_config_file(config: Config, path: str | Path, *, force: bool = False) -> Path:
    """Save every setting of ``config`` to ``path`` (.toml, with each key's comment, or .json); reading it back
    with :func:`config_from_file` gives the same config, whatever the presets become later."""
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise UserError(f"--save {path}: the suffix must be .toml or .json, which says how to write it")
    if path.exists() and not force:
        raise UserError(f"--save {path}: the file exists; pass --force to overwrite it")
    values = config.to_dict()
    text = toml_text(values) if path.suffix == ".toml" else json.dumps(_without_none(values), indent=2) + "\n"
    atomic_write_bytes(path, lambda file: file.write(text.encode("utf-8")))  # processes may write one file at once (tune's best.toml)
    return path


def _without_none(values: dict[str, Any]) -> dict[str, Any]:
    """None as the empty string, which every optional setting reads as unset (TOML has no null)."""
    return {key: _without_none(value) if isinstance(value, dict) else "" if value is None else value for key, value in values.items()}


def toml_text(values: dict[str, Any]) -> str:
    """A config's nested dict as TOML: ``preset`` first, then one table per section, each key with its comment."""
    comments = field_comments()
    lines = ["# nocollapse config: `nocollapse train --config FILE [key=value ...]` (the command line wins over the file).",
             "# `nocollapse config` describes every key; leave out any you do not want to fix: the preset gives it.",
             f"preset = {_toml_value(values['preset'])}"]

    def table(section: dict[str, Any], prefix: str) -> None:
        lines.append(f"\n[{prefix}]")
        for key, value in section.items():
            if not isinstance(value, dict):
                comment = comments.get(f"{prefix}.{key}")
                lines.append(f"{key} = {_toml_value(value)}" + (f"  # {comment}" if comment else ""))
        for key, value in section.items():
            if isinstance(value, dict):
                table(value, f"{prefix}.{key}")

    for name, section in _without_none(values).items():
        if isinstance(section, dict):
            table(section, name)
    return "\n".join(lines) + "\n"


def _toml_string(text: str) -> str:
    """A TOML basic string: JSON's escapes for quotes, backslashes and control characters, ``\\u007f`` for DEL (JSON leaves
    it raw, TOML refuses it), every other character as UTF-8. A lone surrogate (an undecodable file name) has no TOML form."""
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in text):
        raise UserError(f"{text!r} holds a character that is not valid Unicode (a file name in another encoding?); "
                        "save the config as .json instead")
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else "nan" if math.isnan(value) else repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")  # a new config field of a type this writer does not know: a bug
