"""Typed configuration: one dataclass per concern, named presets, dotted ``key=value`` overrides.

``Config`` is what a run needs and what its checkpoint stores; ``resolve_config(preset, overrides)``
builds one from a preset name and command-line overrides, checks every value and raises
:class:`~nocollapse.errors.UserError` with the valid choices when something is off.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from nocollapse.augment.views import AugmentConfig
from nocollapse.errors import UserError
from nocollapse.losses.whitening import check_whitening_shapes
from nocollapse.rules import BOOL, Rule, first_violation, integer, one_of, real, shown, tuple_of


@dataclass
class DataConfig:
    dataset: str = "fashion-mnist"  # fashion-mnist | cifar10 | cifar100 | stl10 | image-folder (DIR/unlabeled/**, and/or DIR/train/<class>/ with DIR/test/<class>/)
    data_dir: str | None = None  # where the files are; None searches $NOCOLLAPSE_DATA_DIR, then the system copy
    image_size: int = 0  # image folders: the side every image is centre-cropped and resized to (0: 32; photos: 64, 96, 128 or 224); built-in datasets keep their own
    pretrain_splits: tuple[str, ...] = ()  # what the method trains on (labels unused); empty: unlabeled where there is one, else train. STL-10's protocol: unlabeled,train
    on_device: bool = True  # keep the uint8 pretraining images on the training device when they are held whole (no loader on the hot path)
    stream: str = "auto"  # auto: the pretraining images are held whole when they take under a quarter of the memory (RAM, or the GPU's with on_device), else read from disk each step ahead of it | memory | disk
    cache_dir: str | None = None  # where image folders are decoded once (uint8 .npy + index.json, reused while the folder is unchanged); none: $NOCOLLAPSE_CACHE_DIR, else ~/.cache/nocollapse
    skip_unreadable: bool = False  # image folders: leave out files that cannot be decoded (listed in RUN_DIR/skipped_files.txt and the log) instead of stopping


@dataclass
class ModelConfig:
    backbone: str = "convnet"  # convnet (fast on CPU) | resnet18 | resnet34 | resnet50
    widths: tuple[int, ...] = (32, 64, 128, 256)  # convnet: channels per stage; each stage after the first halves the resolution
    depth: int = 1  # convnet: convs per stage
    stem: str = "auto"  # resnets: auto (cifar up to 64 px, imagenet above) | cifar (3×3 stride 1, no max-pool; for 28–64 px) | imagenet (7×7 stride 2 + max-pool)
    zero_init_residual: bool = False  # resnets: zero each residual block's last BN scale, so blocks start as their shortcut (off in torchvision, solo-learn's CIFAR recipes and BYOL's ResNet-18; SFRIK's code turns it on; may help very large batches)
    projector_hidden: int = 1024  # BYOL uses 4096 on ImageNet; a quarter is plenty for small encoders
    projection_dim: int = 128  # BYOL uses 256
    predictor_hidden: int = 1024  # BYOL predictor hidden width (d → h → d); 0: no predictor, BYOL's ablation that collapses
    init_from: str | None = None  # start the encoder from trained weights: a run directory, an encoder.safetensors, or a state dict (.pt); none: random


@dataclass
class BYOLConfig:
    ema_base: float = 0.99  # τ_base of the target EMA; τ rises to 1 along a cosine. Short runs want 0.99 or lower, 1000-epoch runs 0.996
    ema_schedule: str = "cosine"  # cosine: τ from τ_base to 1 (BYOL) | constant: τ_base throughout (with ema_base=0 the target is the online network: BYOL's ablation)


@dataclass
class WMSEConfig:
    w_size: int = 128  # embeddings per whitened sub-batch; must exceed model.projection_dim (rule: 2d) and divide optim.batch_size
    w_iter: int = 1  # random sub-batch partitions per step (the paper uses 1; more costs more Cholesky solves)
    eps: float = 0.0  # shrinkage (1−ε)C + εI before Cholesky; raise (e.g. 1e-3) if whitening fails on a collapsing run


@dataclass
class MSBRegConfig:
    centroid: str = "per_view"  # per_view (each view's prediction to the target centroid) | mean (online centroid to target centroid)


@dataclass
class SFRIKConfig:
    invariance: float = 2500.0  # λ_inv on the MSE between the normalised views (mean over N·q elements); the paper's 40000 at q=32768 is ≈1.2·q, kept at that ratio for q=2048
    mmd: float = 1.0  # λ_mmd on the kernel uniformity Ψ (mean over the views)
    kernel_weights: tuple[float, ...] = (1.0, 40.0, 40.0)  # b_1, b_2, b_3, ... ≥ 0 of φ = Σ b_ℓ P_ℓ (Gegenbauer, dimension q); the paper's (1, 40, 40)


@dataclass
class MethodConfig:
    name: str = "byol"  # byol | wmse | msbreg | sfrik (views from augment.num_views: 2 for W-MSE 2, 4 for W-MSE 4; MSBReg M ≥ 2)
    byol: BYOLConfig = field(default_factory=BYOLConfig)  # read when name=byol or msbreg (the EMA target)
    wmse: WMSEConfig = field(default_factory=WMSEConfig)  # read when name=wmse
    msbreg: MSBRegConfig = field(default_factory=MSBRegConfig)  # read when name=msbreg; its SV and BD terms are regularizers.*
    sfrik: SFRIKConfig = field(default_factory=SFRIKConfig)  # read when name=sfrik; q is model.projection_dim


@dataclass
class RegularizerConfig:
    singular_value: float = 0.0  # weight λ_SV of the singular value loss on the online projections (flattens their spectrum; 0: off)
    singular_value_target: str = "uniform"  # uniform: eigenvalues pulled to 1/d, the uniform law's (resists shrinking) | mean: to their mean (SPEC §3; lets the batch shrink to a point)
    brownian: float = 0.0  # weight λ_BD of the Brownian diffusive loss on the online projections (a random kick per embedding; 0: off)
    brownian_sigma: float = 1.0  # σ of the Brownian noise N(0, σ²I); only σ·λ_BD matters for the gradient
    contrastive: float = 0.0  # weight of InfoNCE/NT-Xent on the online projections (negatives from the batch; 0: off)
    contrastive_temperature: float = 0.2  # InfoNCE temperature T (0.1–0.5; lower: sharper, harder negatives)
    uniformity: float = 0.0  # weight of the uniformity loss log mean exp(−t‖ẑᵢ−ẑⱼ‖²) on the online projections (0: off)
    uniformity_t: float = 2.0  # t of the uniformity loss (Wang & Isola use 2)
    alignment: float = 0.0  # weight of the alignment loss mean ‖ẑ−ẑ⁺‖² between views' online projections (0: off; BYOL already aligns)
    kernel_uniformity: float = 0.0  # weight of the kernel uniformity Ψ (MMD² to the uniform law on the sphere, SFRIK's term) of the online projections (0: off)
    kernel_weights: tuple[float, ...] = (1.0, 40.0, 40.0)  # b_1, b_2, ... ≥ 0 of the kernel φ = Σ b_ℓ P_ℓ: b_1 centres, b_2 whitens, b_3 spreads further
    mhe: float = 0.0  # weight of the hyperspherical energy of every conv/linear layer's neurons in the online networks (0: off)
    mhe_power: int = 2  # MHE energy: 0 (−log d²), 1 (1/d), 2 (1/d²); higher punishes near neighbours harder
    mhe_distance: str = "euclidean"  # MHE distance between neurons: euclidean (chord) | angular (angle/π)
    mhe_half_space: bool = False  # MHE also counts each neuron's negative (a neuron and −neuron span the same hyperplane)


@dataclass
class OptimConfig:
    name: str = "lars"  # lars | adamw | adam | sgd
    lr: float = 1.0  # base learning rate for a batch of 256 (scaled by batch_size/256 when scale_lr is on; under torchrun batch_size is the global batch, so N processes keep the lr of one)
    scale_lr: bool = True  # linear scaling rule lr·B/256 (BYOL, SimCLR); turn off for Adam-style optimisers if you prefer fixed lr
    weight_decay: float = 1e-5  # never applied to biases and norm parameters
    momentum: float = 0.9  # lars/sgd momentum
    eta: float = 0.02  # LARS trust coefficient (BYOL ImageNet 1e-3; solo-learn CIFAR 0.02)
    lars_trust: str = "update"  # LARS trust ratio η‖p‖/‖g + λp‖ (update, BYOL) | η‖p‖/(‖g‖ + λ‖p‖) (grad_plus_decay, solo-learn)
    lars_clip: bool = False  # solo-learn's clipping: a layer's rate is min(trust, lr) instead of trust·lr
    batch_size: int = 256  # images per step (each gives num_views views); under torchrun the global batch, split evenly over the processes
    epochs: int = 10  # passes over the training set; the lr and τ schedules span them
    warmup_epochs: float = 1.0  # linear warm-up from 0 (may be fractional)
    schedule: str = "cosine"  # after warm-up: cosine (decay to 0) | step (×lr_decay_factor at each lr_decay_at)
    lr_decay_at: tuple[float, ...] = (0.95, 0.975)  # step schedule: fractions of training (W-MSE: epochs E−50, E−25 of E=1000)
    lr_decay_factor: float = 0.2  # step schedule: multiplier at each milestone


@dataclass
class EvalConfig:
    knn_k: tuple[int, ...] = (20, 200)  # neighbours for the final kNN table (cosine, weighted by exp(s/T))
    knn_temperature: float = 0.1  # T in the vote weight exp(cos/T) (InstDisc/lightly protocol)
    knn_euclidean_k: tuple[int, ...] = ()  # also report W-MSE's kNN protocol (Euclidean, unweighted; k=5 in the paper); empty: off
    monitor_every: int = 1  # kNN monitor on the test split every N epochs (0: off)
    monitor_train_samples: int = 10000  # training images that form the monitor's kNN bank (all: 0); the final evaluation uses eval.train_samples
    train_samples: int = 0  # training images the final evaluation fits on, as if they were the whole split (kNN bank, linear probe, the label fractions and shots, fine-tuning): a fixed subset drawn from run.seed, the monitor's when the sizes agree; for speed; 0: all, the protocol papers report
    linear_probe: bool = True  # train a linear classifier on frozen features in the final evaluation
    online_probe: bool = True  # accuracy while training: a linear head on the detached encoder features of each batch, trained alongside (solo-learn's online eval), logged as online_top1; needs labelled pretraining images, changes nothing in training
    probe_epochs: int = 30  # linear-probe epochs (Adam, cosine); 30 keeps evaluation within the CPU budget, raise for final numbers
    probe_min_steps: int = 1500  # the fewest linear-probe Adam steps: small labelled sets get more epochs (1,400 images give 2 steps an epoch); Fashion-MNIST's 30 epochs (1770 steps) are above it
    baselines: bool = True  # evaluate raw pixels and a randomly initialised encoder beside the trained one
    label_fractions: tuple[float, ...] = ()  # also score kNN and the probe fitted on these class-balanced fractions of the training labels (of eval.train_samples when set), e.g. 0.01,0.1 (BYOL's semi-supervised table); empty: off
    shots: tuple[int, ...] = ()  # also score them fitted on this many labelled images per class, e.g. 1,5,10; empty: off
    label_draws: int = 3  # random draws of each label subset (mean ± std over them); the same draws for every representation and every run with the same run.seed
    finetune_epochs: int = 0  # also fine-tune the encoder + a linear head end to end on the labels (all, and each label subset), beside the same network from the random-encoder baseline's initialisation, this many epochs each (0: off; eval/finetune.py has the recipe)
    finetune_min_steps: int = 500  # the fewest fine-tuning steps (batch 128) whatever the labelled set's size: a 600-image subset gives 5 steps an epoch
    finetune_lr: float = 0.05  # peak SGD learning rate of fine-tuning, cosine to 0; the same for the pretrained and the from-scratch network
    transfer: tuple[str, ...] = ()  # also score the encoder on other datasets, NAME or NAME:DIR each (e.g. cifar10,image-folder:/data/leaves with train/ and test/ class folders), their images converted to its channels and size (eval/transfer.py), beside their own baselines; a DIR cannot hold a comma; empty: off


@dataclass
class RunConfig:
    seed: int = 0  # everything (init, sampling, augmentation) follows from it
    device: str = "auto"  # auto (cuda if available, else cpu) | cpu | cuda | cuda:N
    out_dir: str = "runs"  # runs are written to out_dir/name
    name: str = ""  # run directory name; empty: <preset>-<method>[+<regularizers>]-seed<seed>
    amp: str = "auto"  # bf16 autocast for training and the epoch monitor: auto (on CUDA, and on CPUs with AMX or AVX-512 BF16 units; float32 elsewhere, where bf16 is slower) | true | false; losses and the final evaluation always run in float32
    channels_last: bool = True  # memory format of the conv nets: faster on CPU and on tensor cores
    compile: bool = False  # torch.compile the method (GPU; the first steps are slow while it compiles)
    log_every: int = 20  # steps between metric lines (each costs a device sync)
    checkpoint_every: int = 0  # steps between extra checkpoints (0: only at the end of each epoch)
    tensorboard: bool = False  # also log the metrics as TensorBoard scalars in RUN_DIR/tensorboard (needs the tensorboard extra)
    max_skipped_steps: int = 0  # steps with a non-finite loss or gradient to skip (no update) before stopping; 0: stop at the first. Above 0, each step is checked (one device sync per step)


@dataclass
class DistributedConfig:
    """Read under torchrun (``torchrun --nproc_per_node=N -m nocollapse train``); a single process ignores it."""

    gather: bool = True  # batch statistics (W-MSE whitening, singular values, kernel MMD, uniformity, InfoNCE) over the global batch, as one process would; false: each process's own sub-batch
    sync_bn: bool = True  # SyncBatchNorm: BatchNorm statistics over the global batch (CUDA only; on CPU each process normalises its sub-batch)


@dataclass
class Config:
    preset: str = "fmnist"  # the preset these settings started from (informational)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    regularizers: RegularizerConfig = field(default_factory=RegularizerConfig)  # terms added to any method's loss, by weight
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        """Rebuild a config saved by :meth:`to_dict` (unknown keys are an error: the file is not ours)."""
        config = cls()
        for key, value in flatten(values).items():
            set_value(config, key, value)
        validate(config)
        return config


FMNIST_STATS = {"mean": (0.2860,), "std": (0.3530,)}
CIFAR10_STATS = {"mean": (0.4914, 0.4822, 0.4465), "std": (0.2470, 0.2435, 0.2616)}
CIFAR100_STATS = {"mean": (0.5071, 0.4865, 0.4409), "std": (0.2673, 0.2564, 0.2762)}
STL10_STATS = {"mean": (0.43, 0.42, 0.39), "std": (0.27, 0.26, 0.27)}  # W-MSE's code
IMAGENET_STATS = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}  # photos in general

# Each preset is a set of overrides on the defaults above, written as on the command line.
FMNIST_DATA = {"data.dataset": "fashion-mnist", "augment.mean": FMNIST_STATS["mean"], "augment.std": FMNIST_STATS["std"]}
RESNET18_BYOL_HEADS = {"model.backbone": "resnet18", "model.projector_hidden": 4096, "model.projection_dim": 256, "model.predictor_hidden": 4096}
# solo-learn's CIFAR BYOL recipe (ResNet-18, LARS lr 1.0 with clipping, η 0.02, wd 1e-5, τ_base 0.99); 1000 epochs published.
# solo-learn's CIFAR augmentation has no blur (its solarize stays 0 / 0.2).
CIFAR_BYOL = {**RESNET18_BYOL_HEADS, "augment.blur_prob": (0.0,), "optim.lars_trust": "grad_plus_decay", "optim.lars_clip": True,
              "optim.epochs": 1000, "optim.warmup_epochs": 10, "eval.monitor_every": 25}
# W-MSE (SPEC §2): one network, head 1024 → 64, Adam 3e-3 with warm-up and ×0.2 at E−50 and E−25,
# weak augmentation without blur or solarize.
WMSE = {"method.name": "wmse", "model.projector_hidden": 1024, "model.projection_dim": 64, "method.wmse.w_size": 128,
        "optim.name": "adam", "optim.lr": 3e-3, "optim.scale_lr": False, "optim.weight_decay": 1e-6,
        "optim.schedule": "step", "augment.blur_prob": (0.0,), "augment.solarize_prob": (0.0,),
        "augment.saturation": 0.4, "augment.grayscale_prob": 0.1, "augment.crop_scale": (0.2, 1.0),
        "eval.knn_euclidean_k": (5,)}
# Fashion-MNIST W-MSE within the default BYOL run's CPU budget (docs/recipe.md): gentle crops and BYOL's
# asymmetric blur/solarize help it as they help BYOL (+2.6 points kNN over the paper's weak augmentation).
# W-MSE 2 needs no target pass, so 5 epochs cost what BYOL's 4 do; W-MSE 4 processes twice the views: 3 epochs.
FMNIST_WMSE = {**FMNIST_DATA, **WMSE, "optim.batch_size": 128, "optim.epochs": 5, "optim.warmup_epochs": 0.5,
               "optim.lr_decay_at": (0.75, 0.875), "augment.crop_scale": (0.8, 1.0),
               "augment.blur_prob": (1.0, 0.1), "augment.solarize_prob": (0.0, 0.2)}

# BYOL on Fashion-MNIST within 15 minutes on 2 CPU cores in float32. Found by benchmarks/recipe_search.py
# (docs/recipe.md): with only ~4 epochs, a fast-moving target (τ_base 0.9), gentle crops and small batches
# (more steps) matter most. The base of the comparison presets below, which all take its budget.
FMNIST_BYOL = {**FMNIST_DATA, "method.byol.ema_base": 0.9, "optim.batch_size": 128, "optim.epochs": 4, "augment.crop_scale": (0.8, 1.0)}
# The default (issue 23, docs/recipe.md): BYOL + the uniformity loss (Durrant & Leontidis; +1.6 kNN at 4 epochs) for 7 epochs,
# which the bf16 step of CPUs with AMX or AVX-512 BF16 fits in 15 minutes (float32 steps are ~1.6x slower), and a 384-wide
# last stage, whose 384-d feature lifts the linear probe past 91% (kNN 90.12 ± 0.19, linear 91.26 ± 0.11, n = 3, 12.9–14.2 min
# on 2 bf16 CPU cores).
FMNIST_DEFAULT = {**FMNIST_BYOL, "regularizers.uniformity": 1.0, "optim.epochs": 7, "model.widths": (32, 64, 128, 384)}
# MSBReg's singular value and Brownian terms (SPEC §3; the paper's weights were not available to us).
MSBREG_REGULARIZERS = {"regularizers.singular_value": 30.0, "regularizers.brownian": 0.1}

PRESETS: dict[str, dict[str, Any]] = {
    "fmnist": FMNIST_DEFAULT,
    "fmnist-byol": FMNIST_BYOL,  # plain BYOL, 4 epochs: the default before issue 23, and the comparison tables' reference
    # Fashion-MNIST on a GPU: a ResNet-18 and a longer schedule.
    "fmnist-gpu": {**FMNIST_DATA, **RESNET18_BYOL_HEADS, "augment.crop_scale": (0.2, 1.0), "optim.batch_size": 512,
                   "optim.epochs": 100, "optim.warmup_epochs": 10, "eval.monitor_every": 10},
    "fmnist-wmse2": FMNIST_WMSE,
    # MSBReg on the default BYOL run's budget: 4 views of 64 images per step (BYOL: 2 of 128), so
    # the same 1872 steps of 256 views are 2 epochs; views alternate BYOL's blur/solarize settings.
    "fmnist-msbreg": {**FMNIST_BYOL, **MSBREG_REGULARIZERS, "method.name": "msbreg", "augment.num_views": 4,
                      "optim.batch_size": 64, "optim.epochs": 2, "optim.warmup_epochs": 0.5},
    # BYOL + uniformity (SPEC §5, Durrant & Leontidis): the default run plus one term that spreads it over
    # the sphere; weights from 1-epoch pilots (docs/recipe.md), the paper's were not available.
    "byol+contrastive": {**FMNIST_BYOL, "regularizers.contrastive": 1.0},
    "byol+uniformity": {**FMNIST_BYOL, "regularizers.uniformity": 1.0},
    "byol+mhe": {**FMNIST_BYOL, "regularizers.mhe": 100.0},
    # SFRIK (SPEC §4) on the default run's data, augmentation and budget; q = 2048 (the paper: 32768 on ImageNet).
    "fmnist-sfrik": {**FMNIST_BYOL, "method.name": "sfrik", "model.projection_dim": 2048},
    "fmnist-wmse4": {**FMNIST_WMSE, "augment.num_views": 4, "optim.epochs": 3, "optim.batch_size": 64, "method.wmse.w_size": 64, "model.projection_dim": 32},
    # Your own photos at 96 px (DIR/unlabeled/**, and train/<class>/ + test/<class>/ to score them): BYOL on a ResNet-18
    # (ImageNet stem at this size), ImageNet's statistics and augmentation; a GPU recipe (2 CPU cores: try data.image_size=64).
    "folder-96": {**RESNET18_BYOL_HEADS, "data.dataset": "image-folder", "data.image_size": 96, "augment.mean": IMAGENET_STATS["mean"],
                  "augment.std": IMAGENET_STATS["std"], "augment.crop_scale": (0.2, 1.0), "optim.batch_size": 256, "optim.epochs": 200,
                  "optim.warmup_epochs": 10, "eval.monitor_every": 10},
    # STL-10 as in W-MSE's paper: pretraining on unlabeled + train (105k images), kNN and linear probe train → test; W-MSE 2's
    # settings on a ResNet-18 at the native 96 px (the paper crops to 64 px).
    "stl10": {**WMSE, "data.dataset": "stl10", "data.pretrain_splits": ("unlabeled", "train"), "augment.mean": STL10_STATS["mean"],
              "augment.std": STL10_STATS["std"], "model.backbone": "resnet18", "model.projection_dim": 128, "method.wmse.w_size": 256,
              "optim.batch_size": 256, "optim.epochs": 500, "optim.warmup_epochs": 2, "eval.monitor_every": 25},
    "cifar10": {**CIFAR_BYOL, "data.dataset": "cifar10", "augment.mean": CIFAR10_STATS["mean"], "augment.std": CIFAR10_STATS["std"]},
    "cifar100": {**CIFAR_BYOL, "data.dataset": "cifar100", "augment.mean": CIFAR100_STATS["mean"], "augment.std": CIFAR100_STATS["std"]},
    # W-MSE 2 / 4 on CIFAR-10 as published: ResNet-18, batch 512 / 256, 1000 epochs, 500-step warm-up (≈ 5 / 2.5 epochs).
    "cifar10-wmse2": {**WMSE, "data.dataset": "cifar10", "augment.mean": CIFAR10_STATS["mean"], "augment.std": CIFAR10_STATS["std"],
                      "model.backbone": "resnet18", "optim.batch_size": 512, "optim.epochs": 1000, "optim.warmup_epochs": 5, "eval.monitor_every": 25},
    "cifar10-wmse4": {**WMSE, "data.dataset": "cifar10", "augment.mean": CIFAR10_STATS["mean"], "augment.std": CIFAR10_STATS["std"],
                      "model.backbone": "resnet18", "augment.num_views": 4, "optim.batch_size": 256, "optim.epochs": 1000,
                      "optim.warmup_epochs": 2.5, "eval.monitor_every": 25},
}

# Where a run's files live, where it runs and how it is watched: what it computes but for rounding (a device can change
# run.amp=auto's choice). Runs that differ only in these and the seed are seeds of one setting (report/seeds.py), and a
# resumed run may change them (train/loop.py).
BOOKKEEPING_KEYS = frozenset({"run.name", "run.out_dir", "run.device", "run.log_every", "run.checkpoint_every", "run.tensorboard",
                              "data.data_dir", "data.cache_dir", "data.stream", "data.on_device"})
# The eval settings that act only while training (the epoch monitor, the online probe): `nocollapse eval` cannot change them.
TRAINING_EVAL_KEYS = frozenset({"eval.monitor_every", "eval.monitor_train_samples", "eval.online_probe"})
# Those and the ones the epoch monitor shares with the final evaluation (its k is the smallest of eval.knn_k).
MONITOR_EVAL_KEYS = TRAINING_EVAL_KEYS | {"eval.knn_k", "eval.knn_temperature"}


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` → ``{"optim.lr": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def valid_keys(config: Config | None = None) -> list[str]:
    return sorted(flatten((config or Config()).to_dict()))


def key_type(key: str) -> Any:
    """The annotation of a dotted key's field (``tuple[float, float]`` for ``augment.crop_scale``); UserError when unknown."""
    if key not in valid_keys() or key == "preset":
        raise UserError(unknown_key_message(key))
    *sections, name = key.split(".")
    target: Any = Config()
    for section in sections:
        target = getattr(target, section)
    return _field_type(target, name)


def key_arity(key: str) -> int | None:
    """How many values a key takes: None for one, 0 for any number (``eval.knn_k``), n for exactly n (``augment.crop_scale``: 2)."""
    annotation = key_type(key)
    tuples = [a for a in (typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else (annotation,))
              if typing.get_origin(a) is tuple]
    if not tuples:
        return None
    args = typing.get_args(tuples[0])
    return 0 if Ellipsis in args else len(args)


def key_item_type(key: str) -> type:
    """The type of a key's values (``float`` for ``augment.crop_scale``; ``str`` for ``data.data_dir``, which may be none)."""
    annotation = key_type(key)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is tuple else annotation


def get_value(config: Config, key: str) -> Any:
    """The value of a dotted key in ``config``."""
    target: Any = config
    for part in key.split("."):
        target = getattr(target, part)
    return target


def _field_type(section: Any, name: str) -> Any:
    return _type_hints(type(section))[name]


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """The evaluated annotations of a config class; cached: evaluating them is most of an override's cost."""
    return typing.get_type_hints(cls)


KINDS = {bool: "true or false (also 1/0, yes/no, on/off)", int: "an integer", float: "a number", str: "text"}


def parse_value(text: Any, annotation: Any, key: str) -> Any:
    """Convert a command-line string (or a JSON value) to the field's type; a value that does not
    convert, or a fixed-length tuple (``tuple[float, float]``) with another number of items, raises
    UserError ``KEY=TEXT: must be ...``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if text is None or (isinstance(text, str) and text.lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return parse_value(text, inner[0], key)
    if origin is tuple:
        items = list(text) if isinstance(text, (list, tuple)) else [t for t in str(text).split(",") if t.strip()]
        item_type = args[0]
        given = text if isinstance(text, str) else shown(tuple(items))
        if Ellipsis not in args and len(items) != len(args):
            raise UserError(f"{key}={given!r}: must be exactly {len(args)} comma-separated values, each "
                            f"{KINDS.get(item_type, item_type)}; got {len(items)}")
        try:
            return tuple(_parse_scalar(item, item_type) for item in items)
        except ValueError:
            raise UserError(f"{key}={given!r}: must be comma-separated values, each {KINDS.get(item_type, item_type)}") from None
    try:
        return _parse_scalar(text, annotation)
    except ValueError:
        raise UserError(f"{key}={text!r}: must be {KINDS.get(annotation, annotation)}") from None


def _parse_scalar(text: Any, annotation: Any) -> Any:
    """``text`` as a bool, int, float or str; ValueError when it is not one."""
    if annotation not in KINDS:
        raise TypeError(f"unsupported field type {annotation}")  # a new field of a type this parser does not know: a bug
    try:
        if annotation is bool:
            if isinstance(text, bool):
                return text
            lowered = str(text).strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if annotation is int:
            if isinstance(text, float) and not text.is_integer():  # inf and nan are not integers either
                raise ValueError
            return int(text.strip() if isinstance(text, str) else text)
        if annotation is float:
            return float(text)
        return str(text)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(text) from None


def set_value(config: Config, key: str, value: Any) -> None:
    """Set one dotted key, converting ``value`` to the field's type; unknown keys list the valid ones."""
    parts = key.split(".")
    target: Any = config
    for part in parts[:-1]:
        if not dataclasses.is_dataclass(target) or not hasattr(target, part):
            break
        target = getattr(target, part)
    name = parts[-1]
    if not dataclasses.is_dataclass(target) or name not in {f.name for f in dataclasses.fields(target)} or dataclasses.is_dataclass(getattr(target, name)):
        raise UserError(unknown_key_message(key))
    if key == "run.amp":
        value = _amp_setting(value)
    setattr(target, name, parse_value(value, _field_type(target, name), key))


def _amp_setting(value: Any) -> Any:
    """``run.amp`` as one of its choices. It was a boolean until it took ``auto``: a saved JSON ``true`` meant bf16 on
    CUDA only, which ``auto`` still means there (it adds CPUs with bf16 units), and the boolean spellings of the command
    line (``1``, ``yes``, ``on``, ...) keep working."""
    if isinstance(value, bool):
        return "auto" if value else "false"
    text = str(value).strip().lower()
    return {"1": "true", "yes": "true", "on": "true", "0": "false", "no": "false", "off": "false"}.get(text, text)


def unknown_key_message(key: str) -> str:
    """What to say about a mistyped key: the closest valid keys, and the keys of its section."""
    keys = valid_keys()
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.8)
    message = f"unknown config key {key!r}" + (f"; did you mean {' or '.join(close)}?" if close else "")
    section = [k for k in keys if k.startswith(key.partition(".")[0] + ".")]
    if section:
        return message + f"\nThe keys of {key.partition('.')[0]}: " + ", ".join(section)
    return message + f"\nThe sections: {', '.join(sorted({k.partition('.')[0] for k in keys}))} (`nocollapse config` lists every key)"


# ---- validation -------------------------------------------------------------------------------------
# One rule per key (nocollapse.rules): a failing value gives the message "KEY=VALUE: must be ALLOWED".
# The augment.* rules live beside AugmentConfig, which checks its own fields when used without this module. Relations between keys
# (warm-up within the epochs, W-MSE's sub-batches) are checked after every key passed its own rule.
# The keys that name one of a few choices.
CHOICES: dict[str, tuple[Any, ...]] = {
    "data.dataset": ("fashion-mnist", "cifar10", "cifar100", "stl10", "image-folder"),
    "data.stream": ("auto", "memory", "disk"),
    "run.amp": ("auto", "true", "false"),  # nocollapse.train.amp
    "model.backbone": ("convnet", "resnet18", "resnet34", "resnet50"),
    "model.stem": ("auto", "cifar", "imagenet"),
    "method.name": ("byol", "wmse", "msbreg", "sfrik"),
    "method.msbreg.centroid": ("per_view", "mean"),
    "method.byol.ema_schedule": ("cosine", "constant"),
    "regularizers.singular_value_target": ("mean", "uniform"),
    "regularizers.mhe_power": (0, 1, 2),
    "regularizers.mhe_distance": ("euclidean", "angular"),
    "optim.schedule": ("cosine", "step"),
    "optim.name": ("lars", "adamw", "adam", "sgd"),
    "optim.lars_trust": ("update", "grad_plus_decay"),
}


WEIGHT = real(0, note=" (a loss weight; 0: off)")
_NON_NEGATIVE = tuple_of(real(0), least=1)[0]
# b_ℓ < 0 makes φ = Σ b_ℓ P_ℓ an indefinite kernel, and all zeros no kernel at all.
KERNEL_WEIGHTS: Rule = (lambda v: _NON_NEGATIVE(v) and any(w > 0 for w in v),
                        "one or more comma-separated finite numbers b_1,b_2,... >= 0, not all 0 (a negative b_l is not a positive-definite kernel)")


def _path(text: Any) -> bool:
    """A string the operating system can take as a path: no NUL byte."""
    return isinstance(text, str) and "\0" not in text


def _plain_name(name: Any) -> bool:
    """One directory level: not blank, '.' or '..', and without a path separator (Windows' too, so that
    runs copy between systems) or a NUL byte."""
    return _path(name) and name.strip() != "" and name not in (".", "..") and "/" not in name and "\\" not in name


def _device(name: Any) -> bool:
    # torch keeps device indices in 8 bits: cuda:128 would silently become cuda:-128.
    match = re.fullmatch(r"auto|cpu|mps|cuda(?::(0|[1-9]\d{0,2}))?", name) if isinstance(name, str) else None
    return match is not None and (match.group(1) is None or int(match.group(1)) <= 127)


RULES: dict[str, Rule] = {
    **{key: one_of(*choices) for key, choices in CHOICES.items()},
    # Informational, but the default run.name starts with it.
    "preset": (_plain_name, "a preset name: not blank, '.' or '..', without path separators or NUL bytes"),
    "data.data_dir": ((lambda v: v is None or _path(v)),
                      "a directory path without NUL bytes, or none to search $NOCOLLAPSE_DATA_DIR, then the system copy"),
    "data.on_device": BOOL,
    "data.image_size": integer(0, 1024, note=" (pixels per side; 0: the dataset's own, 32 for image folders)"),
    "data.pretrain_splits": (lambda v: isinstance(v, tuple) and all(x in ("unlabeled", "train", "test") for x in v) and len(set(v)) == len(v),
                             "comma-separated distinct splits out of unlabeled, train, test (none: unlabeled where the dataset has it, else train)"),
    "data.cache_dir": ((lambda v: v is None or _path(v)), "a directory path without NUL bytes, or none for $NOCOLLAPSE_CACHE_DIR, else ~/.cache/nocollapse"),
    "data.skip_unreadable": BOOL,
    "model.widths": tuple_of(integer(1), least=1, note=" (channels per convnet stage)"),
    "model.depth": integer(1),
    "model.zero_init_residual": BOOL,
    "model.init_from": ((lambda v: v is None or _path(v)), "a run directory, an encoder.safetensors or a .pt state dict (path without NUL bytes), or none"),
    "model.projector_hidden": integer(1),
    "model.projection_dim": integer(1),
    "model.predictor_hidden": integer(0, note=" (0: no predictor)"),
    "method.byol.ema_base": real(0, 1),
    "method.wmse.w_size": integer(2, note=" (and above model.projection_dim)"),
    "method.wmse.w_iter": integer(1),
    "method.wmse.eps": real(0, 1, high_open=True),
    "method.sfrik.invariance": WEIGHT,
    "method.sfrik.mmd": real(0, low_open=True, note=" (without the MMD term SFRIK collapses)"),
    "method.sfrik.kernel_weights": KERNEL_WEIGHTS,
    "regularizers.singular_value": WEIGHT,
    "regularizers.brownian": WEIGHT,
    "regularizers.brownian_sigma": real(0),
    "regularizers.contrastive": WEIGHT,
    "regularizers.contrastive_temperature": real(0, low_open=True),
    "regularizers.uniformity": WEIGHT,
    "regularizers.uniformity_t": real(0, low_open=True),
    "regularizers.alignment": WEIGHT,
    "regularizers.kernel_uniformity": WEIGHT,
    "regularizers.kernel_weights": KERNEL_WEIGHTS,
    "regularizers.mhe": WEIGHT,
    "regularizers.mhe_half_space": BOOL,
    "optim.lr": real(0, low_open=True),
    "optim.scale_lr": BOOL,
    "optim.weight_decay": real(0),
    "optim.momentum": real(0, 1, high_open=True),
    "optim.eta": real(0, low_open=True),
    "optim.lars_clip": BOOL,
    "optim.batch_size": integer(2, note=" (BatchNorm and the losses need a batch)"),
    "optim.epochs": integer(1),
    "optim.warmup_epochs": real(0, note=" and at most optim.epochs"),
    "optim.lr_decay_at": tuple_of(real(0, 1, low_open=True), note=" (fractions of training; none: no decay)"),
    "optim.lr_decay_factor": real(0, 1, low_open=True),
    "eval.knn_k": tuple_of(integer(1), least=1),
    "eval.knn_temperature": real(0, low_open=True),
    "eval.knn_euclidean_k": tuple_of(integer(1), note=" (none: off)"),
    "eval.monitor_every": integer(0, note=" (0: off)"),
    "eval.monitor_train_samples": integer(0, note=" (0: all)"),
    "eval.train_samples": integer(0, note=" (0: all)"),
    "eval.linear_probe": BOOL,
    "eval.online_probe": BOOL,
    "eval.probe_epochs": integer(1),
    "eval.probe_min_steps": integer(0, note=" (0: exactly eval.probe_epochs)"),
    "eval.baselines": BOOL,
    "eval.label_fractions": tuple_of(real(0, 1, low_open=True, high_open=True), note=" (fractions of each class's labels; none: off)"),
    "eval.shots": tuple_of(integer(1), note=" (labelled images per class; none: off)"),
    "eval.label_draws": integer(1),
    "eval.finetune_epochs": integer(0, note=" (0: off)"),
    "eval.finetune_min_steps": integer(1),
    "eval.finetune_lr": real(0, low_open=True),
    "eval.transfer": (lambda items: all(_transfer_item(item) for item in items),
                      f"NAME or NAME:DIR items, NAME one of {', '.join(CHOICES['data.dataset'])} (an image folder needs :DIR)"),
    "run.seed": integer(0, 2**63 - 1, note=" (torch.manual_seed takes 64 bits)"),
    "run.device": (_device, "one of: auto, cpu, cuda, cuda:N (N in 0..127), mps"),
    "run.out_dir": (_path, "a directory path without NUL bytes"),
    "run.name": ((lambda v: v == "" or _plain_name(v)),
                 "empty (the default <preset>-<method>[+<regularizers>]-seed<seed>) or a plain directory name: not blank, '.' or '..', without path separators or NUL bytes"),
    "run.channels_last": BOOL,
    "run.compile": BOOL,
    "run.log_every": integer(1),
    "run.checkpoint_every": integer(0, note=" (0: only at the end of each epoch)"),
    "run.tensorboard": BOOL,
    "run.max_skipped_steps": integer(0),
    "distributed.gather": BOOL,
    "distributed.sync_bn": BOOL,
}


def _transfer_item(text: str) -> bool:
    """``NAME`` or ``NAME:DIR`` of a dataset nocollapse reads; an image folder needs its directory."""
    name, _, directory = text.partition(":")
    return name in CHOICES["data.dataset"] and (name != "image-folder" or bool(directory))


def validate(config: Config) -> None:
    """Check every value, in every section (also those the chosen method does not read: a typo there is
    still a mistake); raise UserError ``KEY=VALUE: must be ALLOWED`` at the first one that is off."""
    violation = first_violation(flatten(config.to_dict()), RULES)
    if violation:
        raise UserError(violation)
    try:
        config.augment.validate()
    except ValueError as error:
        raise UserError(str(error)) from None
    o, m = config.optim, config.method
    if o.warmup_epochs > o.epochs:
        raise UserError(f"optim.warmup_epochs={shown(o.warmup_epochs)}: must be at most optim.epochs={o.epochs}")
    kernel = "method.name=sfrik" if m.name == "sfrik" else "regularizers.kernel_uniformity>0" if config.regularizers.kernel_uniformity > 0 else ""
    if kernel and config.model.projection_dim < 2:
        raise UserError(f"model.projection_dim={config.model.projection_dim}: must be at least 2 with {kernel} "
                        "(the kernel uniformity lives on the sphere S^(q-1), q >= 2)")
    if m.name == "wmse":
        try:
            check_whitening_shapes(o.batch_size, config.model.projection_dim, m.wmse.w_size)
        except ValueError as error:
            raise UserError(f"W-MSE settings (optim.batch_size={o.batch_size}, model.projection_dim={config.model.projection_dim}, "
                            f"method.wmse.w_size={m.wmse.w_size}): {error}") from None


def resolve_config(preset: str = "fmnist", overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """The preset's config with ``overrides`` (``["optim.lr=0.5", ...]`` or a dict) applied and validated."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    config = Config(preset=preset)
    for key, value in PRESETS[preset].items():
        set_value(config, key, value)
    items = list(overrides.items()) if isinstance(overrides, dict) else split_overrides(overrides or [])
    for key, value in items:
        set_value(config, key, value)
    validate(config)
    return config


def split_overrides(overrides: list[str]) -> list[tuple[str, str]]:
    """``["optim.lr=0.5"]`` → ``[("optim.lr", "0.5")]``; an item without ``=`` is a UserError."""
    items = []
    for text in overrides:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise UserError(f"override {text!r} is not of the form key=value (e.g. optim.lr=0.5)")
        items.append((key.strip(), value.strip()))
    return items


def field_comments() -> dict[str, str]:
    """``{"optim.lr": "base learning rate for ..."}``, read from the comments beside each field above."""
    import inspect

    comments: dict[str, str] = {}

    def collect(cls: type, prefix: str) -> None:
        for match in re.finditer(r"^\s+(\w+): [^=]+=.*?#\s*(.+)$", inspect.getsource(cls), flags=re.MULTILINE):
            comments[f"{prefix}{match.group(1)}"] = match.group(2).strip()
        for section in dataclasses.fields(cls):
            if dataclasses.is_dataclass(section.default_factory):
                collect(section.default_factory, f"{prefix}{section.name}.")

    collect(Config, "")
    return comments


def describe(config: Config) -> str:
    """Every key with its value and its comment: what ``nocollapse config`` prints."""
    comments = field_comments()
    lines = []
    for key, value in flatten(config.to_dict()).items():
        if key == "preset":
            continue
        shown = ",".join(str(v) for v in value) if isinstance(value, tuple) else value
        lines.append(f"  {key}={shown}" + (f"\n      {comments[key]}" if key in comments else ""))
    return "\n".join(lines)
