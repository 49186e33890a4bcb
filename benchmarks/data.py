"""Reading an image folder: the decoded cache against decoding JPEGs every epoch, in memory against streamed.

1. Writes (once; reused while N and the sizes match) a folder of N JPEGs (quality 90, smooth random colour
   fields with random shapes and mild noise) as ``WORKDIR/folder-N-Spx/unlabeled/<k>/<i>.jpg``, over all cores.
2. Decode throughput: nocollapse's cache build (``load_image_folder``, its process pool over all cores:
   listing, headers, decode, write) against a one-process Pillow loop (open, RGB, ``ImageOps.fit``,
   ``np.asarray``) over a subset of the same files, half timed before the build and half after. The JPEGs are
   read once beforehand, so both find them in the page cache. Also: the cache's size, and how long a later
   run takes to find it valid again.
3. Training throughput of BYOL (the fmnist preset with ``data.dataset=image-folder``, no normalisation) on
   the cache, three ways, each a Trainer built once and run in turns, chunk by chunk (the order reversed
   every other round), so a slow spell of a shared machine hits all alike: ``data.stream=memory`` (the
   images held whole), ``data.stream=disk`` (rows read from the cache by the trainer's background
   prefetcher, started afresh each chunk) and the peers' usual path, a ``torch.utils.data.DataLoader``
   (``--workers`` processes, a fresh iterator each chunk) whose Dataset decodes each JPEG with Pillow and
   draws the two views per sample (random resized crop, flip, colour jitter, grayscale, blur, solarize with
   PIL and numpy, the preset's parameters), feeding the same training step (views made by the loader
   instead of the batched augmentation). Batches are fetched as ``Trainer.fit`` fetches them.
4. The data paths alone, without a training step: that DataLoader against a cache read plus the batched views.
5. Peak RSS (the child's VmHWM, polled) of ``nocollapse train`` runs in a subprocess,
   stopped with SIGTERM after ``--rss-steps`` steps, against the cache's size: streamed at the training
   batch and at ``--rss-batch`` (32; the RSS grows with the batch, the activations, not with the folder),
   and held in memory at ``--rss-batch``, which shows what holding the images adds.

The cache is decoded into ``WORKDIR/cache-...`` afresh every run (that is what is timed); the folder is kept.
A BYOL step of batch 128 at 96 px took 4–13 s on the shared 2-core machine here, so the defaults' 300
training steps (5 rounds × 20 steps × 3 paths) take 20–65 minutes there; ``--steps 10`` halves that.

    python benchmarks/data.py --quick                 # 2,000 images, a few steps: checks that it all runs (~5 min)
    python benchmarks/data.py                         # 100,000 images of 96 px (2.8 GB cache), 5 rounds × 20 steps
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import multiprocessing
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

from nocollapse.augment.views import AugmentConfig
from nocollapse.config import resolve_config
from nocollapse.data.folder import load_image_folder
from nocollapse.data.prefetch import Prefetcher
from nocollapse.train.loop import Trainer, _seeded

FOLDER_VERSION = 1  # of the generated images: a change here regenerates the folder
QUALITY = 90
PER_SUBFOLDER = 1000
BICUBIC = Image.Resampling.BICUBIC
BILINEAR = Image.Resampling.BILINEAR


# ---- 1. the folder ---------------------------------------------------------------------------------------
def _write_chunk(task: tuple[str, int, int, int]) -> int:
    """Images ``start..stop-1`` of the folder (each drawn from its own seed, so the folder is the same on every machine)."""
    root, start, stop, size = task
    for i in range(start, stop):
        rng = np.random.default_rng(i)
        grid = int(rng.integers(2, 7))
        image = Image.fromarray(rng.integers(0, 256, (grid, grid, 3), dtype=np.uint8)).resize((size, size), BICUBIC)
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(1, 6))):
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            x0, y0 = (int(v) for v in rng.integers(-size // 4, size, 2))
            w, h = (int(v) for v in rng.integers(max(2, size // 8), max(3, size // 2), 2))
            kind = int(rng.integers(3))
            if kind == 0:
                draw.ellipse([x0, y0, x0 + w, y0 + h], fill=colour)
            elif kind == 1:
                draw.rectangle([x0, y0, x0 + w, y0 + h], fill=colour)
            else:
                draw.polygon([tuple(p) for p in rng.integers(0, size, (3, 2)).tolist()], fill=colour)
        noise = rng.normal(0.0, rng.uniform(0.0, 8.0), (size, size, 3))
        pixels = np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(Path(root) / f"{i // PER_SUBFOLDER:03d}" / f"{i:06d}.jpg", quality=QUALITY)
    return stop - start


def make_folder(workdir: Path, images: int, size: int) -> tuple[Path, float | None]:
    """``WORKDIR/folder-N-Spx`` (its unlabeled/ holds the JPEGs), written unless a complete one is there;
    with the seconds the writing took (None: reused)."""
    folder = workdir / f"folder-{images}-{size}px"
    marker = workdir / f"{folder.name}.json"
    wanted = {"version": FOLDER_VERSION, "images": images, "size": size, "quality": QUALITY}
    with contextlib.suppress(OSError, ValueError):
        if json.loads(marker.read_text()) == wanted and (folder / "unlabeled").is_dir():
            return folder, None
    marker.unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)
    unlabeled = folder / "unlabeled"
    for k in range(math.ceil(images / PER_SUBFOLDER)):
        (unlabeled / f"{k:03d}").mkdir(parents=True, exist_ok=True)
    tasks = [(str(unlabeled), start, min(start + 500, images), size) for start in range(0, images, 500)]
    started = time.perf_counter()
    with multiprocessing.Pool(os.cpu_count() or 1) as pool:
        written = sum(pool.imap_unordered(_write_chunk, tasks))
    seconds = time.perf_counter() - started
    assert written == images
    marker.write_text(json.dumps(wanted))
    return folder, seconds


def jpeg_files(folder: Path) -> list[Path]:
    return sorted((folder / "unlabeled").rglob("*.jpg"))


# ---- 2. decoding -----------------------------------------------------------------------------------------
def pillow_loop(files: list[Path], size: int) -> float:
    """Seconds to decode ``files`` in this process as a plain loop would: open, RGB, centre crop + resize, array."""
    started = time.perf_counter()
    for path in files:
        with Image.open(path) as image:
            np.asarray(ImageOps.fit(image.convert("RGB"), (size, size), method=BICUBIC), dtype=np.uint8)
    return time.perf_counter() - started


# ---- 3. training -----------------------------------------------------------------------------------------
def train_chunk(trainer: Trainer, steps: int, view_rng: torch.Generator, noise_rng: torch.Generator) -> float:
    """Seconds for ``steps`` training steps, the batches fetched as ``Trainer._train`` fetches them (streamed: a
    prefetcher reading ahead, started for this chunk; in memory: indexed from the held tensor)."""
    seed = trainer.config.run.seed
    started = time.perf_counter()
    prefetch = Prefetcher(trainer.pretrain_images, trainer._batch_index, trainer.step, trainer.step + steps) if trainer.streaming else None
    with prefetch or contextlib.nullcontext():
        for _ in range(steps):
            step = trainer.step
            if prefetch is not None:
                images = prefetch.get(step).to(trainer.device, non_blocking=True)
            elif trainer.images_on_device:
                images = trainer.pretrain_images[trainer._batch_index(step)]
            else:
                images = trainer.pretrain_images[trainer._batch_index(step)].to(trainer.device, non_blocking=True)
            terms = trainer.train_step(images, _seeded(view_rng, seed, step, 1), _seeded(noise_rng, seed, step, 2))
    terms["loss"].detach().item()  # the log window's read-back
    return time.perf_counter() - started


class PeerViews(torch.utils.data.Dataset):
    """What SSL code usually does: each JPEG decoded with Pillow every epoch, its views drawn one sample at a time.

    Item ``i``: (M, 3, S, S) float32 in [0, 1] (normalised if the recipe has a mean), BYOL's recipe per view
    with ``config``'s parameters: random resized crop (bilinear), flip, colour jitter in random order
    (PIL's ImageEnhance for brightness, contrast, saturation; hue as a shift of the HSV hue byte, as
    torchvision does on PIL images), grayscale, Gaussian blur (PIL's) and solarize with per-view probabilities.
    """

    def __init__(self, files: list[Path], size: int, config: AugmentConfig) -> None:
        self.files, self.size, self.config = files, size, config
        self._rng: np.random.Generator | None = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.files)

    def _generator(self) -> np.random.Generator:
        if self._rng is None or self._pid != os.getpid():  # in a worker: seeded by the DataLoader (differs per worker and iterator)
            self._rng, self._pid = np.random.default_rng(torch.initial_seed() % 2**63), os.getpid()
        return self._rng

    def __getitem__(self, index: int) -> torch.Tensor:
        rng = self._generator()
        with Image.open(self.files[index]) as image:
            image = ImageOps.fit(image.convert("RGB"), (self.size, self.size), method=BICUBIC)
        return torch.from_numpy(np.stack([self._view(image, m, rng) for m in range(self.config.num_views)]))

    def _view(self, image: Image.Image, m: int, rng: np.random.Generator) -> np.ndarray:
        c, (w, h) = self.config, image.size
        box = (0, 0, w, h)
        for _ in range(10):
            area = w * h * rng.uniform(*c.crop_scale)
            ratio = math.exp(rng.uniform(math.log(c.crop_ratio[0]), math.log(c.crop_ratio[1])))
            cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
            if 0 < cw <= w and 0 < ch <= h:
                x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
                box = (x0, y0, x0 + cw, y0 + ch)
                break
        view = image.resize((self.size, self.size), BILINEAR, box=box)
        if rng.random() < c.flip_prob:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if rng.random() < c.jitter_prob:
            for op in rng.permutation(4):
                if op == 0:
                    view = ImageEnhance.Brightness(view).enhance(rng.uniform(1 - c.brightness, 1 + c.brightness))
                elif op == 1:
                    view = ImageEnhance.Contrast(view).enhance(rng.uniform(1 - c.contrast, 1 + c.contrast))
                elif op == 2:
                    view = ImageEnhance.Color(view).enhance(rng.uniform(1 - c.saturation, 1 + c.saturation))
                elif c.hue > 0:
                    hsv = np.array(view.convert("HSV"))
                    hsv[..., 0] += np.uint8(round(rng.uniform(-c.hue, c.hue) * 255) % 256)  # wraps around, as a hue does
                    view = Image.frombytes("HSV", view.size, hsv.tobytes()).convert("RGB")
        if rng.random() < c.grayscale_prob:
            view = view.convert("L").convert("RGB")
        if rng.random() < c.blur_prob[m % len(c.blur_prob)]:
            view = view.filter(ImageFilter.GaussianBlur(rng.uniform(*c.blur_sigma)))
        if rng.random() < c.solarize_prob[m % len(c.solarize_prob)]:
            view = ImageOps.solarize(view, 128)
        pixels = np.asarray(view, dtype=np.float32).transpose(2, 0, 1) / 255
        if c.mean:
            pixels = (pixels - np.asarray(c.mean, dtype=np.float32)[:, None, None]) / np.asarray(c.std, dtype=np.float32)[:, None, None]
        return pixels


def batches(count: int, batch: int, total: int, generator: torch.Generator) -> list[list[int]]:
    """``count`` batches of random distinct rows (as one epoch's permutation would give them)."""
    rows = torch.cat([torch.randperm(total, generator=generator) for _ in range(math.ceil(count * batch / total))])
    return rows[: count * batch].view(count, batch).tolist()


def loader(dataset: PeerViews, rows: list[list[int]], workers: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(dataset, batch_sampler=rows, num_workers=workers)


def loader_chunk(trainer: Trainer, dataset: PeerViews, steps: int, workers: int, order: torch.Generator,
                 view_rng: torch.Generator, noise_rng: torch.Generator) -> float:
    """Seconds for ``steps`` training steps on views the DataLoader made (a fresh iterator: its workers start here)."""
    seed = trainer.config.run.seed
    rows = batches(steps, trainer.config.optim.batch_size, len(dataset), order)
    started = time.perf_counter()
    for views in loader(dataset, rows, workers):
        step = trainer.step
        terms = trainer.train_step(views.transpose(0, 1).contiguous(), _seeded(view_rng, seed, step, 1), _seeded(noise_rng, seed, step, 2))
    terms["loss"].detach().item()
    return time.perf_counter() - started


# ---- 5. memory -------------------------------------------------------------------------------------------
def _high_water_mark(pid: int) -> int:
    """VmHWM of process ``pid`` in bytes (0 once it has exited)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def peak_rss(command: list[str], metrics: Path, steps: int, log: Path) -> tuple[int, float]:
    """Peak RSS in bytes of ``command`` (a training run), stopped by SIGTERM once ``metrics`` shows ``steps``
    steps, and the seconds it ran.

    Read from the child's VmHWM while it runs, not from ``wait4``'s ``ru_maxrss``: Linux counts in that the
    RSS of the forked copy of this process before the exec, which holds the benchmark's own data."""
    started = time.perf_counter()
    with open(log, "w") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    peak, stopping = 0, False
    try:
        while child.poll() is None:
            peak = max(peak, _high_water_mark(child.pid))
            if not stopping:
                with contextlib.suppress(OSError):
                    if sum('"loss"' in line for line in metrics.read_text().splitlines()) >= steps:
                        child.send_signal(signal.SIGTERM)  # stops after the step, once it has saved a checkpoint
                        stopping = True
            time.sleep(0.05)
    except BaseException:
        child.kill()
        raise
    if child.returncode not in (0, 143):
        raise RuntimeError(f"{' '.join(command)} failed ({child.returncode}):\n{log.read_text()[-3000:]}")
    return peak, time.perf_counter() - started


# ---- the run ---------------------------------------------------------------------------------------------
def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def size_text(count: float) -> str:
    return f"{count / 1e9:.2f} GB" if count >= 1e9 else f"{count / 1e6:.1f} MB"


def rate(images: float, seconds: float) -> str:
    value = images / seconds
    return f"{value:.1f} img/s" if value < 100 else f"{value:.0f} img/s"


def spread(images: int, seconds: list[float]) -> str:
    rates = [images / s for s in seconds]
    return f"median of {len(rates)} rounds {statistics.median(rates):.1f}, range {min(rates):.1f}–{max(rates):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, help="images in the folder (default 100000; --quick: 2000)")
    parser.add_argument("--size", type=int, default=96, help="side of the JPEGs and of the training images (pixels)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/nocollapse-data-bench"), help="where the folder, the cache and runs go")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--widths", default="32,64,128,256", help="model.widths of the ConvNet")
    parser.add_argument("--rounds", type=int, help="rounds of the interleaved training measurement (default 5; --quick: 2)")
    parser.add_argument("--steps", type=int, help="training steps per path and round (default 20; --quick: 2)")
    parser.add_argument("--data-batches", type=int, help="batches per path and round of the data paths alone (default 10; --quick: 3)")
    parser.add_argument("--rss-steps", type=int, help="steps of each peak-RSS training run (default 10; --quick: 3)")
    parser.add_argument("--rss-batch", type=int, default=32, help="the smaller batch of the peak-RSS runs (the RSS grows with the batch)")
    parser.add_argument("--decode-subset", type=int, default=10000, help="files the one-process Pillow loop decodes (at most N)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--quick", action="store_true", help="2,000 images and a few steps: checks that everything runs")
    args = parser.parse_args()
    quick = args.quick
    n = args.images or (2000 if quick else 100000)
    rounds = args.rounds or (2 if quick else 5)
    steps = args.steps or (2 if quick else 20)
    data_batches = args.data_batches or (3 if quick else 10)
    rss_steps = args.rss_steps or (3 if quick else 10)
    rss_batch = args.rss_batch
    size, batch = args.size, args.batch
    workdir = args.workdir.expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    header = (f"{cpu_model()}, {cores} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), Pillow {PIL.__version__}; "
              f"{n:,} JPEGs of {size}×{size} (quality {QUALITY}); BYOL, ConvNet {args.widths}, batch {batch}")
    print(header, flush=True)
    rows: list[tuple[str, str, str]] = []
    began = time.perf_counter()

    # 1. the folder
    folder, seconds = make_folder(workdir, n, size)
    files = jpeg_files(folder)
    assert len(files) == n, f"{folder} holds {len(files)} JPEGs, expected {n}: delete it and run again"
    jpeg_bytes = sum(path.stat().st_size for path in files)
    if seconds is None:
        print(f"reusing {folder} ({n:,} JPEGs, {size_text(jpeg_bytes)})", flush=True)
        rows.append(("write the JPEG folder", "reused", f"{folder}, {size_text(jpeg_bytes)}"))
    else:
        print(f"wrote {n:,} JPEGs ({size_text(jpeg_bytes)}) in {seconds:.1f}s with {cores} processes", flush=True)
        rows.append((f"write the JPEG folder ({cores} processes)", rate(n, seconds), f"{seconds:.1f} s, {size_text(jpeg_bytes)}"))

    # 2. decoding
    for path in files:  # into the page cache, so that no decode below waits for the disk
        path.read_bytes()
    subset = files[:: max(1, n // min(n, args.decode_subset))][: args.decode_subset]
    first, second = subset[: len(subset) // 2], subset[len(subset) // 2 :]
    single = pillow_loop(first, size)
    cache_dir = workdir / f"cache-{folder.name}-{size}px"
    shutil.rmtree(cache_dir, ignore_errors=True)
    messages: list[str] = []
    started = time.perf_counter()
    dataset = load_image_folder("unlabeled", folder, image_size=size, cache_dir=cache_dir, progress=False, log=messages.append)
    build = time.perf_counter() - started
    single += pillow_loop(second, size)
    assert len(dataset) == n and dataset.images.shape[1:] == (3, size, size), messages
    cache_bytes = sum(path.stat().st_size for path in cache_dir.rglob("*") if path.is_file())
    started = time.perf_counter()
    load_image_folder("unlabeled", folder, image_size=size, cache_dir=cache_dir, progress=False, log=messages.append)
    reopen = time.perf_counter() - started
    pool_workers = min(cores, math.ceil(n / 64))
    decoded = next((re.search(r"decoded \d+ images in ([\d.]+)s", m) for m in messages if m.startswith("decoded ")), None)
    decode_only = f"; the decode and write alone {decoded[1]} s ({n / float(decoded[1]):.0f} img/s)" if decoded and float(decoded[1]) > 0 else ""
    print(f"cache built in {build:.1f}s ({n / build:.0f} img/s, {pool_workers} processes), {size_text(cache_bytes)}; one process: "
          f"{len(subset) / single:.0f} img/s; reopened in {reopen:.2f}s", flush=True)
    rows += [(f"decode into the cache (nocollapse, {pool_workers} processes)", rate(n, build),
              f"{build:.1f} s for {n:,} images, listing and headers included{decode_only}; cache {size_text(cache_bytes)} on disk "
              f"({size_text(jpeg_bytes)} of JPEGs)"),
             ("decode, one process (Pillow loop)", rate(len(subset), single),
              f"{len(subset):,} of the files, half before and half after the build; build / one process {single / len(subset) * n / build:.2f}×"),
             ("find the cache valid again (a later run)", f"{reopen:.2f} s", f"list, stat and compare {n:,} files")]
    del dataset

    # 3. training, three paths in turns; 4. the data paths alone
    overrides = ["data.dataset=image-folder", f"data.data_dir={folder}", f"data.image_size={size}", "augment.mean=", "augment.std=",
                 f"data.cache_dir={cache_dir}", f"model.widths={args.widths}", f"optim.batch_size={batch}", "optim.epochs=1000",
                 "eval.monitor_every=0", "run.device=cpu"]
    with tempfile.TemporaryDirectory(dir=workdir, prefix="runs-") as out:
        def trainer(stream: str) -> Trainer:
            config = resolve_config("fmnist-byol", [*overrides, f"data.stream={stream}", f"run.out_dir={out}", f"run.name={stream}-{len(os.listdir(out))}"])
            return Trainer(config, progress=False, log=lambda *_: None)

        memory, disk, peer = trainer("memory"), trainer("disk"), trainer("disk")
        assert not memory.streaming and disk.streaming
        peer.views = lambda views, generator: views  # the DataLoader made the views: the step takes them as they are
        peer_data = PeerViews(files, size, peer.config.augment)
        order = torch.Generator().manual_seed(0)
        view_rng, noise_rng = torch.Generator(), torch.Generator()
        paths: dict[str, Callable[[int], float]] = {
            "memory": lambda k: train_chunk(memory, k, view_rng, noise_rng),
            "disk": lambda k: train_chunk(disk, k, view_rng, noise_rng),
            "loader": lambda k: loader_chunk(peer, peer_data, k, args.workers, order, view_rng, noise_rng),
        }
        for run in paths.values():  # warm-up: one step each
            run(1)
        times: dict[str, list[float]] = {name: [] for name in paths}
        for r in range(rounds):
            for name in list(paths)[:: 1 if r % 2 == 0 else -1]:
                times[name].append(paths[name](steps))
            print(f"  training round {r + 1}/{rounds}: " + ", ".join(f"{name} {steps * batch / times[name][-1]:.1f} img/s" for name in paths),
                  flush=True)
        images = steps * batch
        totals = {name: rounds * images / sum(spent) for name, spent in times.items()}
        ratio = totals["disk"] / totals["memory"]
        per_round = [m / d for m, d in zip(times["memory"], times["disk"])]
        rows += [("train, images in memory (data.stream=memory)", f"{totals['memory']:.1f} img/s", spread(images, times["memory"])),
                 ("train, streamed from the cache (data.stream=disk)", f"{totals['disk']:.1f} img/s",
                  f"{spread(images, times['disk'])}; disk / memory {ratio:.2f} (per round {min(per_round):.2f}–{max(per_round):.2f}; "
                  f"target ≥ 0.9: {'met' if ratio >= 0.9 else 'not met'})"),
                 (f"train, DataLoader ({args.workers} workers): Pillow decode + per-sample views", f"{totals['loader']:.1f} img/s",
                  f"{spread(images, times['loader'])}; cache (disk) / DataLoader {totals['disk'] / totals['loader']:.2f}")]

        def loader_alone(k: int) -> float:
            rows_ = batches(k, batch, n, order)
            started = time.perf_counter()
            for _ in loader(peer_data, rows_, args.workers):
                pass
            return time.perf_counter() - started

        def cache_alone(k: int) -> float:
            started = time.perf_counter()
            for index in batches(k, batch, n, order):
                disk.views(disk.pretrain_images[torch.tensor(index)], view_rng)
            return time.perf_counter() - started

        alone: dict[str, list[float]] = {"loader": [], "cache": []}
        for r in range(rounds):
            for name, run in list({"loader": loader_alone, "cache": cache_alone}.items())[:: 1 if r % 2 == 0 else -1]:
                alone[name].append(run(data_batches))
        images = data_batches * batch
        rows += [(f"data alone: DataLoader ({args.workers} workers), decode + per-sample views", rate(rounds * images, sum(alone["loader"])),
                  f"{spread(images, alone['loader'])}; no training step"),
                 ("data alone: cache rows + batched views (ViewGenerator)", rate(rounds * images, sum(alone["cache"])),
                  f"{spread(images, alone['cache'])}; no training step")]
        print("  data paths alone: " + ", ".join(f"{name} {rounds * images / sum(spent):.0f} img/s" for name, spent in alone.items()), flush=True)
        del memory, disk, peer, paths
        gc.collect()

        # 5. peak RSS of `nocollapse train`, streamed and held
        # Streamed at the training batch and at --rss-batch, and held whole at --rss-batch (the two differ by the held images).
        rss: dict[tuple[str, int], int] = {}
        for stream, size_of_batch in dict.fromkeys([("disk", batch), ("disk", rss_batch), ("memory", rss_batch)]):
            run_dir = Path(out) / f"rss-{stream}-{size_of_batch}"
            command = [sys.executable, "-m", "nocollapse", "train", "--no-eval", "--no-report", "--quiet", *overrides,
                       f"optim.batch_size={size_of_batch}", f"data.stream={stream}", "run.log_every=1", f"run.out_dir={out}",
                       f"run.name={run_dir.name}"]
            rss[stream, size_of_batch], seconds = peak_rss(command, run_dir / "metrics.jsonl", rss_steps, Path(out) / f"{run_dir.name}.log")
            print(f"  peak RSS, data.stream={stream}, batch {size_of_batch}: {size_text(rss[stream, size_of_batch])} ({seconds:.0f}s)", flush=True)
    for (stream, size_of_batch), peak in rss.items():
        if stream == "disk":
            times_larger = cache_bytes / peak
            verdict = ("≥ 3×" if times_larger >= 3 else
                       "NOT ≥ 3×: too small a cache for this check at this batch; more images (--images) or a smaller --rss-batch")
            note = f"the cache ({size_text(cache_bytes)}) is {times_larger:.2f}× this RSS: {verdict}"
        else:
            note = (f"{(peak - rss['disk', size_of_batch]) / 1e6:+.0f} MB against the streamed run at this batch; "
                    f"the cache is {cache_bytes / 1e6:.0f} MB")
        rows.append((f"peak RSS, `nocollapse train`, data.stream={stream}, batch {size_of_batch}", size_text(peak),
                     f"stopped after ≥ {rss_steps} steps; {note}"))

    print(f"\n{header}; training: {rounds} rounds × {steps} steps per path, interleaved; total {time.perf_counter() - began:.0f} s")
    print("| measurement | result | notes |")
    print("|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
