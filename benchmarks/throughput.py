"""Throughput of a full training step against the bare forward + backward of the same networks.

For each method preset and backbone, the real Trainer runs ``train_step`` on uint8 batches already on the
device: views drawn by the batched augmentation, the method's networks, its losses and regularizers,
backward, the optimiser, the EMA target update and the step's bookkeeping. The bare pass runs the same
networks (online branches, predictor and target where the method has them) on views made beforehand,
with a trivial loss, backward and nothing else. Their ratio is what augmentation, losses, optimiser, EMA
and bookkeeping add to the unavoidable network work.

Images/s counts source images (each gives ``augment.num_views`` views through every network). Peak
memory is the CUDA allocator's high-water mark of the full step (on CPU it is not measured). GFLOP/s is
the step's matrix-product and convolution FLOPs, forward and backward (``torch.utils.flop_counter``; the
augmentation and the elementwise work are not counted), over its median time.

    python benchmarks/throughput.py                              # CPU: the Fashion-MNIST presets, ConvNet
    python benchmarks/throughput.py --amp false,true --no-resnet     # float32 against bf16 autocast, interleaved
    python benchmarks/throughput.py --device cuda --resnet-batch 512 --steps 50
    python benchmarks/throughput.py --only fmnist --peak 166,333   # some rows; their GFLOP/s as a share of the cores' peak

``--peak FP32,BF16`` (GFLOP/s of all the cores used, from their FMA width and clock) adds the share of that peak
the step reaches, in its precision.
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from nocollapse.config import resolve_config
from nocollapse.train.runinfo import cpu_model
from nocollapse.train.loop import Trainer

# (label, preset, overrides); ResNet-18 rows read a synthetic CIFAR-10 written by this script (32×32 RGB).
CONVNET_CASES = [
    ("BYOL + uniformity, ConvNet 32-64-128-384 (fmnist, the default)", "fmnist", []),
    ("BYOL, ConvNet (fmnist-byol)", "fmnist-byol", []),
    ("W-MSE 2, ConvNet (fmnist-wmse2)", "fmnist-wmse2", []),
    ("W-MSE 4, ConvNet (fmnist-wmse4)", "fmnist-wmse4", []),
    ("MSBReg 4 views, ConvNet (fmnist-msbreg)", "fmnist-msbreg", []),
    ("SFRIK q=2048, ConvNet (fmnist-sfrik)", "fmnist-sfrik", []),
    ("BYOL + SV + BD, ConvNet", "fmnist-byol", ["regularizers.singular_value=30", "regularizers.brownian=0.1"]),
    ("BYOL + InfoNCE, ConvNet (byol+contrastive)", "byol+contrastive", []),
    ("BYOL + MHE, ConvNet (byol+mhe)", "byol+mhe", []),
]
RESNET_CASES = [("BYOL, ResNet-18 32×32 (cifar10)", "cifar10", [])]


def write_synthetic_cifar10(root: Path, images: int) -> Path:
    """CIFAR-10's python-version files holding random images: speed does not depend on the pixels."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    per_batch = max(1, images // 5)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, size=per_batch).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=4))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"class{i}" for i in range(10)]}, protocol=4))
    return root


def bare_pass(method: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The method's networks on (M, B, C, H, W) views, without its losses: what a step cannot do without."""
    if hasattr(method, "branches"):  # BYOL, MSBReg: online projector + predictor, and the target
        return lambda views: method.branches(views)[1]
    return lambda views: torch.stack([method.embed(view) for view in views])


def timed(runs: list[Callable[[], object]], steps: int, device: torch.device) -> list[float]:
    """Median seconds of each of ``runs`` over ``steps`` calls, after two warm-up calls. The runs take turns
    call by call, so a slow spell of a shared machine slows all of them alike."""
    for _ in range(2):
        for run in runs:
            run()
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(steps):
        for run, spent in zip(runs, times):
            _sync(device)
            started = time.perf_counter()
            run()
            _sync(device)
            spent.append(time.perf_counter() - started)
    return [statistics.median(spent) for spent in times]


def prepare(preset: str, overrides: list[str], amp: str, args: argparse.Namespace, out: str) -> tuple[Callable[[], object], Callable[[], None], dict[str, object]]:
    """The full step and the bare forward + backward of ``preset`` under ``run.amp=amp``, and what they are."""
    config = resolve_config(preset, [*overrides, f"run.device={args.device}", f"run.out_dir={out}", f"run.name={preset}-{amp}-{time.monotonic_ns()}",
                                     "eval.monitor_every=0", f"run.compile={str(args.compile).lower()}", f"run.amp={amp}"])
    trainer = Trainer(config, progress=False, log=lambda *_: None)
    batch = config.optim.batch_size
    images = trainer.pretrain_images[:batch]
    generator = torch.Generator(device=trainer.device)
    full_step = lambda: trainer.train_step(images, generator.manual_seed(0), generator)  # noqa: E731
    with FlopCounterMode(display=False) as counter:  # matrix products and convolutions, forward and backward
        full_step()
    if trainer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(trainer.device)
        full_step()
        peak = f"{torch.cuda.max_memory_allocated(trainer.device) / 2**30:.2f} GiB"
    else:
        peak = "–"

    views = trainer.views(images, generator.manual_seed(0))
    if config.run.channels_last:
        views = views.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    networks = bare_pass(trainer.method)
    parameters = [p for p in trainer.method.parameters() if p.requires_grad]

    def forward_backward() -> None:
        with torch.autocast(trainer.device.type, dtype=torch.bfloat16, enabled=trainer.bf16):
            output = networks(views)
        output.float().square().mean().backward()
        for p in parameters:
            p.grad = None

    precision = "bf16" if trainer.bf16 else "fp32"
    return full_step, forward_backward, {"batch": batch, "precision": precision, "flops": counter.get_total_flops(), "peak": peak}


def measure(label: str, preset: str, overrides: list[str], args: argparse.Namespace, out: str) -> list[dict[str, object]]:
    """One row per precision in ``args.amp``; all their steps interleaved (:func:`timed`)."""
    prepared = [prepare(preset, overrides, amp, args, out) for amp in args.amp]
    seconds = timed([run for full, bare, _ in prepared for run in (full, bare)], args.steps, torch.device(args.device))
    rows = []
    for (_, _, info), step_seconds, bare_seconds in zip(prepared, seconds[::2], seconds[1::2]):
        rows.append({"label": label, **info, "img/s": info["batch"] / step_seconds, "step ms": 1000 * step_seconds,
                     "bare ms": 1000 * bare_seconds, "ratio": step_seconds / bare_seconds, "gflops": info["flops"] / step_seconds / 1e9})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement (median)")
    parser.add_argument("--resnet-batch", type=int, default=64, help="batch of the ResNet-18 rows (the issue's GPU target uses 512)")
    parser.add_argument("--no-resnet", action="store_true", help="only the ConvNet rows")
    parser.add_argument("--compile", action="store_true", help="torch.compile the method (run.compile=true)")
    parser.add_argument("--amp", default="auto", type=lambda text: text.split(","),
                        help="run.amp settings to measure side by side, comma-separated (e.g. false,true: float32 against bf16)")
    parser.add_argument("--only", help="only the rows whose label contains this text")
    parser.add_argument("--peak", type=lambda text: dict(zip(("fp32", "bf16"), map(float, text.split(",") * (2 if "," not in text else 1)))),
                        help="FP32,BF16: the cores' peak GFLOP/s, to print the share of it each step reaches (one number: both)")
    args = parser.parse_args()

    rows = []
    chosen = lambda label: args.only is None or args.only in label  # noqa: E731
    with tempfile.TemporaryDirectory() as out:
        for label, preset, overrides in filter(lambda case: chosen(case[0]), CONVNET_CASES):
            rows.extend(measure(label, preset, overrides, args, out))
            print(f"  measured {label}", flush=True)
        if not args.no_resnet:
            data = write_synthetic_cifar10(Path(out) / "data", images=max(5 * args.resnet_batch, 1000))
            for label, preset, overrides in filter(lambda case: chosen(case[0]), RESNET_CASES):
                rows.extend(measure(label, preset, [*overrides, f"data.data_dir={data}", f"optim.batch_size={args.resnet_batch}"], args, out))
                print(f"  measured {label}", flush=True)

    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{cpu_model()}, {torch.get_num_threads()} threads"
    print(f"\n{device}, torch {torch.__version__}, median of {args.steps} steps" + (", compiled" if args.compile else ""))
    share = " share of the peak |" if args.peak else ""
    print("| configuration | batch | precision | images/s | full step (ms) | bare fwd+bwd (ms) | ratio | GFLOP per step | GFLOP/s of the step |"
          f"{share} peak memory |")
    print("|---|---|---|---|---|---|---|---|---|" + ("---|" if args.peak else "") + "---|")
    for row in rows:
        of_peak = f" {100 * row['gflops'] / args.peak[row['precision']]:.0f}% |" if args.peak else ""
        print(f"| {row['label']} | {row['batch']} | {row['precision']} | {row['img/s']:.0f} | {row['step ms']:.1f} | {row['bare ms']:.1f} | "
              f"{row['ratio']:.2f} | {row['flops'] / 1e9:.1f} | {row['gflops']:.0f} |{of_peak} {row['peak']} |")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    main()
