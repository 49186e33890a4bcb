"""run.amp: bf16 autocast where the hardware has the units for it (auto), or forced; float32 losses either way."""

from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import TINY_RUN, write_tiny_fashion_mnist
from nocollapse.config import Config, resolve_config
from nocollapse.errors import UserError
from nocollapse.train import amp
from nocollapse.train.loop import Trainer

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("units, setting, device, bf16", [
    ((), "auto", CPU, False),
    (("avx512_bf16",), "auto", CPU, True),
    (("amx_bf16", "avx512_bf16"), "auto", CPU, True),
    ((), "auto", CUDA, True),  # a GPU with bf16 tensor cores
    ("emulated", "auto", CUDA, False),  # one without (before Ampere): torch emulates bf16
    ((), "true", CPU, True),
    (("amx_bf16",), "false", CPU, False),
    (("amx_bf16",), "false", CUDA, False),
])
def test_auto_takes_bf16_on_cuda_and_on_cpus_with_bf16_units(monkeypatch, units, setting, device, bf16):
    tensor_cores = units != "emulated"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation or tensor_cores)
    units = () if units == "emulated" else units
    monkeypatch.setattr(amp, "cpu_bf16_units", lambda: units)
    assert amp.use_bf16(setting, device) is bf16
    described = amp.describe_precision(setting, device)
    assert described.startswith("bf16" if bf16 else "float32") and f"run.amp={setting}" in described
    if setting == "auto" and device == CPU:
        assert all(unit in described for unit in units)


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="the kernel's CPU flags are read from /proc/cpuinfo (Linux)")
def test_the_units_are_read_from_the_processor():
    flags = {word for line in open("/proc/cpuinfo") if line.startswith("flags") for word in line.split(":")[1].split()}
    # torch reads CPUID itself; the kernel's flags name the same bits (amx_tile comes with amx_bf16 on every AMX CPU).
    expected = {"amx_bf16"} & flags | {"avx512_bf16"} & flags
    assert set(amp.cpu_bf16_units()) == expected


def test_the_setting_is_one_of_three_and_old_boolean_configs_still_load():
    with pytest.raises(UserError, match="run.amp='maybe'.*auto.*true.*false"):
        resolve_config("fmnist", ["run.amp=maybe"])
    for spelling, setting in (("yes", "true"), ("On", "true"), ("1", "true"), ("False", "false"), ("off", "false"), ("AUTO", "auto")):
        assert resolve_config("fmnist", [f"run.amp={spelling}"]).run.amp == setting, "the boolean spellings of before still work"
    # Run directories written before run.amp took "auto" hold a JSON boolean; true meant bf16 on CUDA only, which auto keeps.
    saved = Config().to_dict()
    for old, new in ((True, "auto"), (False, "false")):
        saved["run"]["amp"] = old
        assert Config.from_dict(saved).run.amp == new


@pytest.mark.parametrize("setting, dtype", [("true", torch.bfloat16), ("false", torch.float32)])
def test_the_training_step_runs_in_the_precision_chosen_and_the_losses_in_float32(tmp_path, setting, dtype):
    data = write_tiny_fashion_mnist(tmp_path / "data")
    # The default's uniformity loss on (TINY_RUN turns it off): the default's own path under bf16.
    config = resolve_config("fmnist", [*TINY_RUN, f"data.data_dir={data}", f"run.out_dir={tmp_path}", "run.name=run", "run.device=cpu",
                                       f"run.amp={setting}", "eval.monitor_every=0", "regularizers.uniformity=1"])
    lines: list[str] = []
    trainer = Trainer(config, progress=False, log=lines.append)
    seen: list[torch.dtype] = []
    trainer.method.encoder.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    terms = trainer.train_step(trainer.pretrain_images[:32], torch.Generator().manual_seed(0))
    assert seen and set(seen) == {dtype}
    assert "uniformity" in terms and all(value.dtype == torch.float32 for name, value in terms.items() if name != "grad_norm")
    assert all(p.dtype == torch.float32 for p in trainer.method.parameters()), "autocast never changes the weights' dtype"
    environment = json.loads((trainer.run_dir / "environment.json").read_text())
    assert environment["precision"].startswith("bf16" if dtype == torch.bfloat16 else "float32")
    trainer.fit()
    assert environment["precision"] in lines[0], "the first line of the log says the precision"
