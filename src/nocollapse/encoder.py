"""A trained encoder and the preprocessing it expects, saved with each run and loaded anywhere.

A run writes ``encoder.safetensors``: the encoder's weights and, in the header, everything needed to rebuild
it and feed it (:data:`ENCODER_FORMAT` 2): the architecture (backbone, widths, depth, stem, input channels)
and the preprocessing contract (image side, channels, per-channel mean and std). :func:`load_encoder`
rebuilds the encoder from a run directory or from that file alone and returns it with a :class:`Preprocess`,
so that ``encoder(preprocess(images))`` gives exactly the features ``nocollapse embed`` writes. Headers of
format 1 (no format key: runs before the contract was recorded) still load; their mean and std come from the
run directory's config.json, or are taken as none when the file comes alone.

The preprocessing contract, as the evaluation applies it:

- files and Pillow images are decoded as an image folder is for training (:func:`~nocollapse.data.folder.fit_image`:
  EXIF rotation, centre crop to a square, bicubic resize to ``image_size``), in mode "L" for a one-channel
  encoder and "RGB" for a three-channel one (grayscale files are repeated over the channels, as training
  does; colour files for a grayscale encoder take Pillow's luma, ``L = 0.299 R + 0.587 G + 0.114 B``);
- tensors (B, C, H, W), uint8 in 0..255 or floats in [0, 1], are taken as decoded: C = 1 into a
  three-channel encoder is repeated, C = 3 into a one-channel encoder takes the same luma (Pillow's integer
  formula for uint8); another side than ``image_size`` is centre-cropped and resized with torch's
  antialiased bicubic (close to Pillow's, not bit-equal: pass files for the training decode exactly);
- then ``x / 255`` and ``(x − mean) / std`` per channel when the run standardised its inputs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nocollapse import __version__
from nocollapse.errors import UserError
from nocollapse.eval.features import normalize_images, standardize
from nocollapse.nn.backbones import build_backbone

ENCODER_FORMAT = 2  # of the safetensors header; 1: before "format", mean and std were recorded
ENCODER_FILE = "encoder.safetensors"
_ARCHITECTURE_KEYS = ("backbone", "widths", "depth", "stem", "in_channels", "image_size")


@dataclass(frozen=True)
class Preprocess:
    """What an encoder's inputs must be: ``preprocess(images)`` turns images into its (B, C, S, S) float32 input.

    ``images``: a sequence of image file paths or Pillow images, or a (B, C, H, W) / (C, H, W) tensor (uint8, or
    floats in [0, 1]); see the module doc for the rules. A tensor comes back on its own device.
    """

    image_size: int
    in_channels: int
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __call__(self, images: Any) -> Tensor:
        if not isinstance(images, Tensor):
            images = self.read(images)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4:
            raise UserError(f"images must be (B, C, H, W) or (C, H, W), got shape {tuple(images.shape)}")
        images = self._resized(self._channels(images))
        if images.dtype == torch.uint8:
            return normalize_images(images, self.mean, self.std)
        return standardize(images.float(), self.mean, self.std)

    def read(self, images: Sequence[Any]) -> Tensor:
        """(B, C, S, S) uint8 of image files (paths) or Pillow images, decoded as training decodes an image folder."""
        from nocollapse.data.folder import _decode, _import_pillow, fit_image

        Image = _import_pillow()
        mode = "L" if self.in_channels == 1 else "RGB"
        decoded = [fit_image(image, self.image_size, mode) if isinstance(image, Image.Image) else _decode(Path(image), self.image_size, mode)
                   for image in images]
        if not decoded:
            return torch.empty((0, self.in_channels, self.image_size, self.image_size), dtype=torch.uint8)
        stacked = np.stack(decoded)
        return torch.from_numpy(stacked[:, None] if mode == "L" else stacked.transpose(0, 3, 1, 2).copy())

    def _channels(self, images: Tensor) -> Tensor:
        channels = images.shape[1]
        if channels == self.in_channels:
            return images
        if channels == 1 and self.in_channels == 3:
            return images.expand(-1, 3, -1, -1)
        if channels == 3 and self.in_channels == 1:
            if images.dtype == torch.uint8:  # Pillow's convert("L"): L = (19595 R + 38470 G + 7471 B + 2^15) >> 16
                weights = torch.tensor([19595, 38470, 7471], device=images.device).view(1, 3, 1, 1)
                return ((images.long() * weights).sum(1, keepdim=True) + 32768).bitwise_right_shift(16).to(torch.uint8)
            weights = torch.tensor([0.299, 0.587, 0.114], device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
            return (images * weights).sum(1, keepdim=True)
        raise UserError(f"the images have {channels} channels; this encoder takes {self.in_channels} "
                        f"({'grayscale' if self.in_channels == 1 else 'RGB'}; 1 and 3 are converted)")

    def _resized(self, images: Tensor) -> Tensor:
        height, width = images.shape[-2:]
        if height == width == self.image_size:
            return images
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        square = images[..., top : top + side, left : left + side]
        as_float = square.float() / 255 if images.dtype == torch.uint8 else square.float()
        resized = F.interpolate(as_float, size=(self.image_size, self.image_size), mode="bicubic", antialias=True, align_corners=False)
        return resized.clamp(0, 1)  # floats in [0, 1] from here: bicubic overshoots

    def to_dict(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "in_channels": self.in_channels, "mean": list(self.mean), "std": list(self.std)}


class LoadedEncoder(NamedTuple):
    """What :func:`load_encoder` gives: ``encoder, preprocess = load_encoder(path)``; ``metadata`` is the file's header."""

    encoder: nn.Module
    preprocess: Preprocess
    metadata: dict[str, str]


def encoder_metadata(config: Any, in_channels: int, image_size: int) -> dict[str, str]:
    """The safetensors header of a run's encoder (all values strings, as the format requires)."""
    from nocollapse.nn.backbones import resolve_stem

    m, a = config.model, config.augment
    return {"format": str(ENCODER_FORMAT), "nocollapse": __version__, "backbone": m.backbone, "widths": ",".join(map(str, m.widths)),
            "depth": str(m.depth), "stem": resolve_stem(m.stem, image_size), "in_channels": str(in_channels), "image_size": str(image_size),
            "mean": ",".join(map(repr, a.mean)), "std": ",".join(map(repr, a.std)), "method": config.method.name,
            "dataset": config.data.dataset}


def read_weights(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str], Path]:
    """(state dict, header, file) of an encoder: a run directory (its ``encoder.safetensors``, else ``encoder.pt``), a
    ``.safetensors`` file, or a ``.pt``/``.pth`` state dict (loaded with ``weights_only=True``: no code runs; header {})."""
    source = Path(os.path.expanduser(os.fspath(path)))
    if source.is_dir():
        for name in (ENCODER_FILE, "encoder.pt"):
            if (source / name).is_file():
                source = source / name
                break
        else:
            raise UserError(f"{source} holds no {ENCODER_FILE} or encoder.pt: the run has not finished (`nocollapse train --resume` it), "
                            "or this is not a run directory")
    if not source.is_file():
        raise UserError(f"{source} does not exist: pass a run directory, an {ENCODER_FILE} or a state dict (.pt)")
    if source.suffix == ".safetensors":
        return (*_read_safetensors(source), source)
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as error:  # pickled code, a truncated or foreign file: refused, never executed
        raise UserError(f"cannot load {source} as weights ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
                        "only files that load with torch.load(weights_only=True) (tensors, no code) or .safetensors are accepted") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # the usual wrapper of other training scripts
    if not isinstance(state, dict) or not state or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise UserError(f"{source} is not a state dict (a mapping of names to tensors)")
    return state, {}, source


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in chunks: what a run records of the weights it started from."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as file:
            header = dict(file.metadata() or {})
            state = {name: file.get_tensor(name) for name in file.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise UserError(f"cannot read {path} ({error}): the file is truncated, damaged or not safetensors; take it again from its run") from None
    version = int(header.get("format", "1")) if header.get("format", "1").isdigit() else -1
    if version < 1 or version > ENCODER_FORMAT:
        raise UserError(f"{path} is of encoder format {header.get('format')!r}, newer than this nocollapse reads ({ENCODER_FORMAT}); "
                        "upgrade nocollapse (pip install -U nocollapse)")
    return state, header


def load_state(module: nn.Module, state: dict[str, Tensor], source: Path | str) -> None:
    """Load ``state`` into ``module``, or say which tensor does not fit (the first, in the module's order): a name the
    module lacks or has but ``state`` has not, or another shape."""
    own = module.state_dict()
    for name, tensor in own.items():
        if name not in state:
            raise UserError(f"{source} has no tensor {name} {tuple(tensor.shape)}, which this encoder has: it is from another architecture "
                            "(check model.backbone, model.widths, model.depth, model.stem)")
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise UserError(f"{source}: tensor {name} is {tuple(state[name].shape)}, this encoder's is {tuple(tensor.shape)}: another "
                            "architecture or input channels (check model.backbone, model.widths, model.depth, model.stem)")
    extra = [name for name in state if name not in own]
    if extra:
        raise UserError(f"{source} has tensor {extra[0]} {tuple(state[extra[0]].shape)}, which this encoder has not"
                        f"{f' (and {len(extra) - 1} more)' if len(extra) > 1 else ''}: it is from another architecture")
    module.load_state_dict(state)


def load_encoder(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> LoadedEncoder:
    """The encoder of a run directory, of its ``encoder.safetensors`` alone, or of a ``.pt`` state dict inside a run
    directory (its config.json gives the architecture), in eval mode on ``device``, with its :class:`Preprocess`."""
    state, header, source = read_weights(path)
    config_file = source.parent / "config.json"
    settings = json.loads(config_file.read_text()) if config_file.is_file() else None
    if not all(key in header for key in _ARCHITECTURE_KEYS):
        if settings is None:
            raise UserError(f"{source} does not say which architecture it is (no nocollapse header, no config.json beside it); pass its "
                            f"run directory or its {ENCODER_FILE}, or start a run from it with model.init_from={source}")
        header = {**_header_from_settings(settings, state), **header}
    if settings is not None and "mean" not in header:  # format 1: the run directory knows the normalisation
        augment = settings.get("augment", {})
        header = {**header, "mean": ",".join(map(repr, augment.get("mean", ()))), "std": ",".join(map(repr, augment.get("std", ())))}
    encoder = build_backbone(header["backbone"], in_channels=int(header["in_channels"]), widths=[int(w) for w in header["widths"].split(",")],
                             depth=int(header["depth"]), stem=header["stem"], image_size=int(header["image_size"]))
    load_state(encoder, state, source)
    floats = lambda text: tuple(float(v) for v in text.split(",")) if text else ()
    preprocess = Preprocess(int(header["image_size"]), int(header["in_channels"]), floats(header.get("mean", "")), floats(header.get("std", "")))
    return LoadedEncoder(encoder.to(device).eval(), preprocess, header)


def _header_from_settings(settings: dict[str, Any], state: dict[str, Tensor]) -> dict[str, str]:
    """The architecture keys of a run's config.json, for an ``encoder.pt`` (which holds weights only)."""
    from nocollapse.data.registry import DEFAULT_FOLDER_SIZE, NATIVE_SIZE
    from nocollapse.nn.backbones import resolve_stem

    model, data = settings["model"], settings["data"]
    image_size = NATIVE_SIZE.get(data["dataset"]) or data.get("image_size") or DEFAULT_FOLDER_SIZE
    first = next(tensor for name, tensor in state.items() if tensor.ndim == 4)  # the first convolution's (out, in, k, k)
    return {"backbone": model["backbone"], "widths": ",".join(map(str, model["widths"])), "depth": str(model["depth"]),
            "stem": resolve_stem(model.get("stem", "auto"), image_size), "in_channels": str(first.shape[1]), "image_size": str(image_size),
            "method": settings.get("method", {}).get("name", "")}
