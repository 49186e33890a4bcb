"""What a regularizer costs per training step: full steps of each configuration, timed in turn.

Builds the real Trainer for each configuration (data on the device, views, method, optimiser, EMA) and
times ``train_step`` on the same batches. Configurations are interleaved round by round, so a slow
spell of a shared machine hits all of them alike; the table gives the median over rounds.

    python benchmarks/regularizer_cost.py                       # CPU, Fashion-MNIST presets
    python benchmarks/regularizer_cost.py --device cuda --steps 50 --rounds 5
    python benchmarks/regularizer_cost.py --only "BYOL (fmnist)" "checked"
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from nocollapse.config import resolve_config
from nocollapse.train.loop import Trainer
from nocollapse.train.runinfo import cpu_model

REGULARIZED = ["regularizers.singular_value=30", "regularizers.brownian=0.1"]
CONFIGS: dict[str, tuple[str, list[str]]] = {
    "BYOL (fmnist-byol)": ("fmnist-byol", []),
    "BYOL + SV + BD": ("fmnist-byol", REGULARIZED),
    "BYOL + contrastive (byol+contrastive)": ("byol+contrastive", []),
    "BYOL + uniformity (byol+uniformity)": ("byol+uniformity", []),
    "BYOL + MHE (byol+mhe)": ("byol+mhe", []),
    "BYOL + kernel uniformity (1, 40, 40)": ("fmnist-byol", ["regularizers.kernel_uniformity=1"]),
    "SFRIK, q = 2048 (fmnist-sfrik)": ("fmnist-sfrik", []),
    "MSBReg, 4 views × 64 (fmnist-msbreg)": ("fmnist-msbreg", []),
    "MSBReg without SV, BD": ("fmnist-msbreg", ["regularizers.singular_value=0", "regularizers.brownian=0"]),
    "W-MSE 2 (fmnist-wmse2)": ("fmnist-wmse2", []),
    "W-MSE 2 + SV + BD": ("fmnist-wmse2", REGULARIZED),
    # Not a regularizer: what checking every step for run.max_skipped_steps costs (a sync and a copy of the BatchNorm buffers).
    "BYOL, every step checked finite": ("fmnist-byol", ["run.max_skipped_steps=10"]),
    # Nor these: the online linear probe (on by default where the images have labels) against the same steps without it.
    "BYOL, online probe (eval.online_probe)": ("fmnist-byol", ["eval.online_probe=true"]),
    "BYOL, no online probe": ("fmnist-byol", ["eval.online_probe=false"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--only", nargs="+", metavar="TEXT", help="only the configurations whose name contains one of these")
    args = parser.parse_args()
    configs = {name: c for name, c in CONFIGS.items() if not args.only or any(text in name for text in args.only)}

    trainers = {}
    with tempfile.TemporaryDirectory() as out:
        for i, (name, (preset, overrides)) in enumerate(configs.items()):
            config = resolve_config(preset, [*overrides, f"run.device={args.device}", f"run.out_dir={out}", f"run.name=c{i}",
                                             *([f"data.data_dir={args.data_dir}"] if args.data_dir else [])])
            trainers[name] = Trainer(config, run_dir=Path(out) / f"c{i}", progress=False, log=lambda *_: None)
        times: dict[str, list[float]] = {name: [] for name in trainers}
        for _ in range(args.rounds):
            for name, trainer in trainers.items():
                batch = trainer.config.optim.batch_size
                generator = torch.Generator(device=trainer.device)
                # The batch's labels train the online probe where it is on, as in the training loop.
                labels = (lambda rows: trainer.pretrain_labels[rows]) if trainer.online_probe is not None else (lambda rows: None)
                trainer.train_step(trainer.pretrain_images[:batch], generator.manual_seed(0), generator, labels(slice(0, batch)))  # warm-up
                _sync(trainer.device)
                started = time.perf_counter()
                for step in range(args.steps):
                    rows = slice(step * batch, (step + 1) * batch)
                    trainer.train_step(trainer.pretrain_images[rows], generator.manual_seed(step), generator, labels(rows))
                _sync(trainer.device)
                times[name].append((time.perf_counter() - started) / args.steps)

    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu_model()
    print(f"{device}, torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.rounds} rounds × {args.steps} steps")
    print(f"{'configuration':<38} {'ms/step':>8} {'views/s':>8}")
    for name, trainer in trainers.items():
        seconds = statistics.median(times[name])
        views = trainer.config.optim.batch_size * trainer.config.augment.num_views
        print(f"{name:<38} {1000 * seconds:>8.1f} {views / seconds:>8.0f}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    main()
