"""``nocollapse export``: the trained encoder as ONNX or TorchScript, for serving without nocollapse.

Both files take ``images`` (B, C, S, S) float32, already preprocessed (``load_encoder``'s ``Preprocess``:
decoded, centre-cropped and resized to S, divided by 255, standardised), any batch size, and give
``features`` (B, D). The preprocessing contract and the encoder's header travel inside the file as JSON
(ONNX: the model's ``metadata_props`` key ``nocollapse``; TorchScript: the extra file ``nocollapse.json``),
read back by :func:`read_export_metadata`.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nocollapse.encoder import Preprocess, load_encoder
from nocollapse.errors import UserError

FORMATS = ("onnx", "torchscript")
METADATA_KEY = "nocollapse"
TORCHSCRIPT_EXTRA = "nocollapse.json"


def export_encoder(model: str | os.PathLike, out: str | os.PathLike, *, format: str, force: bool = False,
                   log: Callable[[str], object] = print) -> Path:
    """Write the encoder of ``model`` (anything :func:`~nocollapse.encoder.load_encoder` takes) to ``out`` as ``format``
    (one of FORMATS). An existing ``out`` is refused unless ``force``; a failure leaves no file there."""
    if format not in FORMATS:
        raise UserError(f"--format {format!r}: choose {' or '.join(FORMATS)}")
    out = Path(os.path.expanduser(os.fspath(out)))
    if out.exists() and not force:
        raise UserError(f"{out} already exists; pass --force to overwrite it, or choose another --out")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: the folder {out.parent} does not exist")
    encoder, preprocess, header = load_encoder(model)
    export_module(encoder, preprocess, {**header, "source": str(model)}, out, format=format)
    log(f"exported {model} as {format} to {out} (input 'images' (B, {preprocess.in_channels}, {preprocess.image_size}, "
        f"{preprocess.image_size}) float32, preprocessed; output 'features')")
    return out


def export_module(encoder: nn.Module, preprocess: Preprocess, header: dict[str, str], out: Path, *, format: str) -> None:
    """Export ``encoder`` (eval mode, CPU) with its contract to ``out``, through a temporary file renamed into place."""
    contract = json.dumps({"preprocess": preprocess.to_dict(), "header": header, "input": "images", "output": "features"})
    example = torch.zeros(2, preprocess.in_channels, preprocess.image_size, preprocess.image_size)
    encoder = encoder.to("cpu").eval()
    temporary = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        if format == "onnx":
            _write_onnx(encoder, example, contract, temporary)
        else:
            with torch.no_grad():
                traced = torch.jit.trace(encoder, example)
            torch.jit.save(traced, str(temporary), _extra_files={TORCHSCRIPT_EXTRA: contract})
        os.replace(temporary, out)
    except OSError as error:
        raise UserError(f"cannot write {out} ({error.strerror or error}); nothing was written there") from None
    finally:
        temporary.unlink(missing_ok=True)


def _write_onnx(encoder: nn.Module, example: torch.Tensor, contract: str, path: Path) -> None:
    try:
        import onnx
    except ImportError:
        raise UserError("ONNX export needs the onnx package: `pip install onnx` (and onnxruntime to run the file), "
                        "or `pip install 'nocollapse[onnx]'`") from None
    with warnings.catch_warnings():
        # The TorchScript-based exporter: it needs only the onnx package (the torch.export-based one also needs
        # onnxscript), and a plain convolutional encoder has no control flow that would need the newer one.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(encoder, example, str(path), input_names=["images"], output_names=["features"],
                          dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}}, dynamo=False)
    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, contract
    onnx.save(model, str(path))


def read_export_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The contract an exported file carries: ``preprocess`` (image_size, in_channels, mean, std), ``header``, input and
    output names."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        props = {entry.key: entry.value for entry in onnx.load(str(path)).metadata_props}
        return json.loads(props[METADATA_KEY])
    extra = {TORCHSCRIPT_EXTRA: ""}
    torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra[TORCHSCRIPT_EXTRA])
