"""`nocollapse export`: ONNX run by onnxruntime and TorchScript loaded in a fresh process give the encoder's features."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import TINY_RUN, write_tiny_fashion_mnist
from nocollapse import load_encoder
from nocollapse.cli import main
from nocollapse.config import resolve_config
from nocollapse.errors import UserError
from nocollapse.export import export_encoder, read_export_metadata
from nocollapse.train.loop import Trainer

QUIET = {"log": lambda *_: None}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    data = write_tiny_fashion_mnist(root / "data")
    config = resolve_config("fmnist", [*TINY_RUN, f"data.data_dir={data}", f"run.out_dir={root}", "run.name=run", "run.device=cpu",
                                       "eval.monitor_every=0", "optim.epochs=1"])
    return Trainer(config, progress=False, log=lambda *_: None).fit()


def features(run_dir, images):
    encoder, preprocess, _ = load_encoder(run_dir)
    with torch.no_grad():
        return preprocess(images), encoder(preprocess(images))


def test_onnx_on_a_dynamic_batch_gives_the_encoders_features_and_carries_the_contract(run_dir, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    out = export_encoder(run_dir, tmp_path / "encoder.onnx", format="onnx", **QUIET)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        inputs, want = features(run_dir, torch.randint(0, 256, (batch, 1, 28, 28), dtype=torch.uint8))
        got = session.run(["features"], {"images": inputs.numpy()})[0]
        assert got.shape == tuple(want.shape) and np.abs(got - want.numpy()).max() < 1e-4
    contract = read_export_metadata(out)
    assert contract["preprocess"] == load_encoder(run_dir).preprocess.to_dict() and contract["header"]["backbone"] == "convnet"


def test_torchscript_loaded_in_a_fresh_process_gives_the_same_features(run_dir, tmp_path):
    assert main(["export", str(run_dir), "--format", "torchscript", "--out", str(tmp_path / "encoder.pt")]) == 0
    inputs, want = features(run_dir, torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8))
    torch.save(inputs, tmp_path / "inputs.pt")
    code = (f"import torch; m = torch.jit.load({str(tmp_path / 'encoder.pt')!r}); "
            f"torch.save(m(torch.load({str(tmp_path / 'inputs.pt')!r})), {str(tmp_path / 'out.pt')!r})")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (torch.load(tmp_path / "out.pt") - want).abs().max() < 1e-4
    assert read_export_metadata(tmp_path / "encoder.pt")["preprocess"]["image_size"] == 28


def test_an_existing_file_is_kept_an_unknown_format_refused_and_a_failure_leaves_nothing(run_dir, tmp_path, monkeypatch):
    out = tmp_path / "encoder.pt"
    out.write_bytes(b"mine")
    with pytest.raises(UserError, match="already exists; pass --force"):
        export_encoder(run_dir, out, format="torchscript", **QUIET)
    assert out.read_bytes() == b"mine"
    with pytest.raises(UserError, match="--format 'tflite': choose onnx or torchscript"):
        export_encoder(run_dir, tmp_path / "x", format="tflite", **QUIET)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch.jit, "save", disk_full)
    with pytest.raises(UserError, match=r"cannot write .*encoder.pt \(No space left on device\); nothing was written"):
        export_encoder(run_dir, out, format="torchscript", force=True, **QUIET)
    assert out.read_bytes() == b"mine" and sorted(p.name for p in tmp_path.iterdir()) == ["encoder.pt"]
