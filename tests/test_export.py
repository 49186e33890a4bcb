"""`nocollapse export`: ONNX run by onnxruntime and TorchScript loaded in a fresh process give the encoder's features,
carry the preprocessing contract, and are written whole or not at all."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import TINY_RUN, write_random_photos, write_tiny_fashion_mnist
from nocollapse import load_encoder
from nocollapse.cli import main
from nocollapse.config import resolve_config
from nocollapse.errors import UserError
from nocollapse.export import ONNX_OPSET, export_encoder, read_export_metadata
from nocollapse.train.loop import Trainer

QUIET = {"log": lambda *_: None}
RUN_SETTINGS = ["optim.epochs=1", "run.device=cpu", "eval.monitor_every=0", "run.name=run"]


@pytest.fixture(scope="module")
def fmnist_run(tmp_path_factory):
    """A tiny grayscale run at 28 px (Fashion-MNIST format, standardised inputs)."""
    root = tmp_path_factory.mktemp("export-fmnist")
    data = write_tiny_fashion_mnist(root / "data")
    config = resolve_config("fmnist", [*TINY_RUN, *RUN_SETTINGS, f"data.data_dir={data}", f"run.out_dir={root}"])
    return Trainer(config, progress=False, log=lambda *_: None).fit()


@pytest.fixture(scope="module")
def rgb_run(tmp_path_factory):
    """A tiny RGB run on an image folder at 16 px, with a mean and std per channel."""
    pytest.importorskip("PIL.Image")
    root = tmp_path_factory.mktemp("export-rgb")
    write_random_photos(root / "photos")
    config = resolve_config("fmnist", [*TINY_RUN, *RUN_SETTINGS, "data.dataset=image-folder", f"data.data_dir={root / 'photos'}",
                                       "data.image_size=16", "augment.mean=0.5,0.4,0.3", "augment.std=0.2,0.25,0.3",
                                       f"run.out_dir={root}", "optim.batch_size=16", f"data.cache_dir={root / 'cache'}"])
    return Trainer(config, progress=False, log=lambda *_: None).fit()


def reference(run_dir, batch: int, seed: int = 0):
    """(preprocessed inputs, PyTorch features) of ``batch`` random uint8 images, of another side than the run's for RGB."""
    encoder, preprocess, _ = load_encoder(run_dir)
    side = 28 if preprocess.in_channels == 1 else 20  # 20 px into the 16-px run: cropped and resized by preprocess
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, preprocess.in_channels, side, side), dtype=torch.uint8, generator=generator)
    inputs = preprocess(images)
    with torch.no_grad():
        return inputs, encoder(inputs)


def contract_of(run_dir) -> dict:
    _, preprocess, header = load_encoder(run_dir)
    return {"preprocess": preprocess.to_dict(), "header": header, "input": "images", "output": "features"}


@pytest.mark.parametrize("run", ["fmnist_run", "rgb_run"])
def test_onnx_run_by_onnxruntime_on_any_batch_gives_the_encoders_features_and_carries_the_contract(run, request, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    run_dir = request.getfixturevalue(run)
    out = export_encoder(run_dir, tmp_path / "encoder.onnx", format="onnx", **QUIET)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (images,), (features,) = session.get_inputs(), session.get_outputs()
    preprocess = load_encoder(run_dir).preprocess
    assert images.name == "images" and isinstance(images.shape[0], str), "the batch axis is free"
    assert images.shape[1:] == [preprocess.in_channels, preprocess.image_size, preprocess.image_size] and features.name == "features"
    for batch in (1, 7):
        inputs, want = reference(run_dir, batch)
        got = session.run(["features"], {"images": inputs.numpy()})[0]
        assert got.shape == tuple(want.shape) and np.abs(got - want.numpy()).max() < 1e-4
    assert read_export_metadata(out) == contract_of(run_dir)
    # What the module doc tells a server with onnxruntime alone.
    assert json.loads(session.get_modelmeta().custom_metadata_map["nocollapse"]) == contract_of(run_dir)


def test_torchscript_loaded_in_a_fresh_process_without_nocollapse_gives_the_same_features(fmnist_run, rgb_run, tmp_path):
    jobs = []
    for name, run_dir in (("gray", fmnist_run), ("rgb", rgb_run)):
        model = tmp_path / f"{name}.pt"
        assert main(["export", str(run_dir), "--format", "torchscript", "--out", str(model)]) == 0
        assert read_export_metadata(model) == contract_of(run_dir)
        for batch in (1, 7):
            inputs, want = reference(run_dir, batch)
            torch.save(inputs, tmp_path / f"{name}-{batch}.in")
            jobs.append((model, tmp_path / f"{name}-{batch}.in", tmp_path / f"{name}-{batch}.out", want))
    code = ("import sys, torch\n"
            "for model, inputs, out in zip(*[iter(sys.argv[1:])] * 3):\n"
            "    torch.save(torch.jit.load(model)(torch.load(inputs)), out)\n"
            "assert 'nocollapse' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code, *(str(path) for job in jobs for path in job[:3])], check=True, cwd=tmp_path)
    for _, _, out, want in jobs:
        got = torch.load(out)
        assert got.shape == want.shape and (got - want).abs().max() < 1e-4


def test_the_format_is_read_from_the_content_whatever_the_name(rgb_run, tmp_path):
    onnx = pytest.importorskip("onnx")
    export_encoder(rgb_run, tmp_path / "a", format="onnx", **QUIET)
    assert [entry.version for entry in onnx.load(str(tmp_path / "a")).opset_import] == [ONNX_OPSET] == [17]
    export_encoder(rgb_run, tmp_path / "b", format="torchscript", **QUIET)
    contract = contract_of(rgb_run)
    assert read_export_metadata(tmp_path / "a") == read_export_metadata(tmp_path / "b") == contract
    assert contract["preprocess"] == {"image_size": 16, "in_channels": 3, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
    assert contract["header"]["dataset"] == "image-folder" and contract["header"]["backbone"] == "convnet"
    (tmp_path / "foreign").write_bytes(b"\x00not a model")
    with pytest.raises(UserError, match="neither ONNX nor TorchScript"):
        read_export_metadata(tmp_path / "foreign")
    with pytest.raises(UserError, match="does not exist"):
        read_export_metadata(tmp_path / "missing.onnx")


def test_what_cannot_be_exported_is_refused_with_what_to_do_and_an_existing_file_is_kept(fmnist_run, tmp_path, capsys):
    out = tmp_path / "encoder.pt"
    out.write_bytes(b"mine")
    with pytest.raises(UserError, match="already exists; pass --force"):
        export_encoder(fmnist_run, out, format="torchscript", **QUIET)
    assert out.read_bytes() == b"mine"
    assert main(["export", str(fmnist_run), "--format", "torchscript", "--out", str(out)]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err and out.read_bytes() == b"mine"
    with pytest.raises(UserError, match="--format 'tflite': choose onnx or torchscript"):
        export_encoder(fmnist_run, tmp_path / "x", format="tflite", **QUIET)
    with pytest.raises(UserError, match="is a folder; name the file to write, e.g. .*encoder.pt"):
        export_encoder(fmnist_run, tmp_path, format="torchscript", **QUIET)
    with pytest.raises(UserError, match="the folder .*nowhere does not exist"):
        export_encoder(fmnist_run, tmp_path / "nowhere" / "e.pt", format="torchscript", **QUIET)
    (tmp_path / "not-a-run").mkdir()
    with pytest.raises(UserError, match="holds no encoder.safetensors"):
        export_encoder(tmp_path / "not-a-run", tmp_path / "e.pt", format="torchscript", **QUIET)
    assert export_encoder(fmnist_run, out, format="torchscript", force=True, **QUIET) == out
    assert read_export_metadata(out) == contract_of(fmnist_run)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder.pt", "not-a-run"]


def test_a_failure_mid_export_leaves_the_previous_file_or_none_and_no_temporary(fmnist_run, tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    kept = tmp_path / "kept.onnx"
    kept.write_bytes(b"mine")

    def exporter_fails(module, args, f, **kwargs):
        f.write(b"half a model")
        raise RuntimeError("exporter bug")

    with monkeypatch.context() as patched:
        patched.setattr(torch.onnx, "export", exporter_fails)
        for out, force in ((tmp_path / "new.onnx", False), (kept, True)):
            with pytest.raises(RuntimeError, match="exporter bug"):
                export_encoder(fmnist_run, out, format="onnx", force=force, **QUIET)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.onnx"] and kept.read_bytes() == b"mine"

    def disk_full(descriptor):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(os, "fsync", disk_full)
        with pytest.raises(UserError, match=r"cannot write .*kept.onnx \(No space left on device\); the previous kept.onnx is intact"):
            export_encoder(fmnist_run, kept, format="onnx", force=True, **QUIET)
        with pytest.raises(UserError, match=r"cannot write .*new.pt \(No space left on device\); nothing was written there"):
            export_encoder(fmnist_run, tmp_path / "new.pt", format="torchscript", **QUIET)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.onnx"] and kept.read_bytes() == b"mine"


def test_without_the_onnx_package_the_error_says_what_to_install(fmnist_run, tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    written = export_encoder(fmnist_run, tmp_path / "e.onnx", format="onnx", **QUIET)
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` raises ImportError
    with pytest.raises(UserError, match=r"ONNX export needs the onnx package: `pip install onnx`"):
        export_encoder(fmnist_run, tmp_path / "f.onnx", format="onnx", **QUIET)
    with pytest.raises(UserError, match=r"needs the onnx package: `pip install onnx`"):
        read_export_metadata(written)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.onnx"]
