"""Our batched view generation against kornia's equivalent pipeline: same device, same batch, same run.

Both turn a uint8 batch into M normalised float views with BYOL's recipe: random resized crop, horizontal
flip, colour jitter (p 0.8; saturation and hue on colour images only), grayscale (p 0.2, colour only),
Gaussian blur and solarize with per-view probabilities (view 1: blur 1.0, solarize 0.0; view 2: blur 0.1,
solarize 0.2), then normalisation. kornia runs one ``AugmentationSequential`` per view (its
probabilities differ per view) and includes the uint8 → float conversion, as ours does. Calls take turns,
so a slow spell of a shared machine slows both alike; the table gives medians.

Needs kornia (``pip install kornia``; it needs only torch). Not a test dependency.

    python benchmarks/augment.py
    python benchmarks/augment.py --device cuda --batch 512 --calls 50
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from nocollapse.augment.views import AugmentConfig, ViewGenerator, blur_kernel_size

CASES = {  # name: (channels, side, mean, std)
    "CIFAR-like 3×32×32": (3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "Fashion-MNIST 1×28×28": (1, 28, (0.2860,), (0.3530,)),
}


def kornia_views(config: AugmentConfig, channels: int, side: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """kornia's version of ``ViewGenerator(config)``: (B, C, H, W) uint8 → (M, B, C, S, S) float."""
    import kornia.augmentation as K

    kernel = blur_kernel_size(side, config.blur_kernel_fraction)
    colour = channels == 3

    def view(m: int) -> K.AugmentationSequential:
        steps = [K.RandomResizedCrop((side, side), scale=config.crop_scale, ratio=config.crop_ratio),
                 K.RandomHorizontalFlip(p=config.flip_prob),
                 K.ColorJitter(config.brightness, config.contrast, config.saturation if colour else 0.0, config.hue if colour else 0.0,
                               p=config.jitter_prob)]
        if colour:
            steps.append(K.RandomGrayscale(p=config.grayscale_prob))
        blur, solarize = config.blur_prob[m % len(config.blur_prob)], config.solarize_prob[m % len(config.solarize_prob)]
        if blur > 0:
            steps.append(K.RandomGaussianBlur((kernel, kernel), config.blur_sigma, p=blur))
        if solarize > 0:
            steps.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=solarize))  # threshold 0.5, as ours
        steps.append(K.Normalize(mean=torch.tensor(config.mean), std=torch.tensor(config.std)))
        return K.AugmentationSequential(*steps)

    pipelines = [view(m) for m in range(config.num_views)]

    def run(images: torch.Tensor) -> torch.Tensor:
        x = images.float().div(255)
        return torch.stack([pipeline(x) for pipeline in pipelines])

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--calls", type=int, default=20, help="timed calls of each pipeline (median)")
    args = parser.parse_args()
    import kornia

    device = torch.device(args.device)
    print(f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else f'cpu, {torch.get_num_threads()} threads'}, "
          f"torch {torch.__version__}, kornia {kornia.__version__}; batch {args.batch}, 2 views, median of {args.calls} calls")
    print("| images | ours (ms) | kornia (ms) | kornia / ours |")
    print("|---|---|---|---|")
    for name, (channels, side, mean, std) in CASES.items():
        config = AugmentConfig(mean=mean, std=std)
        images = torch.randint(0, 256, (args.batch, channels, side, side), dtype=torch.uint8, device=device)
        ours, theirs = ViewGenerator(config), kornia_views(config, channels, side)
        generator = torch.Generator(device=device).manual_seed(0)
        assert ours(images, generator).shape == theirs(images).shape  # the same views, in shape at least
        runs = [lambda: ours(images, generator), lambda: theirs(images)]
        times: list[list[float]] = [[], []]
        for call in range(args.calls + 2):  # two warm-up calls
            for run, spent in zip(runs, times):
                _sync(device)
                started = time.perf_counter()
                run()
                _sync(device)
                if call >= 2:
                    spent.append(time.perf_counter() - started)
        ours_ms, kornia_ms = (1000 * statistics.median(spent) for spent in times)
        print(f"| {name} | {ours_ms:.1f} | {kornia_ms:.1f} | {kornia_ms / ours_ms:.1f}× |", flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    main()
