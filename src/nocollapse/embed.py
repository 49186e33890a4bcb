"""``nocollapse embed``: images in, one embedding per image out, with the evaluation's preprocessing.

Inputs are image files, folders (every image below them, recursively, in sorted order) and built-in dataset
splits (``fashion-mnist:test``), in the order given. Files are decoded in background threads a batch ahead
(Pillow releases the GIL while it decodes and resizes), encoded batch by batch and written as they come
(:class:`~nocollapse.embedding_files.EmbeddingWriter`), so a folder larger than memory streams through.
The same input gives the same file: the order is fixed and nothing is random.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from nocollapse.data import ImageDataset, load_dataset
from nocollapse.embedding_files import EmbeddingWriter, check_output
from nocollapse.encoder import Preprocess, load_encoder
from nocollapse.errors import UserError
from nocollapse.progress import Progress

WHAT = ("features", "projections")
_MAX_LISTED = 10


@dataclass(frozen=True)
class DatasetSplit:
    """A built-in dataset's split as an input: ``name:split``."""

    name: str
    split: str


@dataclass
class EmbedResult:
    """What :func:`embed` wrote: ``rows`` embeddings of ``dim`` in ``path``; ``skipped`` (file, reason) left out."""

    path: Path
    rows: int
    dim: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def parse_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path | DatasetSplit]:
    """Each INPUT as a file or folder that exists, or a ``dataset:split`` of a built-in dataset; else a UserError."""
    from nocollapse.data.registry import DATASETS, SPLITS

    parsed: list[Path | DatasetSplit] = []
    for item in inputs:
        path = Path(os.path.expanduser(os.fspath(item)))
        match = re.fullmatch(r"([\w-]+):(\w+)", os.fspath(item))
        if path.exists():
            parsed.append(path)
        elif match and match[1] in DATASETS and match[1] != "image-folder":
            if match[2] not in SPLITS:
                raise UserError(f"{item}: unknown split {match[2]!r}; choose one of {', '.join(SPLITS)}")
            parsed.append(DatasetSplit(match[1], match[2]))
        else:
            built_in = ", ".join(f"{name}:test" for name in DATASETS if name != "image-folder")
            raise UserError(f"{item} is neither an image file, a folder nor a dataset split (one of {built_in}, or another split)")
    if not parsed:
        raise UserError("nothing to embed: pass image files, folders or dataset splits")
    return parsed


def _image_files(path: Path) -> list[Path]:
    from nocollapse.data.folder import EXTENSIONS, _image_files as files_under

    if path.is_dir():
        found = files_under(path)
        if not found:
            raise UserError(f"no images in {path} (hidden files and other extensions are ignored; {', '.join(EXTENSIONS)})")
        return found
    return [path]


@dataclass
class _Batch:
    images: Tensor  # (B, C, H, W) uint8
    sources: list[str]
    labels: list[int | None]


def _file_batches(files: list[Path], preprocess: Preprocess, batch_size: int, unreadable: dict[str, str],
                  pool: ThreadPoolExecutor) -> Iterator[_Batch]:
    """Batches of decoded files, the next one decoding while the caller encodes this one; unreadable files left out and
    recorded in ``unreadable``."""
    from PIL import Image

    from nocollapse.data.folder import _decode, _pillow_errors, _reason

    errors = _pillow_errors(Image)
    mode = "L" if preprocess.in_channels == 1 else "RGB"

    def decode(path: Path) -> np.ndarray | str:
        try:
            return _decode(path, preprocess.image_size, mode)
        except errors as error:
            return _reason(path, error)

    def submit(start: int) -> list[Future]:
        return [pool.submit(decode, path) for path in files[start : start + batch_size]]

    pending = submit(0)
    for start in range(0, len(files), batch_size):
        current, pending = pending, submit(start + batch_size)
        images, sources = [], []
        for path, future in zip(files[start : start + batch_size], current):
            result = future.result()
            if isinstance(result, str):
                unreadable[str(path)] = result
            else:
                images.append(result)
                sources.append(str(path))
        if images:
            stacked = np.stack(images)
            tensor = torch.from_numpy(stacked[:, None] if mode == "L" else stacked.transpose(0, 3, 1, 2).copy())
            yield _Batch(tensor, sources, [None] * len(sources))


def _dataset_batches(split: DatasetSplit, dataset: ImageDataset, batch_size: int) -> Iterator[_Batch]:
    for start in range(0, len(dataset), batch_size):
        stop = min(start + batch_size, len(dataset))
        labels = dataset.labels[start:stop].tolist() if dataset.labels is not None else [None] * (stop - start)
        yield _Batch(dataset.images[start:stop], [f"{split.name}:{split.split}:{i}" for i in range(start, stop)], labels)


def _network(model: str | os.PathLike, what: str, device: torch.device) -> tuple[Callable[[Tensor], Tensor], Preprocess, dict[str, str], int]:
    """(forward, preprocess, description, output dim) of ``model`` for ``what``."""
    if what not in WHAT:
        raise UserError(f"--what {what!r}: choose {' or '.join(WHAT)}")
    encoder, preprocess, header = load_encoder(model, device=device)
    if what == "features":
        forward: Callable[[Tensor], Tensor] = encoder
        dim = encoder.output_dim
    else:
        method = _trained_method(Path(model), preprocess)
        method.to(device).eval()
        forward = method.embed
        dim = method.embed(torch.zeros(2, preprocess.in_channels, preprocess.image_size, preprocess.image_size, device=device)).shape[1]
    return forward, preprocess, {**header, "what": what, "model": str(model)}, dim


def _trained_method(run_dir: Path, preprocess: Preprocess) -> nn.Module:
    """The method of a run's checkpoint, whose ``embed`` gives the online projections."""
    from nocollapse.methods import build_method
    from nocollapse.train.checkpoint import load_checkpoint
    from nocollapse.train.loop import CHECKPOINT, load_run_config

    if not (run_dir.is_dir() and (run_dir / CHECKPOINT).is_file()):
        raise UserError(f"--what projections needs a run directory with its {CHECKPOINT} (the projection head is not in the encoder "
                        f"file); {run_dir} is not one")
    config = load_run_config(run_dir)
    method = build_method(config, preprocess.in_channels, preprocess.image_size)
    try:
        method.load_state_dict(load_checkpoint(run_dir / CHECKPOINT)["method"])
    except (KeyError, RuntimeError) as error:
        raise UserError(f"cannot load the method from {run_dir / CHECKPOINT} ({type(error).__name__}); the file is damaged") from None
    return method


@torch.no_grad()
def embed(model: str | os.PathLike, inputs: Sequence[str | os.PathLike], out: str | os.PathLike, *, what: str = "features",
          batch_size: int = 256, device: str = "cpu", data_dir: str | None = None, skip_unreadable: bool = False, force: bool = False,
          progress: bool = True, log: Callable[[str], object] = print) -> EmbedResult:
    """Embed ``inputs`` (see :func:`parse_inputs`) with the encoder of ``model`` (a run directory, or anything
    :func:`~nocollapse.encoder.load_encoder` takes; ``what="projections"`` needs a run directory) into ``out``
    (``.npy`` + ``.txt``, ``.safetensors`` or ``.parquet``; see :mod:`nocollapse.embedding_files`).

    Unreadable files stop the work with one error naming them all, or with ``skip_unreadable`` are left out and
    listed in ``<out stem>.skipped.txt``. An existing ``out`` is refused unless ``force``.
    """
    from nocollapse.train.loop import select_device

    out = Path(os.path.expanduser(os.fspath(out)))
    check_output(out, force=force)
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be at least 1")
    sources = parse_inputs(inputs)
    device_ = select_device(device)
    forward, preprocess, description, dim = _network(model, what, device_)
    files = {id(item): _image_files(item) for item in sources if isinstance(item, Path)}
    if files:
        from nocollapse.data.folder import _import_pillow

        _import_pillow()
    datasets = {id(item): load_dataset(item.name, item.split, data_dir, log=log) for item in sources if isinstance(item, DatasetSplit)}
    total = sum(len(found) for found in files.values()) + sum(len(dataset) for dataset in datasets.values())
    log(f"embedding {total} images ({preprocess.in_channels}×{preprocess.image_size}×{preprocess.image_size}) with {model}: {what}, "
        f"dimension {dim}, on {device_}")
    unreadable: dict[str, str] = {}
    writer = EmbeddingWriter(out, dim, description)
    bar = Progress(total, "embed", enabled=progress)
    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            for item in sources:
                batches = (_file_batches(files[id(item)], preprocess, batch_size, unreadable, pool) if isinstance(item, Path)
                           else _dataset_batches(item, datasets[id(item)], batch_size))
                done_before = writer.count + len(unreadable)
                for batch in batches:
                    rows = forward(preprocess(batch.images.to(device_)))
                    writer.write(rows, batch.sources, batch.labels)
                    done = writer.count + len(unreadable)
                    bar.update(done - done_before, **{"img/s": f"{writer.count / max(time.perf_counter() - started, 1e-9):.0f}"})
                    done_before = done
        bar.close()
        if unreadable and not skip_unreadable:
            raise _unreadable_error(unreadable)
        if not writer.count:
            raise UserError("none of the images can be read: nothing to write")
        writer.finish()
    except BaseException:
        bar.close()
        writer.abort()
        raise
    skipped = sorted(unreadable.items())
    if skipped:
        listing = out.with_name(out.stem + ".skipped.txt")
        listing.write_text("".join(f"{path}\t{why}\n" for path, why in skipped), encoding="utf-8")
        log(f"warning: {len(skipped)} unreadable image file(s) left out (--skip-unreadable), listed in {listing}")
    seconds = time.perf_counter() - started
    log(f"wrote {writer.count} embeddings of dimension {dim} to {out} in {seconds:.1f}s ({writer.count / max(seconds, 1e-9):.0f} img/s)")
    return EmbedResult(out, writer.count, dim, skipped, seconds)


def _unreadable_error(unreadable: dict[str, str]) -> UserError:
    paths = sorted(unreadable)
    lines = [f"  {path}: {unreadable[path]}" for path in paths[:_MAX_LISTED]]
    if len(paths) > _MAX_LISTED:
        lines.append(f"  and {len(paths) - _MAX_LISTED} more")
    return UserError(f"{len(paths)} image file(s) cannot be read:\n" + "\n".join(lines)
                     + "\nDelete or replace them, or pass --skip-unreadable to leave them out (listed beside the output); nothing was written.")

