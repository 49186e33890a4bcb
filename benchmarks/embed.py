"""`nocollapse embed` throughput against the bare forward pass of the same encoder on tensors already in memory.

Two inputs: the Fashion-MNIST test split (10,000 images of 28 px, the default encoder) and a folder of JPEGs at
96 px (written here; an RGB encoder of the default widths at 96 px). The ratio embed / bare forward is what
decoding, preprocessing and writing the file cost. The encoders are randomly initialised (throughput does not
depend on the weights) and saved as a run's encoder.safetensors would be.

    python benchmarks/embed.py                  # 10,000 Fashion-MNIST test images, 2,000 JPEGs
    python benchmarks/embed.py --images 500     # a quick check
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from nocollapse.config import resolve_config
from nocollapse.data import load_dataset
from nocollapse.embed import embed
from nocollapse.encoder import ENCODER_FILE, encoder_metadata, load_encoder
from nocollapse.nn.backbones import build_backbone
from nocollapse.train.checkpoint import save_safetensors


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def saved_encoder(folder: Path, overrides: list[str], in_channels: int, image_size: int) -> Path:
    config = resolve_config("fmnist-byol", overrides)
    encoder = build_backbone(config.model.backbone, in_channels=in_channels, widths=config.model.widths, depth=config.model.depth,
                             image_size=image_size)
    folder.mkdir(parents=True)
    save_safetensors(folder / ENCODER_FILE, encoder.state_dict(), metadata=encoder_metadata(config, in_channels, image_size))
    return folder


@torch.no_grad()
def bare_forward(model: Path, images: torch.Tensor, batch: int) -> float:
    """Seconds of ``encoder(preprocess(batch))`` over ``images`` already decoded in memory."""
    encoder, preprocess, _ = load_encoder(model)
    started = time.perf_counter()
    for start in range(0, len(images), batch):
        encoder(preprocess(images[start : start + batch]))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000, help="JPEGs in the folder")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nocollapse-embed-bench-"))
    try:
        gray = saved_encoder(work / "gray", [], 1, 28)
        rgb = saved_encoder(work / "rgb", ["augment.mean=0.5,0.5,0.5", "augment.std=0.25,0.25,0.25"], 3, 96)
        rng = np.random.default_rng(0)
        photos = work / "photos"
        photos.mkdir()
        for i in range(args.images):
            small = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((96, 96), Image.Resampling.BICUBIC)
            small.save(photos / f"{i:06d}.jpg", quality=90)
        test = load_dataset("fashion-mnist", "test").images
        _, rgb_preprocess, _ = load_encoder(rgb)
        decoded = rgb_preprocess.read(sorted(photos.iterdir()))  # the folder decoded once, for the bare forward
        cases = [("Fashion-MNIST test (28 px, 1 channel)", gray, ["fashion-mnist:test"], test),
                 (f"folder of {args.images} JPEGs (96 px, RGB)", rgb, [photos], decoded)]
        print(f"{cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}; batch {args.batch}; median of {args.repeats}")
        print("| input | images | embed (img/s) | bare forward (img/s) | embed / bare |")
        print("|---|---|---|---|---|")
        for name, model, inputs, images in cases:
            embedded, bare = [], []
            for repeat in range(args.repeats):  # interleaved, so a slow spell of a shared machine hits both
                out = work / f"out-{repeat}.npy"
                result = embed(model, inputs, out, batch_size=args.batch, device="cpu", progress=False, log=lambda *_: None, force=True)
                embedded.append(result.rows / result.seconds)
                bare.append(len(images) / bare_forward(model, images, args.batch))
            e, b = statistics.median(embedded), statistics.median(bare)
            print(f"| {name} | {len(images)} | {e:.0f} | {b:.0f} | {e / b:.2f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
