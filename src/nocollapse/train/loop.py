"""The training loop: data on the device, batched views, method step, EMA, metrics, checkpoints.

``Trainer(config).fit()`` trains, checkpoints every epoch (and every ``run.checkpoint_every`` steps),
and returns the run directory. Everything random follows from ``run.seed``: the epoch's permutation
and each step's augmentation generator are re-derived from (seed, epoch) and (seed, step), so a run
resumed from any checkpoint replays exactly the batches and views of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from nocollapse.augment.views import ViewGenerator
from nocollapse.config import BOOKKEEPING_KEYS, Config, flatten, set_value, split_overrides, validate
from nocollapse.data.prefetch import Prefetcher
from nocollapse.encoder import ENCODER_FILE, encoder_metadata, file_sha256, read_weights
from nocollapse.errors import CollapseError, NonFiniteStep, TrainingStopped, UserError
from nocollapse.eval.checks import check_geometry_split
from nocollapse.eval.features import encoder_features, positive_views, projection_features, view_features
from nocollapse.eval.few_labels import draw_subsets, label_subsets
from nocollapse.eval.geometry import geometry_scores
from nocollapse.eval.knn import knn_accuracy
from nocollapse.eval.transfer import TransferTarget
from nocollapse.methods import build_method, method_label
from nocollapse.train.amp import describe_precision, use_bf16
from nocollapse.train.checkpoint import atomic_write_bytes, exclusive_lock, load_checkpoint, save_checkpoint, save_json, save_safetensors
from nocollapse.train.collapse import CollapseWatch
from nocollapse.train.distributed import gather_views, init_distributed, mean_over_processes, shutdown_distributed
from nocollapse.train.run_data import bank_rows, load_run_data, unlabelled_probe
from nocollapse.train.online_probe import OnlineProbe, pretraining_labels
from nocollapse.train.optim import build_optimizer, describe_param_groups, split_param_groups
from nocollapse.progress import Progress
from nocollapse.train.runinfo import environment
from nocollapse.train.schedules import ema_momentum, warmup_cosine, warmup_step_decay
from nocollapse.train.signals import GracefulStop
from nocollapse.train.tensorboard import TensorBoardLog

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
MONITOR_VIEWS_KEPT = 256 * 2**20  # bytes of alignment views the monitor keeps between epochs (the default run's: 13 MB)


def select_device(name: str, local_rank: int = 0) -> torch.device:
    """The device of ``run.device``; under torchrun ``auto`` and ``cuda`` mean this process's GPU, cuda:LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and local_rank:
        name = f"cuda:{local_rank}"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"run.device={name} but this torch build sees no CUDA device; use run.device=cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("run.device=mps but this torch build has no MPS device (Apple GPUs only); use run.device=cpu or auto")
    return device


def run_directory(config: Config, *, resuming: bool = False) -> Path:
    """``run.out_dir/run.name``, by default ``<preset>-<method_label>-seed<seed>`` (the label left out where the preset's
    name already ends with it: ``fmnist-byol-seed0``, ``byol+uniformity-seed0``). ``resuming``: a run of the same label
    named before the label named the regularizers, ``<preset>-<method>-seed<seed>``, is found when none has the new name."""
    label = method_label(config)
    out = Path(config.run.out_dir)
    if config.run.name:
        return out / config.run.name
    said = config.preset == label or config.preset.endswith("-" + label)
    path = out / f"{config.preset}{'' if said else '-' + label}-seed{config.run.seed}"
    earlier = out / f"{config.preset}-{config.method.name}-seed{config.run.seed}"
    if resuming and not path.exists() and (earlier / CHECKPOINT).exists() and _saved_label(earlier) == label:
        return earlier
    return path


def _saved_label(run_dir: Path) -> str | None:
    """The method label of the run saved in ``run_dir``, or None when its config does not read."""
    try:
        return method_label(load_run_config(run_dir))
    except (UserError, OSError):
        return None


# Beside the bookkeeping, what a resume may change: the evaluation (it runs after training), how the step is run (autocast,
# memory format, compilation: the same computation, rounded differently) and how many bad steps it may skip. Never the seed.
RESUME_FREE_KEYS = BOOKKEEPING_KEYS | {"run.amp", "run.channels_last", "run.compile", "run.max_skipped_steps"}
RESUME_FREE_PREFIX = "eval."


def changed_training_keys(before: Config, after: Config) -> list[str]:
    """``"key: old → new"`` for each setting that differs and would change what a resumed run computes."""
    old, new = flatten(before.to_dict()), flatten(after.to_dict())
    return [f"{key}: {old.get(key)!r} → {new.get(key)!r}" for key in sorted(old.keys() | new.keys())
            if old.get(key) != new.get(key) and key not in RESUME_FREE_KEYS and not key.startswith(RESUME_FREE_PREFIX)]


def load_run_config(run_dir: Path) -> Config:
    """The resolved config a run saved in ``run_dir/config.json``."""
    path = run_dir / "config.json"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a nocollapse run directory (no config.json); pass the directory `nocollapse train` wrote")
    try:
        return Config.from_dict(json.loads(path.read_text()))
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is not valid JSON ({error}); the run's config is damaged") from None


def resume_config(run_dir: Path, overrides: list[str]) -> Config:
    """The run's own config with ``overrides`` applied; overrides that would change training are refused."""
    saved = load_run_config(run_dir)
    config = Config.from_dict(saved.to_dict())
    for key, value in split_overrides(overrides):
        set_value(config, key, value)
    validate(config)
    changed = changed_training_keys(saved, config)
    if changed:
        raise UserError(f"cannot change {', '.join(changed)} when resuming {run_dir}: only {RESUME_FREE_PREFIX}* and "
                        f"{', '.join(sorted(RESUME_FREE_KEYS))} may change; start a new run (another run.name) for other settings")
    return config


def _only_trainer_of(run_dir: Path) -> contextlib.AbstractContextManager[None]:
    """RUN_DIR/.training.lock while training: a second process resuming the same run (a sweep restarted while an
    orphaned run still trains, two `train --resume`) would interleave its checkpoints with this one's."""
    return exclusive_lock(run_dir / ".training.lock",
                          lambda pid: f"another process ({pid}) is training in {run_dir}; wait for it to finish (or stop it) before resuming")


def _seeded(generator: torch.Generator, *parts: int) -> torch.Generator:
    """Reseed ``generator`` from integers: cheap, and exact on resume (no generator state to carry)."""
    seed = 0
    for part in parts:
        seed = (seed * 1_000_003 + part) % (2**63 - 1)
    return generator.manual_seed(seed)


class Trainer:
    """One training run of ``config`` in ``run_dir`` (default: ``run.out_dir/run.name``)."""

    def __init__(self, config: Config, *, run_dir: Path | None = None, resume: bool = False, progress: bool = True,
                 log: Callable[[str], object] = print, on_monitor: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.config = config
        # Called with each epoch's monitor line, after it is written and before that epoch's checkpoint (recipe
        # tuning prunes there; an exception it raises stops the run, which resumes from the last checkpoint).
        self.on_monitor = on_monitor
        self.run_dir = run_dir or run_directory(config)
        # Under torchrun every process trains its slice of each batch; only rank 0 talks and writes files.
        self.dist = init_distributed(select_device(config.run.device).type)
        self.show_progress = progress and self.dist.is_main
        self.log = log if self.dist.is_main else (lambda *_: None)
        self.device = select_device(config.run.device, self.dist.local_rank)
        self.bf16 = use_bf16(config.run.amp, self.device)
        checkpoint_path = self.run_dir / CHECKPOINT
        if resume and not checkpoint_path.exists():
            raise UserError(f"--resume: no checkpoint in {self.run_dir}; start without --resume")
        if not resume and checkpoint_path.exists():
            raise UserError(f"{self.run_dir} already holds a run; pass --resume to continue it, or set run.name=NEW to start another")

        torch.manual_seed(config.run.seed)
        self._load_data()
        self._check_data()
        images = self.pretrain_images
        # The starting weights: a resume takes them (and everything else) from its checkpoint instead.
        start = read_weights(config.model.init_from) if config.model.init_from and not resume else None
        self.method = build_method(config, in_channels=images.shape[1], image_size=images.shape[-1], encoder_state=start and start[0],
                                   source=str(start[2]) if start else "").to(self.device)
        if self.dist.enabled:
            if config.distributed.gather:
                self.method.gather_batch = gather_views
            if config.distributed.sync_bn and self.device.type == "cuda":
                self.method = nn.SyncBatchNorm.convert_sync_batchnorm(self.method)
        if config.run.channels_last:
            self.method.to(memory_format=torch.channels_last)
        labels, classes = pretraining_labels(self.pretrain_sets) if config.eval.online_probe else (None, 0)
        # On the device, whatever the images: a few bytes an image, and indexed there without a host sync.
        self.pretrain_labels = labels.to(self.device) if labels is not None else None
        self.online_probe = OnlineProbe(self.method.encoder, self.method.encoder.output_dim, classes, self.device) if classes else None
        self.param_groups = split_param_groups(self.method, weight_decay=config.optim.weight_decay)
        o = config.optim
        self.base_lr = o.lr * (o.batch_size / 256 if o.scale_lr else 1.0)
        self.optimizer = build_optimizer(o.name, self.param_groups, lr=self.base_lr, weight_decay=o.weight_decay, momentum=o.momentum,
                                         eta=o.eta, clip=o.lars_clip, trust_denominator=o.lars_trust)
        self.views = ViewGenerator(config.augment)
        self.local_batch = o.batch_size // self.dist.world_size
        self.steps_per_epoch = len(self.pretrain_images) // o.batch_size
        self.total_steps = self.steps_per_epoch * o.epochs
        self.warmup_steps = round(o.warmup_epochs * self.steps_per_epoch)
        self.step = 0
        # (epoch, its order of the pretraining images), one per thread: the prefetcher of a streamed run and the training
        # loop (for the online probe's labels) both ask for batches, near an epoch's end for different epochs.
        self._permutations = threading.local()
        self.skipped_steps = 0  # steps skipped for a non-finite loss or gradient (run.max_skipped_steps)
        self.last_skipped_step = -1
        self.collapse_watch = CollapseWatch(config.model.projection_dim)
        self.tensorboard: TensorBoardLog | None = None
        self._kept_monitor_views: tuple[Tensor, Tensor] | None = None  # (probe images, their alignment views)
        self._last_window: dict[str, Any] | None = None  # the last metric window, all finite: the diagnostic's "before"
        # DDP averages the online networks' gradients over the processes (the EMA target has none).
        losses = DistributedDataParallel(self.method, device_ids=[self.device] if self.device.type == "cuda" else None) if self.dist.enabled else self.method
        self.compute_losses = torch.compile(losses) if config.run.compile else losses

        if resume:
            self._load(checkpoint_path)
        elif self.dist.is_main:
            with _only_trainer_of(self.run_dir):  # never overwrite the files of a run another process is training
                save_json(self.run_dir / "config.json", config.to_dict())
                started_from = {"init_from": {"path": str(start[2].resolve()), "sha256": file_sha256(start[2])}} if start else {}
                save_json(self.run_dir / "environment.json", {**environment(self.device, self.dist.world_size),
                                                                    "precision": describe_precision(config.run.amp, self.device), **started_from})
                (self.run_dir / METRICS).unlink(missing_ok=True)
            if config.run.tensorboard:
                self.tensorboard = TensorBoardLog(self.run_dir / "tensorboard")

    def _load_data(self) -> None:
        """The pretraining images (``data.pretrain_splits``), held whole or streamed from disk (``data.stream``), and the
        labelled train and test splits that the monitor and the evaluation score, where the dataset has them."""
        d = self.config.data
        # Under torchrun one process per node decodes a folder's cache; the others wait for it, then read it. Their wait
        # may last as long as a decode of the whole folder: a group of its own, with a timeout to match.
        shared = self.dist.enabled and torch.distributed.is_initialized()
        first = not shared or self.dist.local_rank == 0
        waiting = torch.distributed.new_group(backend="gloo", timeout=datetime.timedelta(hours=48)) if shared else None
        if not first:
            torch.distributed.barrier(group=waiting)
        try:
            self.data = load_run_data(d, progress=self.show_progress, log=self.log)
        finally:
            if first and shared:
                torch.distributed.barrier(group=waiting)
        self.pretrain_sets, self.train_set, self.test_set = self.data.pretrain, self.data.train, self.data.test
        source = self.data.pretrain_images
        self.streaming = d.stream == "disk" or (d.stream == "auto" and not self._fits_in_memory(source))
        if self.streaming:
            self.pretrain_images = source
        else:
            images = source if isinstance(source, torch.Tensor) else source.load()
            self.pretrain_images = images.to(self.device) if d.on_device else images.pin_memory() if self.device.type == "cuda" else images
        self.images_on_device = not self.streaming and d.on_device

    def _fits_in_memory(self, images: Any) -> bool:
        """Whether ``images`` take under a quarter of the memory they would be held in (the GPU's, or RAM)."""
        size = math.prod(images.shape)
        if isinstance(images, torch.Tensor):
            return True  # already held
        if self.config.data.on_device and self.device.type == "cuda":
            return size < torch.cuda.mem_get_info(self.device)[0] / 4
        try:
            return size < os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 4
        except (ValueError, OSError, AttributeError):  # not a POSIX system: stream, the safe choice
            return False

    def _check_data(self) -> None:
        n = len(self.pretrain_images)
        batch, processes = self.config.optim.batch_size, self.dist.world_size
        if n < batch:
            raise UserError(f"optim.batch_size={batch} exceeds the {n} pretraining images; lower it")
        if batch % processes or batch // processes < 2:
            raise UserError(f"optim.batch_size={batch} (the global batch) must split into equal sub-batches of at least 2 over the "
                            f"{processes} processes; use a multiple of {processes}")
        # Refused before training rather than at the first monitor or the final evaluation.
        if self.test_set is not None:
            check_geometry_split(torch.zeros(len(self.test_set), 1), self.test_set.labels)  # only the labels matter here
            if self.test_set.images.shape[1:] != self.pretrain_images.shape[1:]:
                raise UserError(f"the test images are {tuple(self.test_set.images.shape[1:])} but the pretraining images "
                                f"{tuple(self.pretrain_images.shape[1:])}: the splits must agree")
        # The final evaluation's settings that depend on the data, checked now rather than after the training.
        e = self.config.eval
        if self.labelled and (subsets := label_subsets(e.label_fractions, e.shots)):
            # The labels the evaluation will draw them from (eval.train_samples: train.run_data.fitting_set).
            fitted = self.train_set.labels[bank_rows(len(self.train_set), e.train_samples, self.config.run.seed)]
            try:
                draw_subsets(fitted, len(self.train_set.classes), subsets, draws=1, seed=self.config.run.seed)
            except UserError as error:
                raise UserError(f"{error} (of the eval.train_samples={e.train_samples} images the evaluation fits on)"
                                if len(fitted) < len(self.train_set) else str(error)) from None
        for text in e.transfer:
            TransferTarget.parse(text).check_splits()
        channels = self.pretrain_images.shape[1]
        if self.config.augment.mean and len(self.config.augment.mean) != channels:
            raise UserError(f"augment.mean has {len(self.config.augment.mean)} values but the images have {channels} channels: give "
                            f"augment.mean and augment.std {channels} values each, or clear both (augment.mean= augment.std=) to train unnormalised")

    @property
    def labelled(self) -> bool:
        """Whether accuracy can be measured: a labelled train split for the kNN bank and the probe, and a test split."""
        return self.train_set is not None and self.test_set is not None

    # ---- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = {
            "step": self.step,
            "skipped_steps": self.skipped_steps,
            "last_skipped_step": self.last_skipped_step,
            "collapse_signals_low": self.collapse_watch.state_dict(),
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "config": self.config.to_dict(),
            "pretraining_images": list(self.pretrain_images.shape),  # the data the schedule and the permutations were drawn for
            "torch_rng": torch.get_rng_state(),
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        if self.online_probe is not None:
            state["online_probe"] = self.online_probe.state_dict()
        return state

    def _load(self, path: Path) -> None:
        state = load_checkpoint(path, map_location=self.device)
        changed = changed_training_keys(Config.from_dict(state.get("config", {})), self.config)
        if changed:
            raise UserError("--resume with a different training config (" + ", ".join(changed)
                            + "); resume with the original settings, or start a new run")
        saved_shape = state.get("pretraining_images")  # absent from older checkpoints
        if saved_shape is not None and list(saved_shape) != list(self.pretrain_images.shape):
            raise UserError(f"--resume: the run trained on {saved_shape[0]} images of {'×'.join(map(str, saved_shape[1:]))}, but "
                            f"{self.config.data.dataset} now gives {len(self.pretrain_images)} of {'×'.join(map(str, self.pretrain_images.shape[1:]))}: "
                            "the data changed (files added, removed, or a new colour mode). Restore it, or start a new run")
        try:
            self.method.load_state_dict(state["method"])
        except RuntimeError as error:
            raise UserError(f"--resume: {path} holds another architecture ({str(error).splitlines()[0]}); it was written by an older "
                            "nocollapse or another config; start a new run") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        # Absent from the checkpoints of older versions.
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.last_skipped_step = int(state.get("last_skipped_step", -1))
        self.collapse_watch.load_state_dict(state.get("collapse_signals_low", []))
        if self.online_probe is not None and "online_probe" in state:  # absent when the probe was off or the checkpoint older
            self.online_probe.load_state_dict(state["online_probe"])
        torch.set_rng_state(state["torch_rng"].cpu())
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), self.device)
        if not self.dist.is_main:
            return
        self._truncate_metrics(self.step)
        if self.config.run.tensorboard:
            self.tensorboard = TensorBoardLog(self.run_dir / "tensorboard", purge_step=self.step + 1)
        # environment.json describes where the run started; a resume may be on another machine or torch.
        self._write_metrics({"step": self.step, "epoch": self._epoch(), "resumed": {**environment(self.device, self.dist.world_size),
                                                                                    "precision": describe_precision(self.config.run.amp, self.device)}})
        self.log(f"resumed {self.run_dir} at step {self.step}/{self.total_steps}")

    def _truncate_metrics(self, step: int) -> None:
        """Drop metric lines logged after the checkpoint: the resumed run logs them again."""
        path = self.run_dir / METRICS
        if not path.exists():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                pass  # a line cut short by the interruption

        atomic_write_bytes(path, lambda file: file.write("".join(line + "\n" for line in kept).encode()))

    def save(self) -> None:
        """Write the checkpoint, once the weights are known finite: a step with finite losses and gradients can
        still make them overflow, and a checkpoint must never hold what cannot be resumed."""
        # Every process checks (their weights are identical), so all of them stop together.
        finite = torch.stack([torch.isfinite(p).all() for p in self.method.parameters()]).all()
        if not finite.item():
            self._write_metrics({"step": self.step, "epoch": self._epoch(), "error": "non-finite weights"})
            raise UserError(f"the weights are no longer finite after step {self.step}, though the losses and gradients were: the "
                            f"update overflowed. Lower optim.lr. The last good checkpoint in {self.run_dir} is kept.")
        if self.dist.is_main:  # every process holds the same weights: DDP keeps them in step
            save_checkpoint(self.run_dir / CHECKPOINT, self.state_dict())

    def _write_metrics(self, record: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        try:
            with open(self.run_dir / METRICS, "a") as file:
                file.write(json.dumps(record) + "\n")
        except OSError as error:  # a cut-short line is skipped by readers and truncated away by --resume
            raise UserError(f"cannot append to {self.run_dir / METRICS} ({error.strerror or error}); the last checkpoint is intact. "
                            "Free disk space, then continue with --resume") from None
        if self.tensorboard:
            self.tensorboard.write(record)

    # ---- training ----------------------------------------------------------------------------------
    def schedule(self, step: int) -> tuple[float, float]:
        """(learning rate, EMA momentum τ) at ``step``: pure functions of the step."""
        o = self.config.optim
        if o.schedule == "step":
            lr = warmup_step_decay(step, self.total_steps, base=self.base_lr, warmup_steps=self.warmup_steps, milestones=o.lr_decay_at, factor=o.lr_decay_factor)
        else:
            lr = warmup_cosine(step, self.total_steps, base=self.base_lr, warmup_steps=self.warmup_steps)
        byol = self.config.method.byol
        tau = ema_momentum(step, self.total_steps, base=byol.ema_base, schedule=byol.ema_schedule)
        return lr, tau

    def train_step(self, images: Tensor, generator: torch.Generator, noise: torch.Generator | None = None,
                   labels: Tensor | None = None) -> dict[str, Tensor]:
        """One optimiser step on a uint8 batch: views → loss terms → backward → step → target update.

        ``generator`` draws the views; ``noise`` feeds the method's stochastic terms (Brownian kicks); ``labels``
        of the images, where given, train the online probe (:mod:`~nocollapse.train.online_probe`) after the step.
        With ``run.max_skipped_steps`` above 0 the loss terms and gradient are checked finite before the
        update (one device sync), and a failed loss (:class:`CollapseError`, e.g. W-MSE's whitening) is caught;
        either is raised with nothing moved: weights, optimiser state, target and BatchNorm statistics are as
        before the step. Under DDP the processes agree, so that all of them skip the same steps.
        """
        lr, tau = self.schedule(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        checked = self.config.run.max_skipped_steps > 0
        # BatchNorm updates its running statistics in the forward pass: a skipped step must take that back.
        buffers = [b.clone() for b in self.method.buffers()] if checked else []
        if self.online_probe is not None:
            self.online_probe.discard()  # what a skipped step's forward pass left
        views = self.views(images, generator)  # (M, B, C, H, W)
        if self.config.run.channels_last:
            # Lay each (B, C, H, W) view out channels-last, the format the convolutions run fastest in.
            views = views.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
        failure: CollapseError | None = None
        try:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16), self._probe_catching():
                terms = self.compute_losses(views, noise)
        except CollapseError as error:
            if not checked:
                raise
            failure = error
        if checked:
            self._skip_if_failed_anywhere(failure, buffers)
        self.optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        # Logged, and checked finite with the losses when the window closes (no sync here unless every step is
        # checked): a non-finite gradient stops the run before the next checkpoint can save what it did to the weights.
        terms["grad_norm"] = torch.nn.utils.get_total_norm([p.grad for p in self.method.parameters() if p.grad is not None])
        if checked:
            self._check_finite(terms, buffers)
        self.optimizer.step()
        if hasattr(self.method, "update_target"):
            self.method.update_target(tau)
        if self.online_probe is not None and labels is not None:
            self.online_probe.update(labels)
        self.step += 1
        return terms

    def _probe_catching(self) -> contextlib.AbstractContextManager:
        """Where the online probe catches the encoder's features: this step's forward pass, and nowhere else."""
        return self.online_probe.catching() if self.online_probe is not None else contextlib.nullcontext()

    def _skip_if_failed_anywhere(self, failure: CollapseError | None, buffers: list[Tensor]) -> None:
        """Raise ``failure`` (or a CollapseError for another process's), after restoring the BatchNorm ``buffers``,
        when the loss failed in this process or, under DDP, in any other: before backward, whose all-reduce a
        process that skipped would never join."""
        failed = failure is not None
        if self.dist.enabled:
            failed = mean_over_processes(torch.tensor(float(failed), device=self.device)).item() > 0
        if failed:
            self._undo_forward(buffers)
            raise failure or CollapseError("the loss failed in another process")

    def _check_finite(self, terms: dict[str, Tensor], buffers: list[Tensor]) -> None:
        """Raise :class:`NonFiniteStep` naming the non-finite terms, after restoring the BatchNorm ``buffers``."""
        values = torch.stack([value.detach().float() for value in terms.values()])
        # Under DDP every process must make the same decision: skip when any process saw a non-finite value.
        finite = mean_over_processes(torch.isfinite(values).all().float())
        if finite.item() == 1:
            return
        self._undo_forward(buffers)
        named = dict(zip(terms, values.tolist()))
        broken = {name: value for name, value in named.items() if not math.isfinite(value)}
        finite_terms = {name: value for name, value in named.items() if math.isfinite(value)}
        raise NonFiniteStep(broken or {"(another process)": math.nan}, finite_terms)

    def _undo_forward(self, buffers: list[Tensor]) -> None:
        """Drop the gradients and put back the BatchNorm statistics saved before the forward pass."""
        self.optimizer.zero_grad(set_to_none=True)
        for buffer, saved in zip(self.method.buffers(), buffers):
            buffer.copy_(saved)

    def fit(self) -> Path:
        """Train to ``optim.epochs``, then save ``encoder.pt``; returns the run directory."""
        try:
            with _only_trainer_of(self.run_dir) if self.dist.is_main else contextlib.nullcontext():
                self._train()
        finally:
            if self.tensorboard:
                self.tensorboard.close()
        if self.dist.is_main:
            encoder = self.method.encoder.state_dict()
            save_checkpoint(self.run_dir / "encoder.pt", encoder)
            shape = self.pretrain_images.shape
            save_safetensors(self.run_dir / ENCODER_FILE, encoder, metadata=encoder_metadata(self.config, shape[1], shape[-1]))
        return self.run_dir

    def close(self) -> None:
        """Leave the process group (under torchrun; nothing otherwise), first releasing the DDP wrapper, whose
        reducer keeps the group and its gloo threads alive (see :mod:`nocollapse.train.distributed`). The
        trained method stays usable; training again needs a new Trainer."""
        self.compute_losses = self.method
        if self.dist.enabled:
            shutdown_distributed()

    def _train(self) -> None:
        cfg = self.config
        splits = "+".join(dataset.name.split("/")[-1] for dataset in self.pretrain_sets)
        read = "streamed from disk" if self.streaming else "in memory"
        self.log(f"training {method_label(cfg)} on {cfg.data.dataset} {splits} ({len(self.pretrain_images)} images of "
                 f"{'×'.join(map(str, self.pretrain_images.shape[1:]))}, {read}) with a {cfg.model.backbone} on {self.device}: "
                 f"{cfg.optim.epochs} epochs × {self.steps_per_epoch} steps of {cfg.optim.batch_size}, {cfg.optim.name} lr {self.base_lr:.4g}, "
                 f"{describe_precision(cfg.run.amp, self.device)}")
        self.log(describe_param_groups(self.param_groups))
        self._write_skipped_files()
        if not self.labelled:
            self.log("no labelled train/ and test/ splits: the monitor and the evaluation report the geometry only (accuracy needs both)")
        view_rng = torch.Generator(device=self.device)
        noise_rng = torch.Generator(device=self.device)
        progress = Progress(self.total_steps, "train", enabled=self.show_progress, start=self.step)
        totals: dict[str, Tensor] = {}
        window_start, window_steps = time.perf_counter(), 0
        prefetch = Prefetcher(self.pretrain_images, self._batch_index, self.step, self.total_steps,
                              pin=self.device.type == "cuda") if self.streaming else None
        with GracefulStop(enabled=not self.dist.enabled) as stop, prefetch or contextlib.nullcontext():
            while self.step < self.total_steps:
                if prefetch is not None:
                    images = prefetch.get(self.step).to(self.device, non_blocking=True)
                elif self.images_on_device:
                    images = self.pretrain_images[self._batch_index(self.step)]
                else:
                    images = self.pretrain_images[self._batch_index(self.step)].to(self.device, non_blocking=True)
                try:
                    # Views differ per process (its own images); the noise of stochastic terms is the same on every
                    # process, which all draw it for the same gathered batch.
                    view_seed = (cfg.run.seed, self.step, 1) + ((self.dist.rank,) if self.dist.enabled else ())
                    labels = (self.pretrain_labels[self._batch_index(self.step).to(self.device, non_blocking=True)]
                              if self.online_probe is not None else None)
                    terms = self.train_step(images, _seeded(view_rng, *view_seed), _seeded(noise_rng, cfg.run.seed, self.step, 2), labels)
                except (CollapseError, NonFiniteStep) as error:
                    self._skip_or_stop(error)
                    terms = None
                for name, value in (terms or {}).items():
                    totals[name] = totals.get(name, 0) + value.detach()
                window_steps += terms is not None  # trained steps: a skipped step adds no terms
                epoch_done = self.step % self.steps_per_epoch == 0
                save_due = epoch_done or (cfg.run.checkpoint_every > 0 and self.step % cfg.run.checkpoint_every == 0)
                # A window also closes at every checkpoint: its losses are checked finite before the checkpoint is
                # written, and a run resumed from it logs exactly the windows of an uninterrupted one.
                if (save_due or self.step % cfg.run.log_every == 0 or self.step == self.total_steps) and window_steps:
                    record = self._log_window(totals, window_steps, time.perf_counter() - window_start)
                    progress.update(self.step - progress.count, epoch=f"{self._epoch():.2f}", **{k: record[k] for k in ("loss", "lr", "tau", "img/s") if k in record})
                    totals, window_start, window_steps = {}, time.perf_counter(), 0
                finished_epoch = self.step // self.steps_per_epoch
                # The monitor comes before the checkpoint, which then holds the collapse watch's state after it: a run
                # resumed from it neither repeats nor misses the monitor's line and warnings.
                if self.dist.is_main and epoch_done and cfg.eval.monitor_every and (finished_epoch % cfg.eval.monitor_every == 0 or self.step == self.total_steps):
                    self._monitor()
                    window_start = time.perf_counter()  # img/s counts training, not the monitor
                if save_due:
                    self.save()
                if stop.requested:
                    if not save_due:  # not saved at this step yet
                        if window_steps:  # close the window: its losses are checked finite before the checkpoint
                            self._log_window(totals, window_steps, time.perf_counter() - window_start)
                        self.save()
                    self._write_metrics({"step": self.step, "epoch": self._epoch(), "stopped": stop.requested})
                    raise TrainingStopped(stop.requested, self.step, self.run_dir)
        progress.update(self.step - progress.count)  # the last steps were skipped: no window closed to count them
        progress.close()

    def _batch_index(self, step: int) -> Tensor:
        """This process's rows of the global batch of ``step``: a slice of a permutation of the pretraining images
        drawn from (seed, epoch), so a resumed run, and a streamed one, reads exactly the batches of an uninterrupted
        one. On the device when the images are (indexing there costs no sync)."""
        epoch, position = divmod(step, self.steps_per_epoch)
        cached = getattr(self._permutations, "value", None)
        if cached is None or cached[0] != epoch:
            order = torch.randperm(len(self.pretrain_images), generator=_seeded(torch.Generator(), self.config.run.seed, epoch))
            cached = self._permutations.value = (epoch, order.to(self.device) if self.images_on_device else order)
        batch = self.config.optim.batch_size
        index = cached[1][position * batch : (position + 1) * batch]
        # This process's contiguous slice of the global batch: gathered in rank order, the slices are the batch.
        return index[self.dist.rank * self.local_batch : (self.dist.rank + 1) * self.local_batch]

    def _write_skipped_files(self) -> None:
        """List the files data.skip_unreadable left out in RUN_DIR/skipped_files.txt, and say so in the log."""
        if not self.data.skipped or not self.dist.is_main:
            return
        path = self.run_dir / "skipped_files.txt"
        path.write_text("".join(f"{file}\t{why}\n" for file, why in self.data.skipped))
        self.log(f"warning: {len(self.data.skipped)} unreadable image file(s) left out (data.skip_unreadable=true), listed in {path}")

    def _skip_or_stop(self, error: CollapseError | NonFiniteStep) -> None:
        """Skip the step that raised ``error`` while ``run.max_skipped_steps`` allows; else stop with the diagnostic."""
        limit = self.config.run.max_skipped_steps
        at = self.step + 1  # the faulty step, counted from 1 like the steps of the metric lines
        # One bad batch is skipped; a fault right after a skip means the weights themselves have diverged.
        diverged = limit > 0 and self.last_skipped_step == at - 1
        if self.skipped_steps >= limit or diverged:
            self._write_metrics({"step": at, "epoch": round(at / self.steps_per_epoch, 4), "error": str(error)})
            if diverged:
                why = f"; step {at - 1} was skipped too: two faults in a row are diverged weights, which skipping cannot mend"
            elif limit:
                why = f" after skipping {self.skipped_steps} step(s), the most run.max_skipped_steps={limit} allows"
            else:
                why = "; run.max_skipped_steps=N skips up to N such steps instead"
            raise UserError(f"training stopped at step {at}: {error}{why}.\nThe last good checkpoint in {self.run_dir} is kept.") from None
        self.skipped_steps += 1
        self.last_skipped_step = at
        self.step = at  # the batch is spent: the schedule, data order and views go on as in a run without the fault
        self._write_metrics({"step": self.step, "epoch": self._epoch(), "skipped": str(error), "skipped_steps": self.skipped_steps})
        self.log(f"\nwarning: skipped step {self.step} ({self.skipped_steps} of run.max_skipped_steps={limit}): {error}")

    def _epoch(self) -> float:
        """Epochs completed, fractional: the x-axis every metric line shares."""
        return round(self.step / self.steps_per_epoch, 4)

    def _log_window(self, totals: dict[str, Tensor], steps: int, seconds: float) -> dict[str, Any]:
        names = list(totals)
        # Each process's losses are means over its sub-batch: their mean over processes is the global batch's.
        stacked = torch.stack([totals[name] / steps for name in names])
        if self.online_probe is not None:  # its (correct, labelled) sums ride along: the same sync
            stacked = torch.cat([stacked, self.online_probe.take_window()])
        means = mean_over_processes(stacked).tolist()  # the step loop's host sync
        values = dict(zip(names, means))
        online = {"online_top1": means[-2] / means[-1]} if self.online_probe is not None and means[-1] > 0 else {}
        lr, tau = self.schedule(self.step - 1)
        record = {"step": self.step, "epoch": self._epoch(), **values, **online, "lr": lr,
                  **({"tau": tau} if hasattr(self.method, "update_target") else {}),
                  "img/s": round(steps * self.config.optim.batch_size / max(seconds, 1e-9), 1)}
        broken = [name for name, value in values.items() if not math.isfinite(value)]
        if broken:
            self._write_metrics({**record, "error": f"non-finite {', '.join(broken)}"})
            last = self._last_window
            before = f"; the last finite window (step {last['step']}): " + ", ".join(f"{k} {last[k]:.4g}" for k in values if k in last) if last else ""
            raise UserError(f"non-finite {', '.join(broken)} in the steps up to {self.step}{before}. Lower optim.lr or lengthen "
                            f"optim.warmup_epochs, or let run.max_skipped_steps=N skip up to N bad steps. "
                            f"The last good checkpoint in {self.run_dir} is kept.")
        self._write_metrics(record)
        self._last_window = record
        if "embedding_std" in values:
            self._warn(self.collapse_watch.check_batch_std(values["embedding_std"]))
        return record

    def _warn(self, warnings: list[str]) -> None:
        for warning in warnings:
            self._write_metrics({"step": self.step, "epoch": self._epoch(), "warning": warning})
            self.log(f"\nwarning at step {self.step}: {warning}")

    def _monitor(self) -> None:
        """kNN top-1 (k = the smallest of eval.knn_k) on the test split from a fixed subset of the training set,
        and the geometry (without the spectrum) of the test features and of the test projections.

        Every subset and view is drawn from its own seeded generator, never the global RNG, so monitoring
        does not change the training run. Each image goes through the encoder once: the projections are the
        head's output on those features (:func:`projection_features`), and the alignment views, the same at
        every epoch, are drawn once and kept (:meth:`_monitor_views`).
        """
        started = time.perf_counter()
        cfg = self.config
        settings = {"mean": cfg.augment.mean, "std": cfg.augment.std, "channels_last": cfg.run.channels_last, "amp": self.bf16}
        features = lambda images: encoder_features(self.method.encoder, images, device=self.device, **settings)
        record: dict[str, Any] = {"step": self.step, "epoch": self._epoch()}
        if self.test_set is not None:
            probe_images = self.test_set.images
            probe_labels = self.test_set.labels.to(self.device)
        else:  # no test split: the geometry of a fixed subset of the pretraining images, without labels
            probe_images, probe_labels = unlabelled_probe(self.pretrain_images, cfg.run.seed), None
        test_features = features(probe_images)
        if self.labelled:
            subset = bank_rows(len(self.train_set), cfg.eval.monitor_train_samples, cfg.run.seed)
            bank = len(subset)
            k = min(cfg.eval.knn_k)
            accuracy = knn_accuracy(features(self.train_set.images[subset]), self.train_set.labels[subset].to(self.device), test_features,
                                    probe_labels, num_classes=len(self.train_set.classes), k=k, temperature=cfg.eval.knn_temperature)
            record.update({f"knn_top1_k{k}": accuracy, "knn_bank": bank})
        view_features_ = view_features(self.method.encoder, self._monitor_views(probe_images), **settings)
        # The projections, where the loss acts, can collapse while the encoder one layer down still looks fine.
        project = lambda x: projection_features(self.method, x, amp=self.bf16)
        geometry = {
            "features": geometry_scores(test_features, probe_labels, views=view_features_),
            "projections": geometry_scores(project(test_features), probe_labels, views=project(view_features_)),
        }
        record["monitor_seconds"] = round(time.perf_counter() - started, 2)
        record["geometry"] = {name: g.to_dict(spectrum=False) for name, g in geometry.items()}
        self._write_metrics(record)
        if self.labelled:
            self.log(f"\nepoch {self._epoch():g}: kNN top-1 (k={k}, {bank} train images) {100 * accuracy:.2f}% (monitor: {record['monitor_seconds']:.1f} s)")
        else:
            self.log(f"\nepoch {self._epoch():g}: geometry of {len(probe_images)} {'test' if self.test_set is not None else 'pretraining'} images "
                     f"(no kNN: it needs labelled train/ and test/; monitor: {record['monitor_seconds']:.1f} s)")
        self.log(f"  geometry: features {geometry['features'].summary()} | projections {geometry['projections'].summary()}")
        self._warn(self.collapse_watch.check_geometry(geometry))
        if self.on_monitor is not None:
            self.on_monitor(record)

    def _monitor_views(self, probe_images: Tensor) -> Tensor:
        """The alignment views of the monitor's probe images (:func:`positive_views`: the same at every call), kept after the
        first call unless they would take more than :data:`MONITOR_VIEWS_KEPT` bytes (then drawn again: the same views)."""
        if self._kept_monitor_views is not None and self._kept_monitor_views[0] is probe_images:
            return self._kept_monitor_views[1]
        views = positive_views(probe_images, self.config.augment, device=self.device)
        if views.numel() * views.element_size() <= MONITOR_VIEWS_KEPT:
            self._kept_monitor_views = probe_images, views
        return views
