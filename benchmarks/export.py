"""ONNX Runtime against PyTorch on the CPU: latency of one forward pass of an encoder, batch 1 and batch 256.

By default the default Fashion-MNIST encoder (ConvNet 32, 64, 128, 256, depth 1, at 28 px, one channel), with
random weights: latency does not depend on them, so nothing is trained. ``--run RUN_DIR`` takes a run's encoder
instead. Either way it goes through `nocollapse export`'s own code path (``export_module``), then PyTorch and
ONNX Runtime, given the same number of threads, run it on the same preprocessed inputs; each figure is the
median of ``--repeats`` timed passes after a warm-up.

    python benchmarks/export.py [--run RUN_DIR] [--repeats 200] [--threads N]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import onnxruntime
import torch

from nocollapse.encoder import Preprocess, load_encoder
from nocollapse.export import export_module
from nocollapse.nn.backbones import build_backbone

BATCHES = (1, 256)


def median_ms(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up: first-call allocations and kernel selection
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def cpu_model() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a run directory or encoder.safetensors (default: the random-init default encoder)")
    parser.add_argument("--repeats", type=int, default=200, help="timed passes at batch 1 (a tenth of them at batch 256)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads of both runtimes (default: torch's)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.run:
        encoder, preprocess, header = load_encoder(args.run)
        what = f"the encoder of {args.run} ({header['backbone']} {header['widths']})"
    else:
        encoder, preprocess, header = build_backbone("convnet", in_channels=1, widths=(32, 64, 128, 256), depth=1).eval(), Preprocess(28, 1), {}
        what = "the default Fashion-MNIST encoder (convnet 32,64,128,256, depth 1, random init)"
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "encoder.onnx"
        export_module(encoder, preprocess, header, path, format="onnx")
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    side, channels = preprocess.image_size, preprocess.in_channels
    print(f"{what}, {channels}×{side}×{side}; {cpu_model()}; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
          f"{args.threads} threads each; median of {args.repeats} passes at batch 1, {max(args.repeats // 10, 1)} at batch 256\n")
    print("| batch | PyTorch (ms) | ONNX Runtime (ms) | PyTorch / ORT |")
    print("|---:|---:|---:|---:|")
    for batch in BATCHES:
        repeats = args.repeats if batch == 1 else max(args.repeats // 10, 1)
        images = torch.rand(batch, channels, side, side)
        with torch.no_grad():
            torch_ms = median_ms(functools.partial(encoder, images), repeats)
        ort_ms = median_ms(functools.partial(session.run, ["features"], {"images": images.numpy()}), repeats)
        print(f"| {batch} | {torch_ms:.3f} | {ort_ms:.3f} | {torch_ms / ort_ms:.2f} |")


if __name__ == "__main__":
    main()
