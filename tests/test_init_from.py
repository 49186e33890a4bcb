"""model.init_from: a run that starts from trained weights, and says so."""

import json

import pytest
import torch

from conftest import TINY_RUN, write_tiny_fashion_mnist
from nocollapse.cli import main
from nocollapse.config import resolve_config
from nocollapse.encoder import file_sha256
from nocollapse.errors import UserError
from nocollapse.train.evaluation import evaluate_run
from nocollapse.train.loop import Trainer


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("init-from")
    data = write_tiny_fashion_mnist(root / "data")
    config = resolve_config("fmnist", [*TINY_RUN, f"data.data_dir={data}", f"run.out_dir={root}", "run.name=source", "run.device=cpu",
                                       "eval.monitor_every=0", "optim.epochs=1"])
    Trainer(config, progress=False, log=lambda *_: None).fit()
    return root, data


def trainer(root, data, name, *extra):
    config = resolve_config("fmnist", [*TINY_RUN, f"data.data_dir={data}", f"run.out_dir={root}", f"run.name={name}", "run.device=cpu",
                                       "eval.monitor_every=0", "optim.epochs=1", *extra])
    return Trainer(config, progress=False, log=lambda *_: None)


@pytest.mark.parametrize("what", ["run directory", "safetensors", "state dict"])
def test_a_run_starts_from_the_weights_online_and_target_and_records_them(source_run, what):
    root, data = source_run
    trained = torch.load(root / "source" / "encoder.pt", weights_only=True)
    source = {"run directory": root / "source", "safetensors": root / "source" / "encoder.safetensors"}.get(what)
    if source is None:  # a plain state dict saved by someone else's script, away from any run directory
        source = root / "elsewhere.pt"
        torch.save({name: tensor.clone() for name, tensor in trained.items()}, source)
    started = trainer(root, data, f"from-{what.replace(' ', '-')}", f"model.init_from={source}")
    target = started.method.target.network[0]  # BYOL's EMA copy of the encoder
    for name, tensor in trained.items():
        assert torch.equal(started.method.encoder.state_dict()[name], tensor), name
        assert torch.equal(target.state_dict()[name], tensor), f"target {name}"
    recorded = json.loads((started.run_dir / "environment.json").read_text())["init_from"]
    file = source / "encoder.safetensors" if source.is_dir() else source
    assert recorded == {"path": str(file.resolve()), "sha256": file_sha256(file)}
    first = next(iter(trained))
    assert not torch.equal(trainer(root, data, f"fresh-{what.replace(' ', '-')}").method.encoder.state_dict()[first], trained[first]), \
        "a run without init_from starts elsewhere"

def test_another_architecture_is_refused_naming_the_first_tensor_that_does_not_fit(source_run, capsys):
    root, data = source_run
    with pytest.raises(UserError, match=r"tensor \S+ is \(16, 8, 3, 3\), this encoder's is \(32, 8, 3, 3\): another architecture"):
        trainer(root, data, "wider", f"model.init_from={root / 'source'}", "model.widths=8,32")
    code = main(["train", "--no-eval", "--no-report", "--data-dir", str(data), *TINY_RUN, f"run.out_dir={root}", "run.name=missing",
                 "run.device=cpu", f"model.init_from={root / 'nowhere'}"])
    assert code == 2 and "does not exist: pass a run directory, an encoder.safetensors or a state dict" in capsys.readouterr().err


def test_eval_encoder_scores_foreign_weights_as_their_own_run_did(source_run, tmp_path, capsys):
    """The encoder file alone, scored by `eval --encoder`: the same table as the run's own evaluation."""
    root, data = source_run
    own = [row.to_dict() for row in evaluate_run(root / "source", log=lambda *_: None)]
    alone = tmp_path / "shipped" / "encoder.safetensors"
    alone.parent.mkdir()
    alone.write_bytes((root / "source" / "encoder.safetensors").read_bytes())
    code = main(["eval", "--encoder", str(alone), "--dataset", "fashion-mnist", "--data-dir", str(data), "--out", str(tmp_path / "scored"),
                 "--device", "cpu", "--no-report", *[item for item in TINY_RUN if item.startswith("eval.")]])
    assert code == 0
    scored = json.loads((tmp_path / "scored" / "eval.json").read_text())["rows"]
    assert [row["knn"] for row in scored] == [row["knn"] for row in own]
    assert [row["linear"] for row in scored] == [row["linear"] for row in own]
    recorded = json.loads((tmp_path / "scored" / "environment.json").read_text())["evaluated_encoder"]
    assert recorded["sha256"] == file_sha256(alone)
    assert main(["eval", "--encoder", str(alone), "--dataset", "cifar10", "--out", str(tmp_path / "x")]) == 2
    assert "takes 28-px images; cifar10's are 32 px" in capsys.readouterr().err
