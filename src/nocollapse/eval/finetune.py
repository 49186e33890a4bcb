"""Fine-tuning: the encoder and a linear head trained end to end on labels, against the same network from scratch.

The honest "does pretraining help?" row (BYOL §3.2 fine-tunes on 1%, 10% and all of ImageNet's labels). Both
networks, the pretrained encoder and the same architecture at the random-encoder baseline's initialisation (drawn from
the run's seed: the run's own start unless it began from ``model.init_from``), get the same recipe and
budget, so the gap between them is what pretraining is worth once labels are allowed to move the weights:

* a linear head ``Linear(D → C)`` on the pooled features, cross-entropy on the labels. Each network starts its
  head the way it would be trained on its own. The pretrained one starts from the linear probe of its frozen features
  (:func:`~nocollapse.eval.linear.fit_linear_classifier`), then everything trains: LP-FT (Kumar et al., ICLR 2022,
  "Fine-tuning can distort pretrained features"). From a random head the first steps' large gradients wreck the
  pretrained features: on the default run's encoder at lr 0.05, fine-tuning on 10% of Fashion-MNIST's labels ended at
  82.8%, under the 88.2% of the frozen features' probe, and LP-FT gave 89.0% (one draw). The network from scratch
  starts from a random head (nn.Linear's U(±1/√D)): a probe of random features is no start, and on the same draw it
  pulled the from-scratch run down from 85.8% to 65.4%;
* light augmentation: a random resized crop of 80–100% of the area and a horizontal flip (the per-channel
  normalisation of the run; no colour or blur, which are the pretext task's, not the label's);
* SGD with Nesterov momentum 0.9, weight decay 5e-4 (the head's bias and BatchNorm excluded), batch 128, the
  learning rate cosine-decayed from ``lr`` to 0 over ``steps = max(epochs · ⌈n/128⌉, min_steps)``: on a 600-image
  subset 3 epochs are 15 steps, too few to move anything, so small subsets are trained for ``min_steps``;
* BatchNorm in training mode while fine-tuning; scored on the whole test split in eval mode, float32.

Determinism: everything random (head initialisation, batch order, crops) is drawn from private generators seeded
with ``seed``, never the global RNG, so the same seed gives the same figures and the caller's RNG is untouched.
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
from nocollapse.eval.linear import fit_linear_classifier
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
        """Optimiser steps for ``labelled`` training images: each epoch one batch of up to 128 per 128 images, the last
        one smaller (a pass over the set), at least ``min_steps``."""
        return max(self.epochs * math.ceil(labelled / BATCH_SIZE), self.min_steps)

    def describe(self) -> str:
        return (f"SGD Nesterov 0.9, lr {self.lr:g} cosine, wd {WEIGHT_DECAY:g}, batch {BATCH_SIZE}, {self.epochs} epoch(s) "
                f"(at least {self.min_steps} steps), crop 0.8–1 + flip; the pretrained head from its frozen features' probe "
                "(LP-FT), the from-scratch head random")


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
    head_from_probe: bool = True,
    probe_epochs: int = 30,
    probe_min_steps: int = 1500,
    mean: tuple[float, ...] = (),
    std: tuple[float, ...] = (),
    seed: int = 0,
    device: torch.device | str = "cpu",
    amp: bool = False,
    channels_last: bool = False,
    progress: bool = False,
    description: str = "fine-tune",
) -> dict[str, float]:
    """Fine-tune a copy of ``encoder`` (``encoder.output_dim`` features) with a new linear head on uint8 ``train_images``,
    the head started from the probe of the frozen features (``head_from_probe``, LP-FT; fitted with ``probe_epochs`` and
    ``probe_min_steps`` as :func:`~nocollapse.eval.linear.linear_probe`, so that at the evaluation's settings the head
    starts where the linear-probe column's fit ended) or at random. Returns ``{"top1": test accuracy, "steps": optimiser
    steps, "seconds": wall-clock}``; ``encoder`` is not modified. ``amp`` runs the training passes under bf16 autocast
    (the loss and the test pass stay float32)."""
    device = torch.device(device)
    started = time.perf_counter()
    steps = recipe.steps(len(train_images))
    augment = light_augmentation(mean, std)
    order_rng, crop_rng = torch.Generator().manual_seed(seed), torch.Generator(device=device).manual_seed(seed)
    network = copy.deepcopy(encoder).to(device)
    head = torch.nn.utils.skip_init(nn.Linear, encoder.output_dim, num_classes, device=device)  # its own init would draw from the global RNG
    with torch.no_grad():
        if head_from_probe:
            features = encoder_features(network, train_images, mean=mean, std=std, device=device)
            weight, bias = fit_linear_classifier(features, train_labels.to(device), num_classes=num_classes, epochs=probe_epochs,
                                                 min_steps=probe_min_steps, seed=seed)
            head.weight.copy_(weight)
            head.bias.copy_(bias)
            del features
        else:  # nn.Linear's initialisation, from the private generator
            bound = 1 / math.sqrt(encoder.output_dim)
            head.weight.copy_(torch.empty(head.weight.shape).uniform_(-bound, bound, generator=order_rng))
            head.bias.copy_(torch.empty(head.bias.shape).uniform_(-bound, bound, generator=order_rng))
    model = nn.Sequential(network, head)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]  # BatchNorm and the head's bias
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
                                lr=recipe.lr, momentum=MOMENTUM, nesterov=True)
    labels = train_labels.to(device)
    bar = Progress(steps, description, enabled=progress)
    model.train()
    order, position = torch.randperm(len(train_images), generator=order_rng), 0
    for step in range(steps):
        # A pass takes every image once, the last batch smaller; a last batch of one image (which BatchNorm cannot
        # normalise in training mode) is left for the next pass.
        if position >= len(order) or len(order) - position == 1:
            order, position = torch.randperm(len(train_images), generator=order_rng), 0
        index = order[position : position + BATCH_SIZE]
        position += BATCH_SIZE
        views = augment(train_images[index].to(device, non_blocking=True), crop_rng)[0]  # (B, C, H, W), normalised
        if channels_last:
            views = views.contiguous(memory_format=torch.channels_last)
        for group in optimizer.param_groups:
            group["lr"] = recipe.lr * (1 + math.cos(math.pi * step / steps)) / 2
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(views)
        loss = F.cross_entropy(logits.float(), labels[index.to(device, non_blocking=True)])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        bar.update(1)
    bar.close()
    logits = encoder_features(model, test_images, mean=mean, std=std, device=device, channels_last=channels_last)
    top1 = (logits.argmax(dim=1) == test_labels.to(device)).float().mean().item()
    return {"top1": top1, "steps": steps, "seconds": round(time.perf_counter() - started, 2)}
