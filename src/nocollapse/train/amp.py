"""``run.amp``: whether the training step and the epoch monitor run under bf16 autocast.

bf16 pays where the hardware multiplies bf16 natively: CUDA's tensor cores, and on CPUs the AMX tiles
(Sapphire Rapids on) or the AVX-512 BF16 dot products (Cooper Lake, Zen 4 on), which oneDNN's convolutions
and matrix products use. Elsewhere a CPU converts bf16 to float32 and back around float32 arithmetic,
which is slower than float32 alone. ``auto`` follows that rule; ``true`` and ``false`` force it. The losses
stay float32 under autocast (:func:`~nocollapse.losses.precision.float32_loss`), and the final evaluation
always extracts features in float32.
"""

from __future__ import annotations

import functools

import torch

from nocollapse.config import CHOICES

AMP_SETTINGS = CHOICES["run.amp"]


@functools.cache
def cpu_bf16_units() -> tuple[str, ...]:
    """The CPU's bf16 matrix units that oneDNN uses, as /proc/cpuinfo names them (``amx_bf16``,
    ``avx512_bf16``); empty where it has none or torch cannot tell."""
    # torch reads the CPUID bits itself (cpuinfo), on every OS. It tells AMX by its tiles: every CPU with AMX tiles has the
    # bf16 tile products. The functions are private, so a torch without them counts as "none" (float32, the safe side).
    checks = {"amx_bf16": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}
    return tuple(name for name, function in checks.items() if getattr(torch.cpu, function, lambda: False)())


def use_bf16(setting: str, device: torch.device) -> bool:
    """Whether ``run.amp=setting`` means bf16 autocast on ``device``."""
    if setting not in AMP_SETTINGS:
        raise ValueError(f"run.amp={setting!r}: not one of {AMP_SETTINGS}")
    if setting != "auto":
        return setting == "true"
    if device.type == "cuda":  # bf16 tensor cores from Ampere (8.0) on; older GPUs emulate bf16, slower than float32
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and bool(cpu_bf16_units())


def describe_precision(setting: str, device: torch.device) -> str:
    """One line for the log and environment.json: the precision of the training step and why."""
    if setting != "auto":
        return f"{'bf16 autocast, float32 losses' if setting == 'true' else 'float32'} (run.amp={setting})"
    if not use_bf16(setting, device):
        return f"float32 (run.amp=auto: this {device.type} has no bf16 matrix units, or torch cannot tell)"
    units = "tensor cores" if device.type == "cuda" else ", ".join(cpu_bf16_units())
    return f"bf16 autocast, float32 losses (run.amp=auto: {units})"
