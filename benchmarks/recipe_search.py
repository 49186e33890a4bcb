"""Recipe search: train variants of a preset on the same image budget and compare their kNN accuracy.

Each variant is a list of config overrides on the preset. Runs are short, so a GPU can replay the CPU
budget of the default preset many times over: the configs are identical, only the device differs.

    python benchmarks/recipe_search.py --variants base lr2 scale0.6+ema0.95 --device cuda
    python benchmarks/recipe_search.py --list
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


from nocollapse.config import resolve_config
from nocollapse.eval.features import encoder_features
from nocollapse.eval.knn import knn_accuracies
from nocollapse.train.loop import Trainer

VARIANTS: dict[str, list[str]] = {
    "base": [],
    "lr0.5": ["optim.lr=0.5"],
    "lr2": ["optim.lr=2.0"],
    "lr4": ["optim.lr=4.0"],
    "adamw": ["optim.name=adamw", "optim.lr=2e-3", "optim.scale_lr=false", "optim.weight_decay=1e-4"],
    "adamw-lr4e-3": ["optim.name=adamw", "optim.lr=4e-3", "optim.scale_lr=false", "optim.weight_decay=1e-4"],
    "scale0.08": ["augment.crop_scale=0.08,1.0"],
    "scale0.4": ["augment.crop_scale=0.4,1.0"],
    "scale0.6": ["augment.crop_scale=0.6,1.0"],
    "batch128": ["optim.batch_size=128"],
    "batch512": ["optim.batch_size=512"],
    "ema0.98": ["method.byol.ema_base=0.98"],
    "ema0.996": ["method.byol.ema_base=0.996"],
    "ema0.95": ["method.byol.ema_base=0.95"],
    "noblur": ["augment.blur_prob=0.0"],
    "nosolarize": ["augment.solarize_prob=0.0"],
    "jitter-strong": ["augment.brightness=0.8", "augment.contrast=0.8"],
    "nojitter": ["augment.jitter_prob=0.0"],
    "warmup0.3": ["optim.warmup_epochs=0.3"],
    "wd1e-4": ["optim.weight_decay=1e-4"],
    "narrow": ["model.widths=32,64,128"],
    "wide-head": ["model.projector_hidden=2048", "model.predictor_hidden=2048", "model.projection_dim=256"],
    "small-head": ["model.projector_hidden=512", "model.predictor_hidden=512", "model.projection_dim=64"],
    "wide-last": ["model.widths=32,64,128,512"],
    # Issue 23: the remedies of the 1-epoch pilots on the full budget, and what the faster bf16 step affords.
    "uniformity1": ["regularizers.uniformity=1.0"],
    "infonce1": ["regularizers.contrastive=1.0"],
    "sv30": ["regularizers.singular_value=30.0"],
    "kernel1": ["regularizers.kernel_uniformity=1.0"],
    "epochs6": ["optim.epochs=6"],
    "epochs8": ["optim.epochs=8"],
    "wide": ["model.widths=48,96,192,384"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="fmnist-byol")
    parser.add_argument("--variants", nargs="*", default=["base"])
    parser.add_argument("--extra", nargs="*", default=[], help="overrides applied to every variant")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--json", type=Path, help="append one JSON line per run here")
    args = parser.parse_args()
    if args.list:
        for name, overrides in VARIANTS.items():
            print(f"{name:16s} {' '.join(overrides)}")
        return 0
    rows = []
    for name in args.variants:
        # "a+b+key=value": the overrides of variants a and b, then key=value.
        overrides = [o for part in name.split("+") for o in (VARIANTS[part] if part in VARIANTS else [part])]
        for seed in range(args.seeds):
            with tempfile.TemporaryDirectory() as out:
                config = resolve_config(args.preset, [*args.extra, *overrides, f"run.device={args.device}", f"run.out_dir={out}",
                                                      f"run.seed={seed}", "eval.monitor_every=0"])
                started = time.perf_counter()
                trainer = Trainer(config, progress=False, log=lambda *_: None)
                trainer.fit()
                seconds = time.perf_counter() - started
                feats = lambda images: encoder_features(trainer.method.encoder, images, mean=config.augment.mean, std=config.augment.std, device=trainer.device)
                accuracy = knn_accuracies(feats(trainer.train_set.images), trainer.train_set.labels.to(trainer.device),
                                          feats(trainer.test_set.images), trainer.test_set.labels.to(trainer.device),
                                          num_classes=len(trainer.train_set.classes), ks=(20, 200))
            row = {"variant": name, "seed": seed, "knn20": accuracy[20], "knn200": accuracy[200], "train_s": round(seconds, 1),
                   "overrides": [*args.extra, *overrides]}
            rows.append(row)
            print(f"{name:24s} seed {seed}  kNN k=20 {100 * accuracy[20]:6.2f}  k=200 {100 * accuracy[200]:6.2f}  train {seconds:6.1f}s", flush=True)
            if args.json:
                with open(args.json, "a") as file:
                    file.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
