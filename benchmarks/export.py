"""ONNX Runtime against PyTorch on the CPU: latency of the default Fashion-MNIST encoder, batch 1 and batch 256.

The encoder (ConvNet 32, 64, 128, 256 at 28 px, one channel; random weights: latency does not depend on them)
goes through `nocollapse export`'s own code path, then both run on the same preprocessed inputs.

    python benchmarks/export.py
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import onnxruntime
import torch

from nocollapse.encoder import Preprocess
from nocollapse.export import export_module
from nocollapse.nn.backbones import build_backbone


def median_ms(run, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    encoder = build_backbone("convnet", in_channels=1, widths=(32, 64, 128, 256), depth=1).eval()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "?")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "encoder.onnx"
        export_module(encoder, Preprocess(28, 1), {"backbone": "convnet"}, path, format="onnx")
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        print(f"{cpu}, torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {onnxruntime.__version__}")
        print("| batch | PyTorch (ms) | ONNX Runtime (ms) | PyTorch / ORT |")
        print("|---|---|---|---|")
        for batch, repeats in ((1, 200), (256, 20)):
            images = torch.rand(batch, 1, 28, 28)
            with torch.no_grad():
                torch_ms = median_ms(lambda: encoder(images), repeats)
            ort_ms = median_ms(lambda: session.run(["features"], {"images": images.numpy()}), repeats)
            print(f"| {batch} | {torch_ms:.3f} | {ort_ms:.3f} | {torch_ms / ort_ms:.2f} |")


if __name__ == "__main__":
    main()
