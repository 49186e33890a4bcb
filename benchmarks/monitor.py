"""What the per-epoch monitor costs: the trainer's monitor against the same figures computed as it did before.

The monitor (``Trainer._monitor``) scores the kNN of the test split against a 10k-image training bank and the
geometry of the test features and projections. Before issue 23 it passed the test set through the encoder
twice (for the features, then inside ``method.embed`` for the projections), and drew and encoded the
alignment views again at every epoch, once through the encoder and once through the whole method. Here
both run on the same trainer (the preset's networks at initialisation: the cost does not depend on the
weights), in float32 and under bf16 autocast, taking turns; the table gives the median seconds of each and
their share of an epoch plus its monitor, at the step's own speed (measured here too). The monitor draws and keeps its
views at its first call, a warm-up call here: the timed calls are those of the later epochs.

    python benchmarks/monitor.py [--preset fmnist] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from nocollapse.config import resolve_config
from nocollapse.eval.features import encoder_features, positive_views, view_features
from nocollapse.eval.geometry import geometry_scores
from nocollapse.eval.knn import knn_accuracy
from nocollapse.train.loop import Trainer
from nocollapse.train.runinfo import cpu_model


def separate_passes(trainer: Trainer) -> None:
    """The monitor's figures as it computed them before: every network on its own pass, the views drawn again."""
    cfg, method, test, train = trainer.config, trainer.method, trainer.test_set, trainer.train_set
    settings = {"mean": cfg.augment.mean, "std": cfg.augment.std, "channels_last": cfg.run.channels_last, "amp": trainer.bf16}
    features = lambda images: encoder_features(method.encoder, images, **settings)  # noqa: E731
    test_features = features(test.images)
    bank = cfg.eval.monitor_train_samples or len(train)  # 0: all
    subset = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.run.seed))[:bank]
    knn_accuracy(features(train.images[subset]), train.labels[subset], test_features, test.labels, num_classes=len(train.classes),
                 k=min(cfg.eval.knn_k), temperature=cfg.eval.knn_temperature)
    views = positive_views(test.images, cfg.augment)
    geometry_scores(test_features, test.labels, views=view_features(method.encoder, views, **settings))
    geometry_scores(encoder_features(method, test.images, forward=method.embed, **settings), test.labels,
                    views=view_features(method, views, forward=method.embed, **settings))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="fmnist-byol")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls of each (median)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for amp in ("false", "true"):
            config = resolve_config(args.preset, [f"run.out_dir={out}", f"run.name=monitor-{amp}", "run.device=cpu", f"run.amp={amp}"])
            trainer = Trainer(config, progress=False, log=lambda *_: None)
            images, generator = trainer.pretrain_images[: config.optim.batch_size], torch.Generator()
            step = lambda: trainer.train_step(images, generator.manual_seed(0))  # noqa: E731
            calls = {"monitor": trainer._monitor, "separate passes": lambda: separate_passes(trainer), "step": step}
            for call in calls.values():  # warm-up; the monitor also draws and keeps its views here
                call()
            times: dict[str, list[float]] = {name: [] for name in calls}
            for _ in range(args.repeats):
                for name, call in calls.items():
                    started = time.perf_counter()
                    call()
                    times[name].append(time.perf_counter() - started)
            epoch = statistics.median(times["step"]) * trainer.steps_per_epoch
            for name in ("separate passes", "monitor"):
                seconds = statistics.median(times[name])
                rows.append((name, "bf16" if trainer.bf16 else "fp32", seconds, epoch, seconds / (epoch + seconds)))
            print(f"  measured run.amp={amp}", flush=True)
    print(f"\n{cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}, preset {args.preset}, median of {args.repeats}")
    print("| monitor | precision | seconds | epoch of training (s) | share of epoch + monitor |")
    print("|---|---|---|---|---|")
    for name, precision, seconds, epoch, share in rows:
        print(f"| {name} | {precision} | {seconds:.1f} | {epoch:.0f} | {100 * share:.1f}% |")


if __name__ == "__main__":
    main()
