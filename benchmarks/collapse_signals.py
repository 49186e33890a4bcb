"""The collapse signal of healthy runs: where each preset's std·√d of its normalised online projections lies
in the first steps of training, against the level below which the training loop warns.

Builds the real Trainer for each preset and runs its first ``--steps`` steps on seeded random batches;
``std·√d`` is the method's ``embedding_std`` (SimSiam's signal) times √(projection dim): about 1 when the
projections spread over the sphere, 0 when they collapse. The first steps matter most: a random
initialisation is where a false alarm would come from. The end-of-training values are in each run's
``eval.json`` (``nocollapse eval``) and are tabled in docs/benchmarks.md.

    python benchmarks/collapse_signals.py                        # every Fashion-MNIST preset, 60 steps
    python benchmarks/collapse_signals.py fmnist fmnist-msbreg --steps 200
"""

from __future__ import annotations

import argparse
import math
import tempfile

import torch

from nocollapse.config import resolve_config
from nocollapse.train.collapse import STD_WARNING
from nocollapse.train.loop import Trainer

PRESETS = ["fmnist-byol", "fmnist", "fmnist-wmse2", "fmnist-wmse4", "fmnist-msbreg", "fmnist-sfrik", "byol+contrastive", "byol+uniformity", "byol+mhe"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("presets", nargs="*", default=PRESETS)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()

    print(f"device {args.device}, torch {torch.__version__}; std·√d of the online projections per step, warning below {STD_WARNING}")
    print(f"{'preset':<18} {'d':>5} {'step 1':>7} {'lowest':>7} {'at step':>8} {'last':>6}")
    for preset in args.presets:
        with tempfile.TemporaryDirectory() as out:
            config = resolve_config(preset, [f"run.out_dir={out}", f"run.device={args.device}", "eval.monitor_every=0",
                                             *([f"data.data_dir={args.data_dir}"] if args.data_dir else [])])
            trainer = Trainer(config, progress=False, log=lambda *_: None)
            batch, scale = config.optim.batch_size, math.sqrt(config.model.projection_dim)
            order, views = torch.Generator(), torch.Generator(device=trainer.device)
            signal = []
            for step in range(args.steps):
                index = torch.randperm(len(trainer.train_set), generator=order.manual_seed(step))[:batch].to(trainer.device)
                terms = trainer.train_step(trainer.train_images[index.to(trainer.train_images.device)], views.manual_seed(step), views)
                signal.append(terms["embedding_std"].item() * scale)
            lowest = min(signal)
            print(f"{preset:<18} {config.model.projection_dim:>5} {signal[0]:>7.3f} {lowest:>7.3f} {signal.index(lowest) + 1:>8} {signal[-1]:>6.3f}", flush=True)


if __name__ == "__main__":
    main()
