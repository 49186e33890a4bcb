"""Evaluate a run: the trained encoder beside raw pixels and the same encoder at initialisation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from nocollapse.config import Config
from nocollapse.data import ImageDataset, load_dataset
from nocollapse.errors import UserError
from nocollapse.eval.evaluate import RepresentationScores, format_table, score_features
from nocollapse.eval.features import encoder_features, pixel_features
from nocollapse.nn.backbones import build_backbone
from nocollapse.train.checkpoint import save_json
from nocollapse.train.loop import load_run_config, select_device

EVAL_FILE = "eval.json"


def evaluate_run(
    run_dir: Path,
    config: Config | None = None,
    *,
    train_set: ImageDataset | None = None,
    test_set: ImageDataset | None = None,
    device: str | None = None,
    log: Callable[[str], object] = print,
) -> list[RepresentationScores]:
    """Score ``run_dir/encoder.pt`` (kNN for each ``eval.knn_k``, linear probe) and, when
    ``eval.baselines``, raw pixels and the randomly initialised encoder; print and save ``eval.json``.

    The random encoder is the run's own initialisation (same seed, same architecture), so the gap
    between the two rows is exactly what training added.
    """
    config = config or load_run_config(run_dir)
    weights = run_dir / "encoder.pt"
    if not weights.is_file():
        raise UserError(f"{run_dir} has no encoder.pt: the run has not finished; `nocollapse train --resume` it first")
    device_ = select_device(device or config.run.device)
    train_set = train_set or load_dataset(config.data.dataset, "train", config.data.data_dir)
    test_set = test_set or load_dataset(config.data.dataset, "test", config.data.data_dir)
    e = config.eval
    classes = len(train_set.classes)

    def score(name: str, train_features: torch.Tensor, test_features: torch.Tensor) -> RepresentationScores:
        row = score_features(name, train_features, train_set.labels, test_features, test_set.labels, num_classes=classes,
                             knn_k=e.knn_k, knn_temperature=e.knn_temperature, knn_euclidean_k=e.knn_euclidean_k, probe=e.linear_probe, probe_epochs=e.probe_epochs, seed=config.run.seed)
        log(f"  scored {name} in {row.seconds:.1f}s")
        return row

    def encoder_rows(name: str, encoder: torch.nn.Module) -> RepresentationScores:
        encoder.to(device_)
        features = lambda images: encoder_features(encoder, images, mean=config.augment.mean, std=config.augment.std, device=device_, amp=config.run.amp)
        return score(name, features(train_set.images), features(test_set.images))

    model = config.model
    make_encoder = lambda: build_backbone(model.backbone, in_channels=train_set.images.shape[1], widths=model.widths, depth=model.depth, stem=model.stem)
    rows = []
    if e.baselines:
        rows.append(score("raw pixels", pixel_features(train_set.images).to(device_), pixel_features(test_set.images).to(device_)))
        # The trained run's encoder started from exactly this initialisation: methods build the encoder first.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.run.seed)
            rows.append(encoder_rows(f"random {model.backbone}", make_encoder()))
    trained = make_encoder()
    try:
        trained.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except Exception as error:
        raise UserError(f"cannot load {weights} ({type(error).__name__}: {error}); the file is damaged or from another architecture") from None
    rows.append(encoder_rows(f"{config.method.name} {config.model.backbone}", trained))

    log(format_table(rows, title=f"{config.data.dataset} test split, top-1 accuracy (%)"))
    save_json(run_dir / EVAL_FILE, {"dataset": config.data.dataset, "rows": [row.to_dict() for row in rows]})
    return rows
