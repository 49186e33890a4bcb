"""The README's promises: its Python example runs, and CI runs its test command verbatim."""

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def run_example(index: int) -> dict:
    namespace: dict = {}
    exec(compile(code_blocks("python")[index], "README.md", "exec"), namespace)
    return namespace


def test_the_byol_example_trains_and_moves_the_target():
    namespace = run_example(0)
    assert torch.isfinite(namespace["loss"]) and 0 <= namespace["loss"].item() <= 8
    online, target = namespace["online"], namespace["target"]
    assert any(not torch.equal(p, q) for p, q in zip(online.parameters(), target.parameters()))


def test_the_wmse_example_gives_a_loss_and_a_gradient():
    namespace = run_example(1)
    assert 0 <= namespace["loss"].item() <= 4
    assert torch.isfinite(namespace["embeddings"].grad).all()


def test_the_msbreg_example_gives_each_term_and_gradients():
    namespace = run_example(2)
    assert torch.isfinite(namespace["predictions"].grad).all() and torch.isfinite(namespace["projections"].grad).all()
    terms = namespace["terms"]
    assert set(terms) == {"loss", "wmse", "singular_value", "brownian", "embedding_std"}
    assert terms["loss"].item() == pytest.approx((terms["wmse"] + 10 * terms["singular_value"] + 0.1 * terms["brownian"]).item(), rel=1e-5)


def test_the_uniformity_example_gives_gradients_and_geometry(capsys):
    namespace = run_example(3)
    assert torch.isfinite(namespace["projections"].grad).all() and namespace["projector"].weight.grad.abs().sum() > 0
    printed = capsys.readouterr().out
    assert "RankMe" in printed and "align" in printed


def test_ci_runs_the_readme_test_command():
    commands = [line for block in code_blocks("bash") for line in block.splitlines() if "pytest" in line]
    assert len(commands) == 1
    assert commands[0] in (ROOT / ".ci" / "run").read_text()


def test_the_kernel_uniformity_example_gives_a_gradient_and_takes_the_gram_path(capsys):
    namespace = run_example(4)
    assert torch.isfinite(namespace["z"].grad).all() and namespace["z"].grad.abs().sum() > 0
    assert 0 <= namespace["psi"].item() <= 81 and 0 < namespace["gaussian"].item() <= 1
    assert capsys.readouterr().out.strip() == "gram"
