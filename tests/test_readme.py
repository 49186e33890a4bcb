"""The README's promises: its Python example runs, and CI runs its test command verbatim."""

import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def test_the_python_example_trains_and_moves_the_target():
    (example,) = code_blocks("python")
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert torch.isfinite(namespace["loss"]) and 0 <= namespace["loss"].item() <= 8
    online, target = namespace["online"], namespace["target"]
    assert any(not torch.equal(p, q) for p, q in zip(online.parameters(), target.parameters()))


def test_ci_runs_the_readme_test_command():
    commands = [line for block in code_blocks("bash") for line in block.splitlines() if "pytest" in line]
    assert len(commands) == 1
    assert commands[0] in (ROOT / ".ci" / "run").read_text()
