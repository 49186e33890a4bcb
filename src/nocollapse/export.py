"""``nocollapse export``: the trained encoder as ONNX or TorchScript, for serving without nocollapse.

Both files take ``images`` (B, C, S, S) float32, already preprocessed (what ``load_encoder``'s ``Preprocess``
gives: decoded, centre-cropped and resized to S, divided by 255, standardised), any batch size, and give
``features`` (B, D), the features ``nocollapse embed`` writes (within float rounding: another runtime sums in
another order). The preprocessing contract travels inside the file, as JSON: ``{"preprocess": {image_size,
in_channels, mean, std}, "header": <the encoder.safetensors header>, "input": "images", "output": "features"}``,
so that a served file cannot be separated from how its inputs must be made. :func:`read_export_metadata` reads
it back; without nocollapse:

- ONNX (``metadata_props`` key ``nocollapse``): ``onnxruntime.InferenceSession(path).get_modelmeta()
  .custom_metadata_map["nocollapse"]``;
- TorchScript (extra file ``nocollapse.json``): ``extra = {"nocollapse.json": ""}; torch.jit.load(path,
  _extra_files=extra)``, then ``extra["nocollapse.json"]``.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nocollapse.encoder import Preprocess, load_encoder
from nocollapse.errors import UserError

FORMATS = ("onnx", "torchscript")
_SUFFIXES = {"onnx": "onnx", "torchscript": "pt"}  # of the file name suggested for a folder given as --out
METADATA_KEY = "nocollapse"  # ONNX metadata_props key of the contract
TORCHSCRIPT_EXTRA = "nocollapse.json"  # TorchScript extra file of the contract
# Fixed rather than torch's default, which moves with torch (20 in torch 2.13, which needs onnxruntime >= 1.17): 17
# runs on onnxruntime >= 1.12 and other runtimes of 2022 on, and has every operator a ConvNet or ResNet needs.
ONNX_OPSET = 17
_ONNX_MISSING = ("ONNX export needs the onnx package: `pip install onnx` (and `pip install onnxruntime` to run the file), "
                 "or `pip install 'nocollapse[onnx]'`")


def export_encoder(model: str | os.PathLike, out: str | os.PathLike, *, format: str, force: bool = False,
                   log: Callable[[str], object] = print) -> Path:
    """Write the encoder of ``model`` (a run directory or an ``encoder.safetensors``: what
    :func:`~nocollapse.encoder.load_encoder` takes) to ``out`` as ``format`` (one of :data:`FORMATS`); returns ``out``.

    An existing ``out`` is refused unless ``force``: an export is cheap to redo, a file being served is not. The
    file appears whole or not at all (see :func:`export_module`).
    """
    if format not in FORMATS:
        raise UserError(f"--format {format!r}: choose {' or '.join(FORMATS)}")
    out = Path(os.path.expanduser(os.fspath(out)))
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; name the file to write, e.g. {out / ('encoder.' + _SUFFIXES[format])}")
    if out.exists() and not force:
        raise UserError(f"{out} already exists; pass --force to overwrite it, or choose another --out")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: the folder {out.parent} does not exist; create it or choose another --out")
    encoder, preprocess, header = load_encoder(model)
    export_module(encoder, preprocess, header, out, format=format)
    side = preprocess.image_size
    log(f"exported {model} as {format} to {out}: input 'images' (B, {preprocess.in_channels}, {side}, {side}) float32, "
        "preprocessed as the contract in its metadata says; output 'features'")
    return out


def export_module(encoder: nn.Module, preprocess: Preprocess, header: dict[str, str], out: Path, *, format: str) -> None:
    """Export ``encoder`` (any module mapping ``preprocess``'s (B, C, S, S) float32 to (B, D)), with ``preprocess`` and
    ``header`` as its contract, to ``out`` as ``format``, overwriting it. ``encoder`` is put on the CPU in eval mode.

    The building block of :func:`export_encoder`, for modules no run saved (``benchmarks/export.py``). The file is
    built in memory, then written to a temporary file beside ``out``, synced and renamed over it: a failure at any
    point (the exporter, a full disk, a kill) leaves the previous ``out`` or none, never a half-written model that a
    server would load.
    """
    contract = json.dumps({"preprocess": preprocess.to_dict(), "header": header, "input": "images", "output": "features"})
    # Batch 2, not 1: no size-1 dimension that a tracer could mistake for a constant; the batch stays free.
    example = torch.zeros(2, preprocess.in_channels, preprocess.image_size, preprocess.image_size)
    encoder = encoder.to("cpu").eval()
    data = _onnx_bytes(encoder, example, contract) if format == "onnx" else _torchscript_bytes(encoder, example, contract)
    try:
        _write_atomically(data, out)
    except OSError as error:
        kept = f"the previous {out.name} is intact" if out.exists() else "nothing was written there"
        raise UserError(f"cannot write {out} ({error.strerror or error}); {kept}. Free disk space or choose another --out") from None


def _onnx_bytes(encoder: nn.Module, example: torch.Tensor, contract: str) -> bytes:
    """The ONNX model, with the contract in its ``metadata_props``.

    The TorchScript-based exporter (``dynamo=False``), although torch deprecates it: it needs only the onnx package
    (the torch.export-based one also needs onnxscript and onnx-ir), takes under a second where that one takes
    seconds and prints its progress, and an encoder (convolutions, BatchNorm, pooling, no data-dependent control
    flow) is what it handles best. Both give the same features here (within 1e-7, onnxscript 0.7.2); when torch drops
    the old one, ``dynamo=True`` with ``dynamic_shapes=({0: torch.export.Dim("batch")},)`` takes its place.
    """
    try:
        import onnx
    except ImportError:
        raise UserError(_ONNX_MISSING) from None
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # of the exporter, chosen above; nothing else runs here
        torch.onnx.export(encoder, (example,), buffer, input_names=["images"], output_names=["features"],
                          dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}}, opset_version=ONNX_OPSET, dynamo=False)
    model = onnx.load_from_string(buffer.getvalue())
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, contract
    return model.SerializeToString()


def _torchscript_bytes(encoder: nn.Module, example: torch.Tensor, contract: str) -> bytes:
    """The traced encoder, with the contract as its extra file.

    Traced, not scripted: the encoders are plain tensor programs, and tracing needs no TorchScript-compatible source.
    torch deprecates TorchScript in favour of torch.export, whose files do not yet load in a bare libtorch or
    ``torch.jit.load``; those warnings are silenced, the format is what this export is for.
    """
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.trace(encoder, example), buffer, _extra_files={TORCHSCRIPT_EXTRA: contract})
    return buffer.getvalue()


def _write_atomically(data: bytes, out: Path) -> None:
    """``data`` to a temporary file beside ``out`` (same file system, so the rename is atomic), synced, renamed over it."""
    descriptor, temporary = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes the file private; give it the mode open() would
        os.replace(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_export_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The contract a file of :func:`export_encoder` carries: ``preprocess`` (image_size, in_channels, mean, std),
    ``header`` (the encoder's safetensors header), and the ``input`` and ``output`` names.

    The format is told by the content, not the name: TorchScript files are zip archives, ONNX files are not.
    Reading ONNX needs the onnx package.
    """
    path = Path(os.path.expanduser(os.fspath(path)))
    if not path.is_file():
        raise UserError(f"{path} does not exist or is not a file: pass a file written by `nocollapse export`")
    with open(path, "rb") as file:
        # A zip's first local header, at offset 0: exact, where zipfile.is_zipfile looks for an end record in the
        # last 64 KiB, which the weight bytes of an ONNX file could happen to contain.
        is_zip = file.read(4) == b"PK\x03\x04"
    text = _torchscript_contract(path) if is_zip else _onnx_contract(path)
    if text is None:
        raise UserError(f"{path} carries no nocollapse contract: it was not written by `nocollapse export`")
    return json.loads(text)


def _torchscript_contract(path: Path) -> str | None:
    extra = {TORCHSCRIPT_EXTRA: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except RuntimeError as error:
        raise UserError(f"cannot load {path} as TorchScript ({str(error).splitlines()[0]}): it is damaged or another kind of zip") from None
    return extra[TORCHSCRIPT_EXTRA] or None


def _onnx_contract(path: Path) -> str | None:
    try:
        import onnx
        from google.protobuf.message import DecodeError
    except ImportError:
        raise UserError("reading an ONNX file's metadata needs the onnx package: `pip install onnx`") from None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except DecodeError:
        raise UserError(f"{path} is neither ONNX nor TorchScript (it does not parse): pass a file written by `nocollapse export`") from None
    return {entry.key: entry.value for entry in model.metadata_props}.get(METADATA_KEY)
