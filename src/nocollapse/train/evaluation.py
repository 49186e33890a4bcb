"""Evaluate a run: the trained encoder beside raw pixels and the same encoder at initialisation."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from nocollapse.config import Config, resolve_config
from nocollapse.encoder import file_sha256, load_encoder, read_weights
from nocollapse.train.runinfo import environment
from nocollapse.data import ImageDataset
from nocollapse.data.registry import NATIVE_SIZE, dataset_splits
from nocollapse.errors import UserError
from nocollapse.eval.evaluate import RepresentationScores, format_few_label_table, format_geometry_table, format_table, render_table, score_features
from nocollapse.eval.few_labels import draw_subsets, label_subsets
from nocollapse.eval.finetune import FinetuneRecipe, finetune
from nocollapse.eval.transfer import TransferTarget, load_target
from nocollapse.eval.features import encoder_features, pixel_features, positive_views, projection_features, view_features
from nocollapse.eval.geometry import UNIFORMITY_SAMPLES, GeometryScores, geometry_scores
from nocollapse.methods import Method, build_method, method_label
from nocollapse.nn.backbones import build_backbone
from nocollapse.train.amp import use_bf16
from nocollapse.train.checkpoint import load_checkpoint, save_checkpoint, save_json
from nocollapse.train.loop import CHECKPOINT, load_run_config, select_device
from nocollapse.train.run_data import fitting_set, load_run_data, unlabelled_probe

EVAL_FILE = "eval.json"
EMBEDDINGS_FILE = "test_embeddings.pt"
MAP_SAMPLES = 2000  # test images whose embeddings are kept for the report's 2-D map (t-SNE is O(N²))


def evaluate_encoder(model: str | Path, dataset: str, out_dir: Path, *, data_dir: str | None = None, overrides: Sequence[str] = (),
                     device: str | None = None, log: Callable[[str], object] = print) -> list[RepresentationScores]:
    """Score an encoder that no run of ours trained (anything :func:`~nocollapse.encoder.load_encoder` takes) on
    ``dataset``, as :func:`evaluate_run` scores a run: ``out_dir`` becomes a run directory holding its config.json
    (the architecture and the preprocessing read from the encoder, ``overrides`` of eval.* on top), encoder.pt and
    eval.json. The random-encoder baseline is the same architecture initialised from ``run.seed``."""
    encoder, preprocess, header = load_encoder(model)
    if dataset != "image-folder" and NATIVE_SIZE.get(dataset) not in (None, preprocess.image_size):
        raise UserError(f"{model} takes {preprocess.image_size}-px images; {dataset}'s are {NATIVE_SIZE[dataset]} px. Evaluate it on an "
                        f"image folder (--dataset image-folder --data-dir DIR, resized to {preprocess.image_size} px) or on a dataset of its size")
    bad = [text for text in overrides if not text.startswith("eval.") and not text.startswith("data.cache_dir=")]
    if bad:
        raise UserError(f"eval --encoder accepts only eval.* and data.cache_dir overrides, got {bad[0]!r}")
    floats = lambda values: ",".join(map(repr, values))
    settings = [f"data.dataset={dataset}", f"model.backbone={header['backbone']}", f"model.widths={header['widths']}",
                f"model.depth={header['depth']}", f"model.stem={header['stem']}", f"augment.mean={floats(preprocess.mean)}",
                f"augment.std={floats(preprocess.std)}", f"run.name={out_dir.name}", f"run.out_dir={out_dir.parent}"]
    if data_dir:
        settings.append(f"data.data_dir={data_dir}")
    if dataset == "image-folder":
        settings.append(f"data.image_size={preprocess.image_size}")
    config = resolve_config("fmnist-byol", [*settings, *overrides])
    out_dir.mkdir(parents=True, exist_ok=True)
    save_json(out_dir / "config.json", config.to_dict())
    source = read_weights(model)[2]
    save_json(out_dir / "environment.json", {**environment(select_device(device or config.run.device)),
                                             "evaluated_encoder": {"path": str(source.resolve()), "sha256": file_sha256(source)}})
    save_checkpoint(out_dir / "encoder.pt", encoder.state_dict())
    log(f"evaluating {model} ({header['backbone']} {header['widths']}, {preprocess.in_channels}×{preprocess.image_size}×"
        f"{preprocess.image_size}) on {dataset}, into {out_dir}")
    return evaluate_run(out_dir, config, device=device, log=log)


def evaluate_run(
    run_dir: Path,
    config: Config | None = None,
    *,
    train_set: ImageDataset | None = None,
    test_set: ImageDataset | None = None,
    device: str | None = None,
    progress: bool = True,
    log: Callable[[str], object] = print,
) -> list[RepresentationScores]:
    """Score ``run_dir/encoder.pt`` (kNN for each ``eval.knn_k``, linear probe) and, when
    ``eval.baselines``, raw pixels and the randomly initialised encoder; print and save ``eval.json``.

    The random encoder is the run's own initialisation (same seed, same architecture), so the gap
    between the two rows is exactly what training added. A second table gives the geometry of each
    row's test embeddings and of the projections (the projection head's output, where the method's
    loss and regularizers act) of the trained method, from ``checkpoint.pt`` (skipped, with a note,
    when the run has none), and with the baselines of the method at initialisation. Then, where asked:
    the same scores with few labels (``eval.label_fractions``, ``eval.shots``: each row's ``few_labels``),
    on other datasets (``eval.transfer``: ``transfer``) and after fine-tuning (``eval.finetune_epochs``:
    ``finetune``). kNN, the probe, the label subsets and fine-tuning fit on all the training images, or on the fixed
    ``eval.train_samples`` of them (:func:`~nocollapse.train.run_data.fitting_set`). ``eval.json`` holds
    ``eval_config`` (the ``eval`` settings that produced it, which ``nocollapse eval RUN eval.KEY=VALUE`` may have
    changed since config.json was written), ``labelled_train_images`` (how many they fitted on), ``rows`` (accuracies and ``geometry``), ``projections`` (``name``,
    ``dim``, ``geometry``), ``transfer`` and ``finetune``; it is saved after the main tables and again after
    each later part, so a fault in one costs only that part. The trained encoder's features of a fixed
    subset of test images go to ``test_embeddings.pt`` (:func:`save_test_embeddings`) for the report's
    map. ``progress`` shows bars on the fine-tuning runs.
    """
    config = config or load_run_config(run_dir)
    weights = run_dir / "encoder.pt"
    if not weights.is_file():
        raise UserError(f"{run_dir} has no encoder.pt: the run has not finished; `nocollapse train --resume` it first")
    device_ = select_device(device or config.run.device)
    if train_set is None or test_set is None:
        data = load_run_data(config.data, pretrain=False, log=log)
        train_set, test_set = train_set or data.train, test_set or data.test
    labelled = train_set is not None and test_set is not None
    if labelled and len(fitted := fitting_set(train_set, config.eval.train_samples, config.run.seed)) < len(train_set):
        log(f"  fitting on {len(fitted)} of the {len(train_set)} training images (eval.train_samples)")
        train_set = fitted
    if test_set is None:  # geometry only, of the pretraining images the monitor followed
        pretrain = load_run_data(config.data, log=log).pretrain_images
        test_set = ImageDataset(images=unlabelled_probe(pretrain, config.run.seed), labels=None, classes=[],
                                name=f"{config.data.dataset}/pretraining")
    e = config.eval
    targets = [TransferTarget.parse(text) for text in e.transfer]
    for target in targets:  # before any scoring: a typo must not cost the evaluation's minutes
        target.check_splits()
    classes = len(train_set.classes) if labelled else 0
    # Drawn once from the run's seed, so that every row below is fitted on the same labelled images.
    subsets = label_subsets(e.label_fractions, e.shots) if labelled else []
    draws = draw_subsets(train_set.labels, classes, subsets, e.label_draws, config.run.seed) if subsets else None
    in_channels, image_size = test_set.images.shape[1], test_set.images.shape[-1]
    # Positive pairs for alignment, in [0, 1]: the same views for every row, flattened for raw pixels.
    views = positive_views(test_set.images, config.augment, device=device_)
    # float32 whatever run.amp says: bf16 moved kNN by up to 0.2 points (eval/features.py), and a run's table
    # should not depend on the device that scored it; these forward passes are a small part of a run.
    forward_settings = {"mean": config.augment.mean, "std": config.augment.std, "amp": False}

    def score(name: str, train_features: torch.Tensor | None, test_features: torch.Tensor, test_views: torch.Tensor) -> RepresentationScores:
        if not labelled:
            started = time.perf_counter()
            geometry = geometry_scores(test_features, None, views=test_views)
            return RepresentationScores(name, test_features.shape[1], {}, seconds=time.perf_counter() - started, geometry=geometry)
        row = score_features(name, train_features, train_set.labels, test_features, test_set.labels, num_classes=classes,
                             knn_k=e.knn_k, knn_temperature=e.knn_temperature, knn_euclidean_k=e.knn_euclidean_k, probe=e.linear_probe,
                             probe_epochs=e.probe_epochs, probe_min_steps=e.probe_min_steps, seed=config.run.seed, test_views=test_views,
                             label_draws=draws)
        log(f"  scored {name} in {row.seconds:.1f}s")
        return row

    def test_features_of(encoder: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """``encoder``'s features of the test images and of their views."""
        encoder.to(device_)
        return encoder_features(encoder, test_set.images, device=device_, **forward_settings), view_features(encoder, views, **forward_settings)

    def encoder_rows(name: str, encoder: torch.nn.Module) -> tuple[RepresentationScores, tuple[torch.Tensor, torch.Tensor]]:
        """The scores of ``encoder`` and its test features (of the images, of their views)."""
        test_features, test_views = test_features_of(encoder)
        train_features = encoder_features(encoder, train_set.images, device=device_, **forward_settings) if labelled else None
        return score(name, train_features, test_features, test_views), (test_features, test_views)

    def projection_row(name: str, method: Method, features: tuple[torch.Tensor, torch.Tensor]) -> tuple[str, GeometryScores]:
        """The geometry of ``method``'s projections of the test images and views, from its encoder's ``features`` of them
        through its head: one encoder pass serves the encoder's row and the projections."""
        method.to(device_)
        projections, view_projections = (projection_features(method, f) for f in features)
        return name, geometry_scores(projections, test_set.labels, views=view_projections)

    model = config.model
    rows, projection_rows = [], []
    # The trained run started from exactly this initialisation: training seeds the RNG, then builds the method.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.run.seed)
        initial = build_method(config, in_channels, image_size)
    if e.baselines:
        rows.append(score("raw pixels", pixel_features(train_set.images).to(device_) if labelled else None, pixel_features(test_set.images).to(device_),
                          pixel_views(views, test_set.images.shape[-2:]).flatten(2)))
        random_row, random_features = encoder_rows(f"random {model.backbone}", initial.encoder)
        rows.append(random_row)
        projection_rows.append(projection_row(f"random {method_label(config)} projections", initial, random_features))
    trained = build_backbone(model.backbone, in_channels=in_channels, widths=model.widths, depth=model.depth, stem=model.stem,
                             zero_init_residual=model.zero_init_residual, image_size=image_size)
    try:
        trained.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except Exception as error:
        raise UserError(f"cannot load {weights} ({type(error).__name__}: {error}); the file is damaged or from another architecture") from None
    trained_row, trained_features = encoder_rows(f"{method_label(config)} {config.model.backbone}", trained)
    rows.append(trained_row)
    if labelled:  # the report colours its map by class
        save_test_embeddings(run_dir / EMBEDDINGS_FILE, trained_features[0], test_set, seed=config.run.seed)
    checkpoint = run_dir / CHECKPOINT
    if checkpoint.is_file():
        method = build_method(config, in_channels, image_size)
        try:
            method.load_state_dict(load_checkpoint(checkpoint)["method"])
        except (KeyError, RuntimeError) as error:
            raise UserError(f"cannot load the method from {checkpoint} ({type(error).__name__}: {error}); "
                            "the file is damaged or from another configuration") from None
        # encoder.pt is the checkpoint's encoder unless a file was replaced since: then the checkpoint's own features.
        projection_rows.append(projection_row(f"{method_label(config)} projections", method,
                                              trained_features if same_weights(trained, method.encoder) else test_features_of(method.encoder)))
    else:
        log(f"  no {CHECKPOINT} in {run_dir}: the projections of the trained method are not scored")

    transferred: list[dict] = []
    finetuned: list[dict] = []

    def save() -> None:
        save_json(run_dir / EVAL_FILE, {"dataset": config.data.dataset, "eval_config": config.to_dict()["eval"],
                                        "labelled_train_images": len(train_set) if labelled else 0,
                                        "rows": [row.to_dict() for row in rows], "finetune": finetuned,
                                        "transfer": [{key: value for key, value in section.items() if key != "scores"}
                                                     | {"rows": [row.to_dict() for row in section["scores"]]} for section in transferred],
                                        "projections": [{"name": name, "dim": g.dim, "geometry": g.to_dict()} for name, g in projection_rows]})

    # The main tables first, printed and saved: the parts after them take minutes, and a fault there must not cost these.
    if labelled:
        log(format_table(rows, title=f"{config.data.dataset} test split, top-1 accuracy (%)"))
        if draws:
            log(format_few_label_table(rows, title=f"{config.data.dataset} test split, top-1 accuracy (%) with few training labels: "
                                                   f"mean ± std over {e.label_draws} class-balanced draw(s) of run.seed={config.run.seed}"))
    else:
        available = dataset_splits(config.data.dataset, config.data.data_dir)
        log(f"no accuracy: it needs labelled train/ and test/ splits ({config.data.dataset} here has {', '.join(available) or 'none'}); "
            f"the geometry below is of {len(test_set)} pretraining images")
    tested = len(test_set)
    log(format_geometry_table([(row.name, row.geometry) for row in rows] + projection_rows,
                              title=f"{config.data.dataset} {'test split' if test_set.labelled else 'pretraining images'}, geometry of their embeddings (alignment: {views.shape[1]} images × "
                                    f"{views.shape[0]} views; uniformity: {min(tested, UNIFORMITY_SAMPLES)} of {tested} images)"))
    save()
    for target in targets:
        section = transfer_section(config, target, trained, initial.encoder if e.baselines else None, channels=in_channels, size=image_size,
                                   device=device_, log=log)
        transferred.append(section)
        log(format_table(section["scores"], title=f"transfer to {section['dataset']} ({section['conversion']}): test top-1 accuracy (%), "
                                                  "fitted on its train split"))
        save()
    if labelled and e.finetune_epochs:
        for entry in finetune_rows(config, trained, initial.encoder, train_set, test_set, draws or {}, device=device_, progress=progress,
                                   log=log):
            finetuned.append(entry)
            save()
        log(format_finetune_table(finetuned, title=f"{config.data.dataset} test split, top-1 accuracy (%) after fine-tuning end to end: "
                                                   f"{FinetuneRecipe(e.finetune_epochs, e.finetune_min_steps, e.finetune_lr).describe()}"))
    return rows


def transfer_section(config: Config, target: TransferTarget, trained: torch.nn.Module, initial: torch.nn.Module | None, *, channels: int,
                     size: int, device: torch.device, log: Callable[[str], object] = print) -> dict:
    """kNN and the linear probe of ``trained`` (which takes ``channels`` × ``size`` × ``size`` images) on ``target``'s splits,
    converted to its input (:mod:`~nocollapse.eval.transfer`), beside the target's raw pixels and ``initial`` (both skipped
    when it is None): ``{"dataset", "conversion", "train_images", "test_images", "scores"}``."""
    e = config.eval
    train_set, test_set, conversion = load_target(target, channels, size, cache_dir=config.data.cache_dir, log=log)
    classes = len(train_set.classes)
    settings = {"mean": config.augment.mean, "std": config.augment.std, "device": device, "amp": False}

    def score(name: str, train_features: torch.Tensor, test_features: torch.Tensor) -> RepresentationScores:
        row = score_features(name, train_features, train_set.labels, test_features, test_set.labels, num_classes=classes, knn_k=e.knn_k,
                             knn_temperature=e.knn_temperature, knn_euclidean_k=e.knn_euclidean_k, probe=e.linear_probe,
                             probe_epochs=e.probe_epochs, probe_min_steps=e.probe_min_steps, seed=config.run.seed)
        log(f"  scored {name} on {target.label} in {row.seconds:.1f}s")
        return row

    scores = []
    if initial is not None:
        scores.append(score("raw pixels", pixel_features(train_set.images).to(device), pixel_features(test_set.images).to(device)))
    for name, encoder in ([(f"random {config.model.backbone}", initial)] if initial is not None else []) + [
            (f"{method_label(config)} {config.model.backbone}", trained)]:
        encoder.to(device)
        scores.append(score(name, encoder_features(encoder, train_set.images, **settings), encoder_features(encoder, test_set.images, **settings)))
    return {"dataset": target.label, "conversion": conversion, "train_images": len(train_set), "test_images": len(test_set), "scores": scores}


def finetune_rows(config: Config, trained: torch.nn.Module, initial: torch.nn.Module, train_set: ImageDataset, test_set: ImageDataset,
                  draws: dict, *, device: torch.device, progress: bool = True, log: Callable[[str], object] = print) -> Iterator[dict]:
    """Fine-tune the ``trained`` encoder and the ``initial`` one (the random-encoder baseline) on all of ``train_set`` (the
    training split, or the ``eval.train_samples`` of it the evaluation fits on) and on
    each draw of each label subset (``draws``, :func:`~nocollapse.eval.few_labels.draw_subsets`), with the same recipe,
    budget and seed; yields one ``eval.json`` entry per labelled set as it is done: top-1 of each network per draw,
    steps, seconds, recipe."""
    e = config.eval
    recipe = FinetuneRecipe(e.finetune_epochs, e.finetune_min_steps, e.finetune_lr)
    settings = {"num_classes": len(train_set.classes), "recipe": recipe, "probe_epochs": e.probe_epochs, "probe_min_steps": e.probe_min_steps,
                "mean": config.augment.mean, "std": config.augment.std,
                "seed": config.run.seed, "device": device, "amp": use_bf16(config.run.amp, device), "channels_last": config.run.channels_last}
    sets = [("100%", [torch.arange(len(train_set))])] + [(subset.name, index_sets) for subset, index_sets in draws.items()]
    for name, index_sets in sets:
        entry: dict = {"subset": name, "labels": len(index_sets[0]), "draws": len(index_sets), "steps": recipe.steps(len(index_sets[0])),
                       "recipe": recipe.describe(), "pretrained": [], "scratch": [], "seconds": 0.0}
        for draw, indices in enumerate(index_sets):
            for network, key in ((trained, "pretrained"), (initial, "scratch")):
                result = finetune(network, train_set.images[indices], train_set.labels[indices], test_set.images, test_set.labels,
                                  head_from_probe=key == "pretrained",
                                  description=f"fine-tune {key} on {name}" + (f" (draw {draw + 1})" if len(index_sets) > 1 else ""),
                                  progress=progress, **settings)
                entry[key].append(result["top1"])
                entry["seconds"] += result["seconds"]
        log(f"  fine-tuned on {name} of the labels ({entry['labels']} images, {entry['steps']} steps, {entry['draws']} draw(s)) in {entry['seconds']:.1f}s")
        yield entry


def format_finetune_table(entries: Sequence[dict], *, title: str = "") -> str:
    """A plain-text table of :func:`finetune_rows`: per labelled set, both networks' top-1 (mean ± std over draws) and the gain."""
    def cell(values: list[float]) -> str:
        return f"{100 * statistics.fmean(values):.2f}" + (f" ± {100 * statistics.stdev(values):.2f}" if len(values) > 1 else "")

    header = ["labels", "per draw", "draws", "steps", "pretrained", "from scratch", "gain"]
    lines = [[entry["subset"], str(entry["labels"]), str(entry["draws"]), str(entry["steps"]), cell(entry["pretrained"]), cell(entry["scratch"]),
              f"{100 * (statistics.fmean(entry['pretrained']) - statistics.fmean(entry['scratch'])):+.2f}"] for entry in entries]
    return render_table(header, lines, title)


def pixel_views(views: torch.Tensor, side: tuple[int, int]) -> torch.Tensor:
    """(M, B, C, H, W) ``views`` resized (bilinear, antialiased) to the images' ``side``: raw pixels compare a view
    with an image only in one space, and ``augment.crop_size`` may differ from the images' side."""
    if tuple(views.shape[-2:]) == tuple(side):
        return views
    resized = F.interpolate(views.flatten(0, 1), size=tuple(side), mode="bilinear", antialias=True, align_corners=False)
    return resized.view(*views.shape[:3], *side)


def same_weights(first: torch.nn.Module, second: torch.nn.Module) -> bool:
    """Whether two networks hold the same parameters and buffers, wherever each lies."""
    mine, theirs = first.state_dict(), second.state_dict()
    return mine.keys() == theirs.keys() and all(torch.equal(mine[key].cpu(), theirs[key].cpu()) for key in mine)


def save_test_embeddings(path: Path, features: torch.Tensor, test_set: ImageDataset, *, seed: int, samples: int = MAP_SAMPLES) -> None:
    """Save the (N, D) test ``features`` of a random subset of ``samples`` test images (drawn
    from ``seed``) with their labels, indices and the class names: what a report needs to draw the
    embeddings without the data or the model."""
    rows = torch.randperm(len(test_set), generator=torch.Generator().manual_seed(seed))[:samples].sort().values
    save_checkpoint(path, {"features": features[rows.to(features.device)].float().cpu(), "labels": test_set.labels[rows],
                           "indices": rows, "classes": list(test_set.classes), "dataset": test_set.name})
