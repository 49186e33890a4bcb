"""What bf16 autocast in feature extraction does to kNN accuracy (``run.amp`` in evaluation, issue 19).

Features of the same Fashion-MNIST bank and test images are extracted twice, in float32 and under bf16
autocast, from the default preset's ConvNet at initialisation and after a few hundred supervised steps
(a linear head, Adam: a quick stand-in for a trained encoder); kNN (cosine, exp(s/T), T = 0.1) is scored
on each. CPU bf16 autocast runs the convolutions in bf16 as CUDA's does. The result is quoted in
``nocollapse/eval/features.py``.

    python benchmarks/eval_precision.py                          # 10k bank, 5k test, 300 steps
    python benchmarks/eval_precision.py --steps 0 --seed 1       # random init only, another subset
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nocollapse.config import resolve_config
from nocollapse.data import load_dataset
from nocollapse.eval.features import normalize_images
from nocollapse.eval.knn import knn_accuracies
from nocollapse.methods import build_method


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bank", type=int, default=10000, help="training images in the kNN bank")
    parser.add_argument("--test", type=int, default=5000, help="test images scored")
    parser.add_argument("--steps", type=int, default=300, help="supervised steps of the trained encoder (0: random init only)")
    parser.add_argument("--seed", type=int, default=0, help="draws the subsets and the training batches")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()

    torch.manual_seed(0)  # the initialisation: the default run's
    device = torch.device(args.device)
    config = resolve_config("fmnist-byol", {})
    mean, std = config.augment.mean, config.augment.std
    train, test = load_dataset("fashion-mnist", "train", args.data_dir), load_dataset("fashion-mnist", "test", args.data_dir)
    g = torch.Generator().manual_seed(args.seed)
    bank = torch.randperm(len(train), generator=g)[: args.bank]
    scored = torch.randperm(len(test), generator=g)[: args.test]
    x_bank, y_bank, x_test, y_test = train.images[bank], train.labels[bank], test.images[scored], test.labels[scored]

    @torch.no_grad()
    def features(encoder: nn.Module, images: Tensor, bf16: bool) -> Tensor:
        encoder.eval()
        chunks = []
        for start in range(0, len(images), 512):
            x = normalize_images(images[start : start + 512].to(device), mean, std).contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                chunks.append(encoder(x).float())
        return torch.cat(chunks)

    def compare(name: str, encoder: nn.Module) -> None:
        (f32_bank, f32_test), (b16_bank, b16_test) = ([features(encoder, x, bf16) for x in (x_bank, x_test)] for bf16 in (False, True))
        error = ((b16_test - f32_test).norm(dim=1) / f32_test.norm(dim=1)).mean().item()
        exact = knn_accuracies(f32_bank, y_bank.to(device), f32_test, y_test.to(device), num_classes=10, ks=(20, 200), temperature=0.1)
        bf16 = knn_accuracies(b16_bank, y_bank.to(device), b16_test, y_test.to(device), num_classes=10, ks=(20, 200), temperature=0.1)
        print(f"{name}: kNN k=20 float32 {100 * exact[20]:.2f}, bf16 {100 * bf16[20]:.2f} ({100 * (bf16[20] - exact[20]):+.2f}); "
              f"k=200 {100 * exact[200]:.2f}, {100 * bf16[200]:.2f} ({100 * (bf16[200] - exact[200]):+.2f}); "
              f"mean relative feature error {error:.1e}", flush=True)

    print(f"device {device}, torch {torch.__version__}; bank {len(bank)}, test {len(scored)}, seed {args.seed}")
    encoder = build_method(config, 1).encoder.to(device, memory_format=torch.channels_last)
    compare("random-init default ConvNet", encoder)
    if args.steps == 0:
        return
    head = nn.Linear(encoder.output_dim, 10).to(device)
    optimizer = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=2e-3)
    encoder.train()
    started = time.perf_counter()
    for _ in range(args.steps):
        index = torch.randint(len(bank), (128,), generator=g)
        x = normalize_images(x_bank[index].to(device), mean, std).contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(head(encoder(x)), y_bank[index].to(device).long())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"  ({args.steps} supervised steps in {time.perf_counter() - started:.0f} s, last loss {loss.item():.3f})")
    compare(f"the ConvNet after {args.steps} supervised steps", encoder)


if __name__ == "__main__":
    main()
