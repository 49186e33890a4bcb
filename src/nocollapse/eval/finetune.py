"""Fine-tuning: the encoder and a linear head trained end to end on labels, against the same network from scratch.

The honest "does pretraining help?" row (BYOL §3.2 fine-tunes on 1%, 10% and all of ImageNet's labels). Both
networks, the pretrained encoder and the same architecture at the run's initialisation, get the same recipe and
budget, so the gap between them is what pretraining is worth once labels are allowed to move the weights:

* a linear head ``Linear(D → C)`` on the pooled features, cross-entropy on the labels;
* light augmentation: a random resized crop of 80–100% of the area and a horizontal flip (the per-channel
  normalisation of the run; no colour or blur, which are the pretext task's, not the label's);
* SGD with Nesterov momentum 0.9, weight decay 5e-4 (the head's bias and BatchNorm excluded), batch 128, the
  learning rate cosine-decayed from ``lr`` to 0 over ``steps = max(epochs · ⌈n/128⌉, min_steps)``: on a 600-image
  subset 3 epochs are 15 steps, too few to move anything, so small subsets are trained for ``min_steps``;
* BatchNorm in training mode while fine-tuning; scored on the whole test split in eval mode, float32.

Determinism: everything random (head initialisation, batch order, crops) is drawn inside a forked global RNG
seeded with ``seed``, so the same seed gives the same figures and the caller's RNG is untouched.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nocollapse.augment.views import AugmentConfig, ViewGenerator
from nocollapse.eval.features import encoder_features
from nocollapse.progress import Progress

BATCH_SIZE = 128
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4


@dataclass(frozen=True)
class FinetuneRecipe:
    """The budget and the optimiser of a fine-tuning run, as they go into tables."""

    epochs: int
    min_steps: int = 500
    lr: float = 0.05

    def steps(self, labelled: int) -> int:
        """Optimiser steps for ``labelled`` training images."""
        return max(self.epochs * math.ceil(labelled / BATCH_SIZE), self.min_steps)

    def describe(self) -> str:
        return (f"SGD Nesterov 0.9, lr {self.lr:g} cosine, wd {WEIGHT_DECAY:g}, batch {BATCH_SIZE}, {self.epochs} epoch(s) "
                f"(at least {self.min_steps} steps), crop 0.8–1 + flip")


def light_augmentation(mean: tuple[float, ...], std: tuple[float, ...]) -> ViewGenerator:
    """Random resized crop (80–100% of the area) and flip, normalised with ``mean``/``std``; nothing else."""
    # Two views is the least a ViewGenerator draws (methods compare views); fine-tuning uses the first.
    return ViewGenerator(AugmentConfig(num_views=2, crop_scale=(0.8, 1.0), jitter_prob=0.0, grayscale_prob=0.0, blur_prob=(0.0,),
                                       solarize_prob=(0.0,), mean=mean, std=std))


def finetune(
    encoder: nn.Module,
    train_images: Tensor,
    train_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    *,
    num_classes: int,
    recipe: FinetuneRecipe,
    mean: tuple[float, ...] = (),
    std: tuple[float, ...] = (),
    seed: int = 0,
    device: torch.device | str = "cpu",
    amp: bool = False,
    channels_last: bool = False,
    progress: bool = False,
    description: str = "fine-tune",
) -> dict[str, float]:
    """Fine-tune a copy of ``encoder`` (``encoder.output_dim`` features) with a new linear head on uint8 ``train_images``;
    returns ``{"top1": test accuracy, "steps": optimiser steps, "seconds": wall-clock}``. ``encoder`` is not modified.
    ``amp`` runs the training passes under bf16 autocast (the loss and the test pass stay float32)."""
    device = torch.device(device)
    started = time.perf_counter()
    steps = recipe.steps(len(train_images))
    augment = light_augmentation(mean, std)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        network = copy.deepcopy(encoder).to(device)
        head = nn.Linear(encoder.output_dim, num_classes).to(device)
        model = nn.Sequential(network, head)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        decay = [p for name, p in model.named_parameters() if p.ndim > 1]
        no_decay = [p for name, p in model.named_parameters() if p.ndim <= 1]  # BatchNorm and the head's bias
        optimizer = torch.optim.SGD([{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
                                    lr=recipe.lr, momentum=MOMENTUM, nesterov=True)
        labels = train_labels.to(device)
        bar = Progress(steps, description, enabled=progress)
        model.train()
        order, position = torch.randperm(len(train_images)), 0
        for step in range(steps):
            if position + BATCH_SIZE > len(order) and position > 0:  # a new epoch: every image once per pass
                order, position = torch.randperm(len(train_images)), 0
            index = order[position : position + BATCH_SIZE]
            position += BATCH_SIZE
            views = augment(train_images[index].to(device, non_blocking=True))[0]  # (B, C, H, W), normalised
            if channels_last:
                views = views.contiguous(memory_format=torch.channels_last)
            for group in optimizer.param_groups:
                group["lr"] = recipe.lr * (1 + math.cos(math.pi * step / steps)) / 2
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(views)
            loss = F.cross_entropy(logits.float(), labels[index.to(device)])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bar.update(1)
        bar.close()
    logits = encoder_features(model, test_images, mean=mean, std=std, device=device, channels_last=channels_last)
    top1 = (logits.argmax(dim=1) == test_labels.to(device)).float().mean().item()
    return {"top1": top1, "steps": steps, "seconds": round(time.perf_counter() - started, 2)}
